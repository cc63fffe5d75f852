"""train_and_evaluate(config, workdir): the training loop around the pure step.

Resumes from the workdir's latest checkpoint by default; batches are a function of the step, so a
resumed run continues exactly where it stopped. With config.privacy.enabled the critics train with
DP-SGD (dg_jax/privacy.py): batches are sampled independently per step, the epsilon spent so far
is logged, and training stops before the epsilon budget (privacy.target_epsilon) would be exceeded.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time

import jax
import ml_collections
import numpy as np
import logging

from dg_jax import privacy, sharding
from dg_jax.checkpoints import Checkpointer
from dg_jax.data import encoding
from dg_jax.data.batching import BatchIterator
from dg_jax.data.loaders import load_dataset
from dg_jax.io_utils import write_text
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.settings import PrivacyConfig, TrainConfig, model_config, privacy_config, train_config
from dg_jax.train_step import init_state, make_train_step

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


def fit_schema_from_config(dataset, config) -> encoding.Schema:
  dc = config.data
  return encoding.fit_schema(dataset, dc.normalization, dc.auto_normalize,
                             [x.strip() for x in dc.log1p.split(",") if x.strip()])


def batch_dict(features, attributes, additional):
  return dict(features=features, attributes=attributes, additional_attributes=additional)


def _check_resumable(saved: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  for section in ("model", "data"):
    if saved.get(section) != json.loads(config[section].to_json()):
      raise ValueError(f"{workdir} holds a run with a different config.{section}; "
                       "use a new --workdir (or the same config) to resume")


def _resolve_privacy(pc: PrivacyConfig, tc: TrainConfig, saved: dict | None, num_examples: int,
                     workdir: str) -> PrivacyConfig:
  """The run's privacy settings with noise and delta resolved: calibrated now for a fresh run,
  the saved ones for a resumed run (the accountant assumes they never change mid-run)."""
  if saved is None:
    return privacy.resolve(pc, num_examples, tc.batch_size, tc.d_rounds, tc.num_steps) if pc.enabled else pc
  saved_pc = privacy_config(ml_collections.ConfigDict(saved))
  if not (pc.enabled or saved_pc.enabled):
    return pc
  for name in ("batch_size", "d_rounds"):  # the accounting of the steps already taken depends on them
    if saved["train"][name] != getattr(tc, name):
      raise ValueError(f"{workdir} holds a private run with train.{name}={saved['train'][name]}; "
                       "use a new --workdir (or the same setting) to resume")
  return privacy.resume(pc, saved_pc)


def _privacy_budget(pc: PrivacyConfig, tc: TrainConfig, num_examples: int) -> tuple[privacy.Accountant, int]:
  """The run's accountant, and the step to stop at so as not to exceed privacy.target_epsilon."""
  accountant = privacy.accountant(pc, num_examples, tc.batch_size, tc.d_rounds)
  seed = ("a secret seed (privacy.secret_seed; kept in the workdir, never in bundles)" if pc.secret_seed else
          f"train.seed={tc.seed}, which the guarantee assumes secret (privacy.secret_seed=False)")
  log.info("privacy: DP-SGD critics, noise multiplier %.4g, clip %.4g, batches of %d of %d series "
           "sampled without replacement; delta=%.3g; batches and noise from %s", pc.noise_multiplier,
           pc.l2_clip, tc.batch_size, num_examples, pc.delta, seed)
  end = accountant.max_steps(pc.target_epsilon, tc.num_steps) if pc.target_epsilon else tc.num_steps
  if end < tc.num_steps:
    log.warning("privacy budget: epsilon=%.4g after step %d, %.4g after step %d exceeds "
                "privacy.target_epsilon=%.4g; training stops at step %d", accountant.epsilon(end), end,
                accountant.epsilon(end + 1), end + 1, pc.target_epsilon, end)
  return accountant, end


