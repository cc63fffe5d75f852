"""DoppelGANger vs the paper's four baselines (§5, Table 2/3, Figures 1, 6-10, 13, 21-24) on one dataset.

Every model trains on the real training split A through launch.py (the same commands a user runs), then
generates as many series as A holds (B). The report compares each B with A on every fidelity metric
(autocorrelation, attribute JSD, length / min-max / Pearson W1, per-category totals), the memorisation
check against the held-out split A', and downstream tasks (train on B, test on A'; predict a categorical
attribute from the series, forecast the last tenth of the first continuous feature).

  python experiments/compare_baselines.py                       # MBA, CPU budget (~15 min on 2 cores)
  python experiments/compare_baselines.py --budget=full         # the paper's 200k steps per neural model
  python experiments/compare_baselines.py --wwt=train_1.csv --wwt_pages=20000 --out=/tmp/wwt_cmp  # Kaggle WWT
  python experiments/compare_baselines.py --train=A.npz --test=A_prime.npz --out=/tmp/cmp          # any data

Writes <out>/report/{metrics.json,report.md,report.html,*.png} and <out>/summary.json (wall-clock per model;
runs already in <out> are reused, and then count only the seconds this invocation spent on them).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from common import FULL_STEPS, mba_splits, train_and_generate

from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.data.wwt import load_wwt
from dg_jax.evaluation import downstream, memorisation
from dg_jax.evaluation.report import write_report

MODELS = ("doppelganger", "ar", "rnn", "hmm", "naive_gan")
# Steps per neural model; the HMM fits by EM (its own n_iter). "full" is the paper's 200k batches.
BUDGETS = dict(cpu=3000, full=FULL_STEPS)


def wwt_halves(csv_path: str, num_pages: int | None, directory: str, seed: int) -> dict[str, str]:
  """The paper's protocol (Figure 12): the real data split into two equal halves A and A'."""
  data = load_wwt(csv_path, num_pages, seed=seed)
  order = np.random.default_rng(seed).permutation(data.num_samples)
  half = data.num_samples // 2
  paths = dict(train=os.path.join(directory, "wwt_train.npz"), test=os.path.join(directory, "wwt_test.npz"))
  save_npz(data.subset(order[:half]), paths["train"])
  save_npz(data.subset(order[half:2 * half]), paths["test"])
  return paths


def config_of(model: str) -> str:
  return "configs/default.py" if model == "doppelganger" else f"configs/baselines.py:{model}"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--train", help="real training split (npz); default MBA's train split")
  p.add_argument("--test", help="real held-out split (npz); default MBA's test split")
  p.add_argument("--wwt", help="Kaggle WWT train_1.csv: split in two halves (train A, held-out A')")
  p.add_argument("--wwt_pages", type=int, default=20000, help="pages sampled from --wwt (0 = all)")
  p.add_argument("--out", default="/tmp/dg_compare_mba")
  p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
  p.add_argument("--steps", type=int, default=0, help="training steps per neural model (overrides --budget)")
  p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
  p.add_argument("--predict", help="categorical attribute the downstream classifiers predict, and within whose "
                 "categories series totals are compared (default: the one with the fewest categories)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  if bool(args.train) != bool(args.test):
    p.error("give both --train and --test, or neither (MBA)")
  if args.wwt:
    paths = wwt_halves(args.wwt, args.wwt_pages or None, args.out, args.seed)
  else:
    paths = dict(train=args.train, test=args.test) if args.train else mba_splits(args.out)
  real, held_out = load_npz(paths["train"]), load_npz(paths["test"])
  steps = args.steps or BUDGETS[args.budget]

  sets, summary = {}, {}
  for model in args.models.split(","):
    if model not in MODELS:
      p.error(f"unknown model {model!r}; choose from {MODELS}")
    output = os.path.join(args.out, f"{model}.npz")
    seconds = train_and_generate(
        config_of(model), os.path.join(args.out, f"run_{model}"), output, real.num_samples,
        [f"--config.data.path={os.path.abspath(paths['train'])}", f"--config.train.num_steps={steps}",
         f"--config.train.seed={args.seed}"], seed=args.seed)
    summary[model] = dict(train_seconds=round(seconds, 1), steps=steps if model != "hmm" else None)
    print(f"{model}: trained in {seconds:.0f} s", flush=True)
    sets[model] = load_npz(output)

  start = time.time()
  categorical = sorted((len(v.categories), v.name) for v in real.attribute_vars if v.is_categorical)
  predict = args.predict or (categorical[0][1] if categorical else None)
  continuous = [v.name for v in real.feature_vars if not v.is_categorical]
  horizon = max(1, real.max_length // 10)
  extra = {}
  for name, synthetic in sets.items():
    extra[name] = memorisation.memorisation_summary(real, synthetic, held_out)
    extra[name].update(downstream.downstream_scores(
        real, held_out, synthetic, attribute=predict,
        feature=continuous[0] if continuous else None, horizon=horizon, seed=args.seed))
  scores = write_report(real, sets, os.path.join(args.out, "report"), train=real, extra_metrics=extra,
                        title=f"DoppelGANger vs baselines ({steps} steps per neural model)",
                        higher_is_better=("downstream/",), total_by=predict,
                        unranked=("memorisation/", "downstream/accuracy_real/", "downstream/r2_real/",
                                  "downstream/accuracy_synthetic/", "downstream/r2_synthetic/"))
  summary["evaluation_seconds"] = round(time.time() - start, 1)
  with open(os.path.join(args.out, "summary.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
  with open(os.path.join(args.out, "report", "report.md")) as fh:
    print("\n".join(line for line in fh.read().splitlines() if line.startswith("|")))  # the metric table
  print(json.dumps(summary))
  return scores


if __name__ == "__main__":
  main()
