"""What the four baselines share: the fit/generate/save/load interface, the empirical attribute
distribution, the model-space preparation and the training loop of the neural ones.

A saved baseline is a folder: baseline.json (name, schema, config), arrays.npz (numpy arrays,
loadable without pickles) and, for the neural ones, params.msgpack (Flax parameters).
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from typing import Callable, ClassVar

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dg_jax import io_utils
from dg_jax.data import encoding
from dg_jax.data.batching import BatchIterator
from dg_jax.data.schema import Dataset
from dg_jax.failures import BadInput, Diverged
from dg_jax.settings import TrainConfig, config_section
from dg_jax.train import format_duration, fit_schema_from_config

log = logging.getLogger("dg_jax.baselines")
MODEL_FILE, ARRAYS_FILE, PARAMS_FILE = "baseline.json", "arrays.npz", "params.msgpack"


def hyperparameters(cls, config: ml_collections.ConfigDict, name: str):
  """config.baseline.<name> as the frozen dataclass `cls` (unknown fields are an error)."""
  if "baseline" not in config or name not in config.baseline:
    raise ValueError(f"config.baseline.{name} is missing; build the config with configs/baselines.py")
  return config_section(cls, config.baseline[name])


def prepare(data: Dataset, config: ml_collections.ConfigDict) -> tuple[encoding.Schema, encoding.Encoded]:
  """Fits the schema exactly as DoppelGANger's training does and encodes the data into model space."""
  schema = fit_schema_from_config(data, config)
  return schema, encoding.encode(data, schema)


def meta_rows(enc: encoding.Encoded) -> np.ndarray:
  """[n, A + 2Kc] per-series conditioning: encoded attributes ++ additional (min/max) attributes."""
  return np.concatenate([enc.attributes, enc.additional_attributes], axis=1).astype(np.float32)


def draw_rows(num_rows: int, num_samples: int, seed: int) -> np.ndarray:
  """Indices of `num_samples` training rows drawn uniformly with replacement: the empirical
  (multinomial) distribution of attribute rows (§5.1.2)."""
  return np.random.default_rng(seed).integers(0, num_rows, num_samples)


