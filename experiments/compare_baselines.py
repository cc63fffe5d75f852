"""DoppelGANger vs the paper's four baselines (§5, Table 2/3, Figures 1, 6-10, 13, 21-24) on one dataset.

Every model trains on the real training split A through launch.py (the same commands a user runs), then
generates as many series as A holds (B). The report compares each B with A on every fidelity metric
(autocorrelation, attribute JSD, length / min-max / Pearson W1, per-category totals), the memorisation
check against the held-out split A', and downstream tasks (train on B, test on A'; predict the first
categorical attribute from the series, forecast the last records of the first continuous feature).

  python experiments/compare_baselines.py                       # MBA, CPU budget (~15 min on 2 cores)
  python experiments/compare_baselines.py --budget=full         # the paper's 200k steps per neural model
  python experiments/compare_baselines.py --train=wwt_train.npz --test=wwt_test.npz --out=/tmp/wwt_cmp

Writes <out>/report/{metrics.json,report.md,report.html,*.png} and <out>/summary.json (wall-clock per model).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from common import mba_splits, train_and_generate

from dg_jax.data.npz_format import load_npz
from dg_jax.evaluation import downstream, memorisation
from dg_jax.evaluation.report import write_report

MODELS = ("doppelganger", "ar", "rnn", "hmm", "naive_gan")
# Steps per neural model; the HMM fits by EM (its own n_iter). "full" is the paper's 200k batches.
BUDGETS = dict(cpu=3000, full=200_000)


def config_of(model: str) -> str:
  return "configs/default.py" if model == "doppelganger" else f"configs/baselines.py:{model}"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--train", help="real training split (npz); default MBA's train split")
  p.add_argument("--test", help="real held-out split (npz); default MBA's test split")
  p.add_argument("--out", default="/tmp/dg_compare_mba")
  p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
  p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  if bool(args.train) != bool(args.test):
    p.error("give both --train and --test, or neither (MBA)")
  paths = dict(train=args.train, test=args.test) if args.train else mba_splits(args.out)
  real, held_out = load_npz(paths["train"]), load_npz(paths["test"])
  steps = BUDGETS[args.budget]

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
  categorical = [v.name for v in real.attribute_vars if v.is_categorical]
  continuous = [v.name for v in real.feature_vars if not v.is_categorical]
  horizon = max(1, real.max_length // 10)
  extra = {}
  for name, synthetic in sets.items():
    extra[name] = memorisation.memorisation_summary(real, synthetic, held_out)
    extra[name].update(downstream.downstream_scores(
        real, held_out, synthetic, attribute=categorical[0] if categorical else None,
        feature=continuous[0] if continuous else None, horizon=horizon, seed=args.seed))
  scores = write_report(real, sets, os.path.join(args.out, "report"), train=real, extra_metrics=extra,
                        title=f"DoppelGANger vs baselines ({args.budget} budget)",
                        higher_is_better=("downstream/",), unranked=("memorisation/",))
  summary["evaluation_seconds"] = round(time.time() - start, 1)
  with open(os.path.join(args.out, "summary.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
  print(open(os.path.join(args.out, "report", "report.md")).read().split("\n\n## ")[0])
  print(json.dumps(summary))
  return scores


if __name__ == "__main__":
  main()
