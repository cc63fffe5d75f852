"""MBA fidelity after the same wall-clock training time: dg_jax (configs/mba.py, defaults) vs gretel's DGAN.

Both train on the MBA train split (600 series x 56 steps) for --minutes on this machine, one after the
other, then generate 600 series; the table compares each with the real data (Table 2 / Table 3 metrics):
mean-autocorrelation MSE per feature, JSD of each attribute's histogram, and W1 of the per-series total
traffic within each technology.

  python benchmarks/fidelity_mba.py --minutes 20 --workdir /tmp/fidelity_mba
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time

from common import SHARED_DATA, launch
from gretel_env import run_in_gretel

from dg_jax.data.dg_format import MBA_ATTRIBUTE_NAMES, MBA_FEATURE_NAMES, load_dg_folder
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.evaluation import metrics
from dg_jax.settings import resolve_sample_len


def fidelity(real, synthetic) -> dict:
  out = {}
  for j, var in enumerate(real.feature_vars):
    out[f"autocorrelation_mse/{var.name}"] = metrics.autocorrelation_mse(real, synthetic, j)
  for j, var in enumerate(real.attribute_vars):
    out[f"jsd/{var.name}"] = metrics.attribute_jsd(real, synthetic, j)
  tech = MBA_ATTRIBUTE_NAMES.index("technology")
  for label, w1 in metrics.total_w1_by_category(real, synthetic, 0, tech).items():
    out[f"total_traffic_w1/technology={label}"] = w1
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--minutes", type=float, default=20.0)
  p.add_argument("--workdir", default="/tmp/fidelity_mba")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--skip", choices=("dg_jax", "gretel"), default=None, help="reuse that side's earlier output")
  args = p.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  real = load_dg_folder(os.path.join(SHARED_DATA, "mba"), "train", MBA_FEATURE_NAMES, MBA_ATTRIBUTE_NAMES)
  real_path = os.path.join(args.workdir, "mba_train.npz")
  save_npz(real, real_path)
  ours_out, gretel_out = (os.path.join(args.workdir, f) for f in ("dg_jax.npz", "gretel.npz"))
  runs = {}

  if args.skip != "dg_jax":
    run_dir = os.path.join(args.workdir, "dg_jax_run")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: a resumed one gets only what is left of its budget
    start = time.time()
    log = launch("--config=configs/mba.py", f"--workdir={run_dir}", f"--config.train.max_minutes={args.minutes}",
                 f"--config.train.seed={args.seed}")
    steps = re.findall(r"step (\d+)/", log)
    launch("--mode=generate", f"--workdir={run_dir}", f"--num_samples={real.num_samples}", f"--output={ours_out}",
           f"--seed={args.seed}")
    runs["dg_jax"] = dict(steps=int(steps[-1]) if steps else None, seconds=round(time.time() - start, 1))

  if args.skip != "gretel":
    s = resolve_sample_len(0, real.max_length)  # the same automatic S as dg_jax's default (56 -> 1)
    result = run_in_gretel(["--input", real_path, "--mode", "train", "--minutes", str(args.minutes),
                            "--sample-len", str(s), "--output", gretel_out, "--seed", str(args.seed),
                            "--num-generate", str(real.num_samples)])
    runs["gretel"] = dict(steps=result.get("steps_done"), seconds=result.get("seconds"))

  table = {name: fidelity(real, load_npz(path)) for name, path in (("dg_jax", ours_out), ("gretel", gretel_out))
           if os.path.exists(path)}
  keys = list(next(iter(table.values())))
  print(f"\nMBA train split, {args.minutes:g} min of training each on this machine; lower is better")
  print(f"{'metric':<42}" + "".join(f"{n:>14}" for n in table))
  for k in keys:
    print(f"{k:<42}" + "".join(f"{table[n][k]:>14.4g}" for n in table))
  print("runs:", json.dumps(runs))
  with open(os.path.join(args.workdir, "fidelity.json"), "w") as fh:
    json.dump(dict(minutes=args.minutes, runs=runs, metrics=table), fh, indent=1)


if __name__ == "__main__":
  main()