class Baseline:
  """A fitted baseline: schema, config, numpy arrays and (neural ones) Flax parameters.

  Subclasses set `name`, implement `fit` and `_sample(num_samples, seed) -> (Encoded, attribute
  rows in original units or None)`.
  """
  name: ClassVar[str] = ""

  def __init__(self, schema: encoding.Schema, config: ml_collections.ConfigDict, arrays: dict,
               params=None, history: list | None = None):
    self.schema, self.config, self.arrays, self.params = schema, config, dict(arrays), params
    self.history = list(history or [])  # logged training metrics (neural baselines), not saved

  @classmethod
  def fit(cls, data: Dataset, config: ml_collections.ConfigDict) -> "Baseline":
    raise NotImplementedError

  def _sample(self, num_samples: int, seed: int) -> tuple[encoding.Encoded, np.ndarray | None]:
    raise NotImplementedError

  def generate(self, num_samples: int, seed: int = 0) -> Dataset:
    """`num_samples` series in original units and labels; zeros after each series' end."""
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    enc, rows = self._sample(num_samples, seed)
    data = encoding.decode(enc, self.schema, source=f"{self.name}(seed={seed})")
    if rows is not None:  # drawn training rows, exactly (no scale/unscale round trip)
      data = dataclasses.replace(data, attributes=np.asarray(rows, np.float64))
    return data.validate()

  def save(self, folder: str) -> None:
    """Writes the folder whole; the model description (which `load` looks for) goes last."""
    meta = dict(name=self.name, schema=json.loads(self.schema.to_json()), config=json.loads(self.config.to_json()))
    arrays = io.BytesIO()
    np.savez(arrays, **self.arrays)
    files = {ARRAYS_FILE: arrays.getvalue()}
    if self.params is not None:
      files[PARAMS_FILE] = flax.serialization.msgpack_serialize(jax.device_get(self.params))
    files[MODEL_FILE] = json.dumps(meta, indent=1).encode()
    io_utils.write_folder(folder, files, marker=MODEL_FILE)

  @classmethod
  def load(cls, folder: str) -> "Baseline":
    path = io_utils.join(folder, MODEL_FILE)
    if not io_utils.exists(path) or io_utils.is_incomplete(folder):
      raise BadInput(f"{folder}: not a saved baseline (no {MODEL_FILE}, or its save was interrupted)")
    meta = json.loads(io_utils.read_text(path))
    if meta.get("name") != cls.name:
      raise ValueError(f"{folder} holds a {meta.get('name')!r} baseline, not {cls.name!r}")
    with np.load(io.BytesIO(io_utils.read_bytes(io_utils.join(folder, ARRAYS_FILE))), allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
    params = None
    if io_utils.exists(io_utils.join(folder, PARAMS_FILE)):
      params = flax.serialization.msgpack_restore(io_utils.read_bytes(io_utils.join(folder, PARAMS_FILE)))
    schema = encoding.Schema.from_json(json.dumps(meta["schema"]))
    return cls(schema, ml_collections.ConfigDict(meta["config"]), arrays, params)


def adam(tc: TrainConfig) -> optax.GradientTransformation:
  return optax.adam(tc.learning_rate, b1=tc.beta1, b2=tc.beta2)


def check_finite(name: str, metrics: dict, first_step: int) -> None:
  """metrics: name -> [steps]; a baseline has no rollbacks: a non-finite loss ends its training."""
  for metric, values in sorted(metrics.items()):
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
      raise Diverged(f"{name}: non-finite {metric} at training step {first_step + bad[0] + 1}; nothing was saved "
                     "(try a lower learning rate)")


def train_loop(name: str, step_fn: Callable, state, arrays: list[np.ndarray], tc: TrainConfig,
               key: jax.Array):
  """Runs tc.num_steps of `step_fn(state, batch, key) -> (state, metrics)` (batch: tuple of
  [B, ...] rows of `arrays`; key: fold_in(key, step)), tc.steps_per_dispatch steps fused per
  compiled call. Logs a progress line every tc.log_every steps; stops early when tc.max_minutes
  is spent. Returns (state, history: list of dicts of the logged steps' metrics)."""

  def multi_step(state, batches, key, first_step):
    def body(state, xs):
      batch, i = xs
      return step_fn(state, batch, jax.random.fold_in(key, first_step + i))
    k = len(batches[0])
    return jax.lax.scan(body, state, (batches, jnp.arange(k)))

  multi_step = jax.jit(multi_step)
  batches = BatchIterator(arrays, tc.batch_size, tc.seed)
  step, t_start, window, history = 0, time.time(), (0, time.time()), []
  deadline = t_start + 60 * tc.max_minutes if tc.max_minutes else None
  while step < tc.num_steps:
    k = tc.steps_per_dispatch if tc.num_steps - step >= tc.steps_per_dispatch else 1
    state, metrics = multi_step(state, batches.next(k), key, step)
    metrics = jax.device_get(metrics)
    check_finite(name, metrics, step)
    step += k
    out_of_time = deadline is not None and time.time() > deadline
    if step // tc.log_every > (step - k) // tc.log_every or step == tc.num_steps or out_of_time:
      now = time.time()
      rate = (step - window[0]) / max(now - window[1], 1e-9)
      window = (step, now)
      last = {n: float(v[-1]) for n, v in metrics.items()}
      history.append(dict(step=step, seconds=round(now - t_start, 3), steps_per_s=rate, **last))
      log.info("%s step %d/%d  %.2f steps/s  ETA %s  %s", name, step, tc.num_steps, rate,
               format_duration((tc.num_steps - step) / rate if rate > 0 else float("inf")),
               "  ".join(f"{n}={v:.4g}" for n, v in sorted(last.items())))
    if out_of_time:
      log.info("%s: wall-clock budget of %.1f min spent at step %d", name, tc.max_minutes, step)
      break
  return state, history
