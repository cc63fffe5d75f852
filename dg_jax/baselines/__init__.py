"""The paper's four general baselines (§5.1.2, Appendix B) behind DoppelGANger's interface:
`Baseline.fit(data, config)`, `.generate(num_samples, seed)`, `.save(folder)`, `.load(folder)`.

A baseline run's workdir holds config.json, metrics.jsonl (neural ones) and the fitted model in
baseline/ (see common.py). Configs: configs/baselines.py.
"""
from __future__ import annotations

import json

import ml_collections

from dg_jax import io_utils, workdir_lock
from dg_jax.baselines.ar import ARBaseline
from dg_jax.baselines.common import MODEL_FILE, Baseline, log
from dg_jax.baselines.hmm import HMMBaseline
from dg_jax.baselines.naive_gan import NaiveGANBaseline
from dg_jax.baselines.rnn import RNNBaseline
from dg_jax.data.loaders import load_dataset
from dg_jax.failures import BadInput
from dg_jax.train import CONFIG_FILE, METRICS_FILE

BASELINES = {"hmm": HMMBaseline, "ar": ARBaseline, "rnn": RNNBaseline, "naive_gan": NaiveGANBaseline}
MODEL_DIR = "baseline"  # the fitted model's folder inside a run's workdir
RUN_SECTIONS = ("data", "baseline", "train")  # the config sections that define a baseline run


def is_baseline_run(workdir: str) -> bool:
  """Whether `workdir` holds a trained baseline (or is a saved baseline folder)."""
  return io_utils.exists(io_utils.join(_model_folder(workdir), MODEL_FILE))


def _model_folder(path: str) -> str:
  return path if io_utils.exists(io_utils.join(path, MODEL_FILE)) else io_utils.join(path, MODEL_DIR)


def load_baseline(path: str) -> Baseline:
  """The baseline in a run's workdir, or in a folder written by `Baseline.save`."""
  folder = _model_folder(path)
  if not is_baseline_run(path):
    raise BadInput(f"{path}: no trained baseline here (train one with configs/baselines.py)")
  name = json.loads(io_utils.read_text(io_utils.join(folder, MODEL_FILE))).get("name")
  if name not in BASELINES:
    raise BadInput(f"{folder}: unknown baseline {name!r}; expected one of {sorted(BASELINES)}")
  return BASELINES[name].load(folder)


def train_baseline(config: ml_collections.ConfigDict, workdir: str) -> Baseline:
  """Fits config.baseline.name on config.data and saves it into `workdir`. Baselines train in one
  go (no checkpoints); a workdir that already holds the same finished run is returned as is."""
  if "baseline" not in config:
    raise BadInput("the config has no baseline section; use configs/baselines.py:<name>")
  name = config.baseline.name
  if name not in BASELINES:
    raise BadInput(f"config.baseline.name={name!r}; expected one of {sorted(BASELINES)}")
  lock = workdir_lock.acquire(workdir)  # one trainer per workdir, baselines included
  try:
    return _train_baseline(config, workdir, name)
  finally:
    lock.release()


def _train_baseline(config: ml_collections.ConfigDict, workdir: str, name: str) -> Baseline:
  config_json = config.to_json(indent=1)
  if is_baseline_run(workdir):
    model = load_baseline(workdir)
    saved, given = json.loads(model.config.to_json()), json.loads(config_json)
    if any(saved.get(k) != given.get(k) for k in RUN_SECTIONS):
      raise BadInput(f"{workdir} holds a different baseline run; use a new --workdir")
    log.info("%s: %s is already trained", workdir, name)
    return model
  if io_utils.exists(io_utils.join(workdir, CONFIG_FILE)):
    raise BadInput(f"{workdir} holds another (non-baseline) run; use a new --workdir")
  data = load_dataset(config.data)
  log.info("%s on %d series, T=%d, %d features, %d attributes", name, data.num_samples, data.max_length,
           len(data.feature_vars), len(data.attribute_vars))
  model = BASELINES[name].fit(data, config)
  if model.history:
    io_utils.write_text(io_utils.join(workdir, METRICS_FILE), "".join(json.dumps(row) + "\n" for row in model.history))
  model.save(io_utils.join(workdir, MODEL_DIR))  # its presence marks a finished run
  io_utils.write_text(io_utils.join(workdir, CONFIG_FILE), config_json)
  log.info("saved the %s baseline to %s", name, io_utils.join(workdir, MODEL_DIR))
  return model
