"""The S ablation of §4.1/§4.4 (Figure 4): one training run per `sample_len`, scored by the
autocorrelation MSE of its samples against the training data; the lowest mean MSE wins.

Each run lives in `<workdir>/sample_len_<S>` and resumes like any run, so an interrupted sweep picks
up where it stopped. Results go to `<workdir>/sweep.json` and a Markdown table `<workdir>/sweep.md`.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from dg_jax import io_utils, sampling, sharding
from dg_jax.data.loaders import load_dataset
from dg_jax.evaluation import metrics
from dg_jax.train import train_and_evaluate

log = logging.getLogger(__name__)


def parse_sample_lens(text: str) -> list[int]:
  try:
    values = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--sample_lens must be comma-separated integers, got {text!r}") from None
  if not values or min(values) < 1:
    raise ValueError(f"--sample_lens needs at least one value, all >= 1; got {text!r}")
  return sorted(set(values))


def run_sweep(config, workdir: str, sample_lens: list[int], num_samples: int = 0, seed: int = 0) -> dict:
  """Trains one run per S, generates `num_samples` series (0 = as many as the training data) from each,
  and returns {"runs": {S: metrics}, "best_sample_len": S}."""
  real = load_dataset(config.data)
  features = [v.name for v in real.feature_vars if not v.is_categorical]
  if not features:
    raise ValueError("the S sweep scores autocorrelation, which needs at least one continuous feature")
  if max(sample_lens) > real.max_length:
    raise ValueError(f"sample_len {max(sample_lens)} exceeds the series length T={real.max_length}")
  runs = {}
  for s in sample_lens:
    run_dir = io_utils.join(workdir, f"sample_len_{s}")
    run_config = config.copy_and_resolve_references()
    run_config.model.sample_len = s
    log.info("sweep: training S=%d in %s", s, run_dir)
    train_and_evaluate(run_config, run_dir)
    model, params, _ = sampling.load_generator(run_dir)
    synthetic = sampling.generate(model, params, num_samples or real.num_samples, seed)
    scores = {f"autocorrelation_mse/{name}": metrics.autocorrelation_mse(real, synthetic, j)
              for j, name in enumerate(v.name for v in real.feature_vars) if name in features}
    scores["autocorrelation_mse/mean"] = float(np.nanmean(list(scores.values())))
    runs[s] = scores
    log.info("sweep: S=%d  mean autocorrelation MSE %.4g", s, scores["autocorrelation_mse/mean"])
  best = min(runs, key=lambda s: runs[s]["autocorrelation_mse/mean"])
  result = {"runs": {str(s): r for s, r in runs.items()}, "best_sample_len": best}
  if sharding.is_primary():  # every process scored the same samples; one writes the tables
    io_utils.write_text(io_utils.join(workdir, "sweep.json"), json.dumps(result, indent=1))
    io_utils.write_text(io_utils.join(workdir, "sweep.md"), sweep_table(runs, best))
  log.info("sweep: best S=%d; table in %s", best, io_utils.join(workdir, "sweep.md"))
  return result


def sweep_table(runs: dict[int, dict], best: int) -> str:
  keys = list(next(iter(runs.values())))
  lines = ["| S | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for s, r in runs.items():
    mark = " (best)" if s == best else ""
    lines.append(f"| {s}{mark} | " + " | ".join(f"{r[k]:.4g}" for k in keys) + " |")
  return "\n".join(lines) + "\n"