def check_finite(metrics: dict, first_step: int) -> None:
  bad = {name: np.flatnonzero(~np.isfinite(v)) for name, v in metrics.items()}
  bad = {name: idx[0] for name, idx in bad.items() if idx.size}
  if bad:
    name = min(bad, key=lambda n: (bad[n], n))
    raise FloatingPointError(f"non-finite {name} ({metrics[name][bad[name]]}) at training step "
                             f"{first_step + bad[name] + 1}; the last good checkpoint is kept")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last step's metrics."""
  if config.distributed:
    jax.distributed.initialize()
  tc, mc, pc = train_config(config), model_config(config), privacy_config(config)
  mesh = sharding.make_mesh(config.num_devices or None)
  sharding.check_batch_size(tc.batch_size, mesh, mc.pack)
  log.info("training on %s", sharding.describe(mesh))
  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(workdir, tc.keep_checkpoints)

  dataset = load_dataset(config.data)
  resume_step = ckpt.latest_step()
  saved_config = None
  if resume_step is not None:
    saved_config, schema = ckpt.read_metadata(resume_step)  # encode exactly as the run began
    _check_resumable(saved_config, config, workdir)
  else:
    schema = fit_schema_from_config(dataset, config)
  pc = _resolve_privacy(pc, tc, saved_config, dataset.num_samples, workdir)
  end, accountant = tc.num_steps, None
  if pc.enabled:
    config = config.copy_and_resolve_references()  # saved with the resolved noise and delta
    config.privacy.update(dataclasses.asdict(pc))
    if pc.secret_seed:  # known batches and noise void the guarantee; a resumed run keeps its seed
      config.train.seed = saved_config["train"]["seed"] if saved_config else secrets.randbits(31)
      tc = dataclasses.replace(tc, seed=config.train.seed)
    accountant, end = _privacy_budget(pc, tc, dataset.num_samples)
  encoded = encoding.encode(dataset, schema)
  model = DoppelGANger(schema, mc)
  log.info("data: %d series, T=%d, %d features, %d attributes; S=%d (%d LSTM steps)",
           dataset.num_samples, schema.max_length, len(schema.feature_vars), len(schema.attribute_vars),
           model.sample_len, -(-schema.max_length // model.sample_len))

  state, key = init_state(model, tc, tc.seed)
  if resume_step is not None:
    state, key, _, _ = ckpt.restore(jax.eval_shape(lambda: state), resume_step, sharding.replicated(mesh))
    log.info("resumed from step %d", resume_step)
  config_json = config.to_json(indent=1)
  write_text(os.path.join(workdir, CONFIG_FILE), config_json)
  write_text(os.path.join(workdir, "schema.json"), schema.to_json())

  state, key = sharding.replicate((state, key), mesh)
  step_fn = jax.jit(make_train_step(model, tc, mesh, pc), donate_argnums=0)
  start = int(state["step"])
  batches = BatchIterator([encoded.features, encoded.attributes, encoded.additional_attributes],
                          tc.batch_size, tc.seed, start_step=start,
                          sampling="independent" if pc.enabled else "epochs")
  step, t_start, window = start, time.time(), (start, time.time())
  deadline = t_start + 60 * tc.max_minutes if tc.max_minutes else None
  last = {}
  with open(os.path.join(workdir, METRICS_FILE), "a") as log_file:
    while step < end:
      k = tc.steps_per_dispatch if end - step >= tc.steps_per_dispatch else 1
      state, metrics = step_fn(state, sharding.shard_batches(batch_dict(*batches.next(k)), mesh), key)
      metrics = jax.device_get(metrics)
      check_finite(metrics, step)
      step += k
      last = {name: float(v[-1]) for name, v in metrics.items()}
      out_of_time = deadline is not None and time.time() > deadline
      if step // tc.log_every > (step - k) // tc.log_every or step == end or out_of_time:
        now = time.time()
        rate = (step - window[0]) / max(now - window[1], 1e-9)
        if accountant is not None:
          last["epsilon"] = accountant.epsilon(step)
        window = (step, time.time())
        eta = (end - step) / rate if rate > 0 else float("inf")
        log.info("step %d/%d  %.2f steps/s  ETA %s  %s", step, end, rate, format_duration(eta),
                 "  ".join(f"{n}={v:.4g}" for n, v in sorted(last.items())))
        log_file.write(json.dumps(dict(step=step, seconds=round(now - t_start, 3), steps_per_s=rate, **last)) + "\n")
        log_file.flush()
      if step // tc.checkpoint_every > (step - k) // tc.checkpoint_every or step == end or out_of_time:
        spent = None if accountant is None else dict(
            epsilon=accountant.epsilon(step), delta=pc.delta, steps=step, num_examples=dataset.num_samples,
            unit="series", neighbouring="replace-one")
        ckpt.save(step, state, key, config_json, schema, spent)
      if out_of_time:
        log.info("wall-clock budget of %.1f min spent at step %d; checkpointed", tc.max_minutes, step)
        break
  ckpt.wait()
  ckpt.close()
  if accountant is not None:
    last["epsilon"] = accountant.epsilon(step)
    log.info("privacy: the generator is (%.4g, %.3g)-differentially private after %d steps "
             "(series-level, replace-one neighbours)", last["epsilon"], pc.delta, step)
  return dict(last, step=step)


def format_duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"
