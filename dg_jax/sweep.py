"""The S ablation of §4.1/§4.4 (Figure 4), with error bars: one training program per `sample_len`, each
training train.num_seeds = K seeds at once; every seed's generator (its best-scored one when
train.eval_every scores the run, else its latest) generates a sample that the §5 metrics score against
held-out data (`real_test`: an npz file, or `split:test` for the training folder's test split) or,
without it, against the training data (the tables then say so). The S with the lowest mean
autocorrelation MSE (averaged over features, then seeds) wins.

Each run lives in `<workdir>/sample_len_<S>` and resumes like any run; each run's per-seed scores are
kept in its folder (SCORES_FILE) once computed, so an interrupted sweep picks up where it stopped.
Results: `<workdir>/sweep.json`, `sweep.md` (mean ± std over seeds per metric) and `sweep.png`
(metric against S with ± std error bars).
"""
from __future__ import annotations

import json
import logging

import numpy as np

from dg_jax import io_utils, sampling, sharding, workdir_lock
from dg_jax.data.loaders import load_dataset
from dg_jax.data.schema import DataError
from dg_jax.evaluation import metrics
from dg_jax.settings import train_config
from dg_jax.train import train_and_evaluate

log = logging.getLogger(__name__)
SCORES_FILE = "sweep_scores.json"
CRITERION = "autocorrelation_mse/mean"
PLOTTED = ("autocorrelation_mse/mean", "jsd/mean", "length_w1")


def parse_sample_lens(text: str) -> list[int]:
  try:
    values = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--sample_lens must be comma-separated integers, got {text!r}") from None
  if not values or min(values) < 1:
    raise ValueError(f"--sample_lens needs at least one value, all >= 1; got {text!r}")
  return sorted(set(values))


def _score(real, synthetic) -> dict:
  """metrics.evaluate plus the mean of each unit-free metric family (autocorrelation_mse/mean over
  features, jsd/mean over categorical attributes)."""
  scores = metrics.evaluate(real, synthetic)
  for family in ("autocorrelation_mse", "jsd"):
    values = [v for k, v in scores.items() if k.startswith(family + "/")]
    if values:
      scores[f"{family}/mean"] = float(np.mean(values))
  return scores


def run_sweep(config, workdir: str, sample_lens: list[int], num_samples: int = 0, seed: int = 0,
              real_test: str | None = None) -> dict:
  """Trains K seeds per S, generates `num_samples` series (0 = as many as the scoring data) from each
  seed and scores them; returns what sweep.json holds. The sweep holds `workdir`'s lock (each run
  holds its own folder's)."""
  lock = workdir_lock.acquire(workdir) if sharding.is_primary() else None
  try:
    sharding.wait_for_primary()
    return _run_sweep(config, workdir, sample_lens, num_samples, seed, real_test)
  finally:
    if lock is not None:
      lock.release()


def _run_sweep(config, workdir: str, sample_lens: list[int], num_samples: int, seed: int,
               real_test: str | None) -> dict:
  train = load_dataset(config.data)
  if train.max_length < 2 or all(v.is_categorical for v in train.feature_vars):
    raise DataError(f"{train.source}: the S sweep ranks S by the autocorrelation of continuous features, which "
                    f"needs one and series of 2 or more records (T={train.max_length})")
  if max(sample_lens) > train.max_length:
    raise DataError(f"{train.source}: sample_len {max(sample_lens)} exceeds the series length T={train.max_length}")
  if real_test:
    real, against = load_real_test(config, real_test), real_test
    metrics.check_same_schema(train, real)
  else:
    real, against = train, "the training data (no --real_test: these scores cannot show overfitting)"
  k = train_config(config).num_seeds
  key = dict(scored_against=real_test or "training data", num_samples=num_samples, seed=seed)
  runs = {}
  for s in sample_lens:
    run_dir = io_utils.join(workdir, f"sample_len_{s}")
    cache = io_utils.join(run_dir, SCORES_FILE)
    cached = json.loads(io_utils.read_text(cache)) if io_utils.exists(cache) else None
    if cached and cached["key"] == key:
      log.info("sweep: S=%d already trained and scored (%s)", s, cache)
      runs[s] = cached["seeds"]
      continue
    run_config = config.copy_and_resolve_references()
    run_config.model.sample_len = s
    log.info("sweep: training S=%d (%d seed%s) in %s", s, k, "s" if k > 1 else "", run_dir)
    train_and_evaluate(run_config, run_dir)
    runs[s] = []
    for r in range(k):
      model, params, config_used = sampling.load_generator(run_dir, seed_index=r)
      synthetic = sampling.generate(model, params, num_samples or real.num_samples, seed)
      runs[s].append(dict(_score(real, synthetic), **{"generated_from/step": config_used.generated_from.step}))
    if sharding.is_primary():
      io_utils.write_text(cache, json.dumps(dict(key=key, seeds=runs[s]), indent=1))
    log.info("sweep: S=%d  mean autocorrelation MSE %s", s, _mean_std([r[CRITERION] for r in runs[s]]))
  summary = {s: summarise(seeds) for s, seeds in runs.items()}
  best = min(summary, key=lambda s: summary[s]["mean"][CRITERION])
  result = dict(scored_against=against, num_seeds=k, best_sample_len=best,
                runs={str(s): dict(summary[s], seeds=runs[s]) for s in runs})
  if sharding.is_primary():  # every process scored the same samples; one writes the tables
    io_utils.write_text(io_utils.join(workdir, "sweep.json"), json.dumps(result, indent=1))
    io_utils.write_text(io_utils.join(workdir, "sweep.md"), sweep_table(summary, best, against, k))
    from dg_jax.evaluation import plots
    plots.sweep(summary, PLOTTED, workdir, f"{k} seed(s) per S, scored against {real_test or 'the training data'}")
  log.info("sweep: best S=%d; tables in %s", best, io_utils.join(workdir, "sweep.md"))
  return result


def load_real_test(config, real_test: str):
  """An npz file in the project's format, or `split:NAME`: the training data's other split (a
  DoppelGANger folder's data_<NAME>.npz, e.g. split:test)."""
  if real_test.startswith("split:"):
    data_config = config.data.copy_and_resolve_references()
    data_config.split = real_test[len("split:"):]
    return load_dataset(data_config)
  from dg_jax.data.npz_format import load_npz
  return load_npz(real_test)


def summarise(seeds: list[dict]) -> dict:
  """Per-seed score dicts -> {"mean": {...}, "std": {...}} over the seeds that define each metric
  (std 0 for one seed)."""
  names = sorted(set().union(*seeds))
  values = {n: [s[n] for s in seeds if n in s] for n in names}
  return dict(mean={n: float(np.mean(v)) for n, v in values.items()},
              std={n: float(np.std(v)) for n, v in values.items()})


def _mean_std(values) -> str:
  return f"{np.mean(values):.4g} ± {np.std(values):.2g}" if len(values) > 1 else f"{values[0]:.4g}"


def sweep_table(summary: dict[int, dict], best: int, against: str, num_seeds: int) -> str:
  names = sorted({n for r in summary.values() for n in r["mean"] if not n.startswith("generated_from/")})
  lines = [f"S sweep: mean ± std over {num_seeds} seed(s) per S, scored against {against}; lower is better.", "",
           "| S | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for s, r in summary.items():
    mark = " (best)" if s == best else ""
    cells = [f"{r['mean'][n]:.4g} ± {r['std'][n]:.2g}" if n in r["mean"] else "" for n in names]
    lines.append(f"| {s}{mark} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
