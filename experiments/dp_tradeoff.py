"""What differential privacy costs (§6.2, Figure 16): fidelity and time at several epsilons.

DoppelGANger trains on MBA's train split for the same number of steps without privacy and with DP-SGD
on the critics, its noise calibrated before training to each target epsilon (delta = 1/(10 n)); each
run generates as many series as the training data, compared with it on the fidelity metrics. The plot
shows the mean autocorrelation of each feature per epsilon (the paper finds DP destroys it). Runs use
privacy.secret_seed=False, so that they are reproducible from --seed.

  python experiments/dp_tradeoff.py                             # epsilons 100, 10, 1 + non-private (~16 min)
  python experiments/dp_tradeoff.py --budget=full                 # the paper's 200k steps per run
  python experiments/dp_tradeoff.py --epsilons=100,1 --steps=20000 --out=/tmp/dp

Writes <out>/dp.json, <out>/dp.md and <out>/dp_autocorrelation.png.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from common import FULL_STEPS, mba_splits, train_and_generate

from dg_jax.data.npz_format import load_npz
from dg_jax.evaluation import metrics
from dg_jax.io_utils import json_safe, write_text

NON_PRIVATE = "non-private"


def last_log_row(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as fh:
    return json.loads(fh.read().strip().splitlines()[-1])


def plot(real, runs: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  features = [j for j, v in enumerate(real.feature_vars) if not v.is_categorical]
  fig, axes = plt.subplots(1, len(features), figsize=(4.5 * len(features), 3.2), squeeze=False)
  for ax, j in zip(axes[0], features):
    acf = metrics.mean_autocorrelation(real, j)
    lags = np.arange(1, len(acf))
    ax.plot(lags, acf[1:], color="black", linewidth=2, label="real")
    for name, run in runs.items():
      ax.plot(lags, metrics.mean_autocorrelation(run["data"], j)[1:], label=name)
    ax.set(title=real.feature_vars[j].name, xlabel="lag", ylabel="mean autocorrelation")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--epsilons", default="100,10,1", help="target epsilons (a non-private run is added)")
  p.add_argument("--budget", choices=("cpu", "full"), default="cpu",
                 help=f"training steps of every run: 4000 (cpu) or the paper's {FULL_STEPS} (full)")
  p.add_argument("--steps", type=int, default=0, help="training steps of every run (overrides --budget)")
  p.add_argument("--l2_clip", type=float, default=1.0)
  p.add_argument("--out", default="/tmp/dg_dp_tradeoff")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--extra", action="append", default=[], help="extra --config overrides for every run")
  args = p.parse_args()
  args.steps = args.steps or (FULL_STEPS if args.budget == "full" else 4000)
  os.makedirs(args.out, exist_ok=True)
  train_path = mba_splits(args.out)["train"]
  real = load_npz(train_path)
  common = [f"--config.data.path={os.path.abspath(train_path)}", f"--config.train.num_steps={args.steps}",
            f"--config.train.seed={args.seed}", *args.extra]
  settings = {NON_PRIVATE: ["--config.privacy.enabled=False"]}
  for eps in args.epsilons.split(","):
    settings[f"epsilon={float(eps):g}"] = ["--config.privacy.enabled=True", f"--config.privacy.target_epsilon={eps}",
                                           "--config.privacy.secret_seed=False",
                                           f"--config.privacy.l2_clip={args.l2_clip}"]
  runs = {}
  for name, overrides in settings.items():
    workdir = os.path.join(args.out, "run_" + name.replace("=", "_"))
    output = os.path.join(args.out, name.replace("=", "_") + ".npz")
    seconds = train_and_generate("configs/default.py", workdir, output, real.num_samples, common + overrides,
                                 seed=args.seed)
    with open(os.path.join(workdir, "config.json")) as fh:
      privacy = json.load(fh)["privacy"]
    row = last_log_row(workdir)
    runs[name] = dict(data=load_npz(output), seconds=seconds, epsilon=row.get("epsilon", float("inf")),
                      noise_multiplier=privacy["noise_multiplier"] if privacy["enabled"] else 0.0,
                      steps_per_s=row["steps_per_s"], steps=row["step"])
    print(f"{name}: {seconds:.0f} s, epsilon {runs[name]['epsilon']:.4g}", flush=True)

  base_rate = runs[NON_PRIVATE]["steps_per_s"]
  keys = None
  rows = []
  for name, run in runs.items():
    scores = metrics.evaluate(real, run["data"])
    keys = keys or [k for k in scores if k.startswith(("autocorrelation_mse/", "jsd/")) or k == "length_w1"]
    rows.append(dict(run=name, epsilon=run["epsilon"], noise_multiplier=run["noise_multiplier"],
                     steps=run["steps"], steps_per_s=run["steps_per_s"],
                     time_cost=base_rate / run["steps_per_s"], **{k: scores[k] for k in keys}))
  head = ["run", "epsilon", "noise_multiplier", "steps", "steps_per_s", "time_cost", *keys]
  table = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  table += ["| " + " | ".join(r[h] if isinstance(r[h], str) else f"{r[h]:.4g}" for h in head) + " |" for r in rows]
  write_text(os.path.join(args.out, "dp.md"), "\n".join(table) + "\n")
  write_text(os.path.join(args.out, "dp.json"), json.dumps(json_safe(dict(steps=args.steps, rows=rows)), indent=1))
  plot(real, runs, os.path.join(args.out, "dp_autocorrelation.png"))
  print("\n".join(table))


if __name__ == "__main__":
  main()
