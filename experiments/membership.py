"""Membership inference vs training-set size (§6.2, Figure 15).

For each size n, DoppelGANger trains on n series drawn from MBA (train and test splits pooled, 739
series) for the same number of steps; the attacker (LOGAN's white-box attack: the trained critic's
score) then sees those n members and n series the model never saw, and calls the top-scoring half
members. 0.5 is random guessing; the paper finds the rate falls towards 0.5 as n grows.

  python experiments/membership.py                          # sizes 25..300, 2000 steps each (~8 min)
  python experiments/membership.py --sizes=50,200 --steps=20000 --out=/tmp/mi

Writes <out>/membership.json, <out>/membership.md and <out>/membership.png.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
from common import SHARED_DATA, launch

from dg_jax.data.dg_format import MBA_ATTRIBUTE_NAMES, MBA_FEATURE_NAMES, load_dg_folder
from dg_jax.data.npz_format import save_npz
from dg_jax.evaluation.membership import membership_inference
from dg_jax.io_utils import write_text


def mba_pool():
  """Train and test splits together: the same schema (the original files share one), 739 series."""
  parts = [load_dg_folder(os.path.join(SHARED_DATA, "mba"), split, MBA_FEATURE_NAMES, MBA_ATTRIBUTE_NAMES)
           for split in ("train", "test")]
  a, b = parts
  return type(a)(np.concatenate([a.features, b.features]), np.concatenate([a.lengths, b.lengths]),
                 np.concatenate([a.attributes, b.attributes]), a.feature_vars, a.attribute_vars, source="MBA")


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4.5, 3))
  ax.plot([r["size"] for r in rows], [r["success_rate"] for r in rows], "o-")
  ax.axhline(0.5, color="grey", linestyle="--", label="random guess")
  ax.set(xscale="log", xlabel="training-set size", ylabel="attack success rate", ylim=(0.4, 1.02))
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="25,50,100,200,300")
  p.add_argument("--steps", type=int, default=2000, help="training steps per size (same for every size)")
  p.add_argument("--out", default="/tmp/dg_membership")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--extra", action="append", default=[], help="extra --config overrides for every run")
  args = p.parse_args()
  pool = mba_pool()
  sizes = sorted(int(s) for s in args.sizes.split(","))
  if 2 * sizes[-1] > pool.num_samples:
    p.error(f"the largest size needs 2 x {sizes[-1]} series; MBA has {pool.num_samples}")
  order = np.random.default_rng(args.seed).permutation(pool.num_samples)
  rows = []
  for n in sizes:
    members, nonmembers = pool.subset(order[:n]), pool.subset(order[-n:])
    run_dir = os.path.join(args.out, f"size_{n}")
    os.makedirs(run_dir, exist_ok=True)
    data_path = os.path.join(run_dir, "members.npz")
    save_npz(members, data_path)
    batch = min(100, n)  # the batch never exceeds the training set
    launch("--config=configs/default.py", f"--workdir={os.path.join(run_dir, 'run')}",
           f"--config.data.path={data_path}", f"--config.train.num_steps={args.steps}",
           f"--config.train.batch_size={batch}", f"--config.train.seed={args.seed}", *args.extra)
    rate = membership_inference(os.path.join(run_dir, "run"), members, nonmembers)["membership/success_rate"]
    rows.append(dict(size=n, success_rate=rate, epochs=round(args.steps * batch / n, 1)))
    print(f"n={n}: success rate {rate:.3f}", flush=True)
  table = ["| training series | epochs | attack success rate |", "|---|---|---|"]
  table += [f"| {r['size']} | {r['epochs']:g} | {r['success_rate']:.3f} |" for r in rows]
  write_text(os.path.join(args.out, "membership.md"), "\n".join(table) + "\n")
  write_text(os.path.join(args.out, "membership.json"), json.dumps(dict(steps=args.steps, rows=rows), indent=1))
  plot(rows, os.path.join(args.out, "membership.png"))
  print("\n".join(table))


if __name__ == "__main__":
  main()
