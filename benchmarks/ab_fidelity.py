"""A/B fidelity of two versions of the code (e.g. a git worktree of main and this checkout), or of two
settings of one checkout, on MBA and the demo data, over several training seeds, each scored with
`launch.py --mode=evaluate` against held-out data: MBA's test split, and a second demo draw (data seed 1).
Every run trains the default config for the same number of steps (so other load on the machine changes
the time, not the result), or with --minutes for the same wall-clock time (then run nothing else).
Each run generates with launch.py's defaults (a scored run: its best replica's best generator).
--datasets also takes demo_npz (the demo data as an npz file without its log1p flag) and wwt_like
(benchmarks/train_speed.py's WWT-shaped set), both through the generic npz input, held out: another draw,
and sines, stocklike, macro and msft (benchmarks/multivariate.py: TimeGAN-shaped, no metadata).

  git worktree add /tmp/dg_before main
  python benchmarks/ab_fidelity.py --code before=/tmp/dg_before --code after=. --steps 5000 --out /tmp/ab
  # equal wall time: one seed vs four seeds trained together, scored, the best one chosen
  python benchmarks/ab_fidelity.py --code one=. --code k4=. --minutes 5 --seeds 0,4 --out /tmp/k4 \
      --flags k4="--config.train.num_seeds=4 --config.train.eval_every=500"

Prints, per dataset and metric, the value of each seed and the mean per version; writes ab.json and
ab.md into --out. Runs already finished in --out are reused, so an interrupted comparison resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys

import numpy as np

import multivariate
from common import ROOT, SHARED_DATA

from dg_jax.data.demo import make_demo
from dg_jax.data.dg_format import MBA_ATTRIBUTE_NAMES, MBA_FEATURE_NAMES, load_dg_folder
from dg_jax.data.npz_format import load_npz, save_npz

DATASETS = {  # name -> (config flags, number of series to generate); {out}: the --out folder
    "mba": (["--config=configs/mba.py", f"--config.data.path={os.path.join(SHARED_DATA, 'mba')}"], 600),
    "demo": (["--config=configs/default.py"], 1000),
    # generic npz input, no log1p flags (as a user's own file arrives): the demo data, and a WWT-like set
    "demo_npz": (["--config=configs/default.py", "--config.data.path={out}/demo_npz_train.npz"], 1000),
    "wwt_like": (["--config=configs/default.py", "--config.data.path={out}/wwt_like_train.npz"], 1000),
    # TimeGAN-shaped multivariate sets, no metadata (benchmarks/multivariate.py); as many generated series
    # as the held-out set holds (0), as TimeGAN scores: its discriminative score is then least noisy
    **{name: (["--config=configs/default.py", f"--config.data.path={{out}}/{name}_train.npz"], 0)
       for name in multivariate.SETS},
}


def _without_log_flags(data):
  import dataclasses
  plain = lambda vs: tuple(dataclasses.replace(v, log1p=False) for v in vs)  # noqa: E731
  return dataclasses.replace(data, feature_vars=plain(data.feature_vars), attribute_vars=plain(data.attribute_vars))


def _write(name: str, seed: int, path: str) -> None:
  """The npz-input datasets: training draw (seed 0) and held-out draw (seed 1)."""
  if name == "wwt_like":
    from train_speed import make_wwt
    make_wwt(path, seed)
  else:
    save_npz(_without_log_flags(make_demo(seed=seed)), path)


def held_out(name: str, out: str) -> str:
  if name in multivariate.SETS:
    return multivariate.write(name, out)[1]
  path = os.path.join(out, f"{name}_held_out.npz")
  if not os.path.exists(path):
    if name == "mba":
      save_npz(load_dg_folder(os.path.join(SHARED_DATA, "mba"), "test", MBA_FEATURE_NAMES, MBA_ATTRIBUTE_NAMES), path)
    elif name == "demo":
      save_npz(make_demo(seed=1), path)
    else:
      _write(name, 1, path)
  train = os.path.join(out, f"{name}_train.npz")
  if name in ("demo_npz", "wwt_like") and not os.path.exists(train):
    _write(name, 0, train)
  return path


def launch(code: str, *args: str) -> None:
  env = dict(os.environ, PYTHONPATH=os.path.abspath(code))
  r = subprocess.run([sys.executable, "launch.py", *args], cwd=os.path.abspath(code), env=env,
                     capture_output=True, text=True)
  if r.returncode:
    raise RuntimeError(f"{code}: launch.py {' '.join(args)} failed:\n{r.stderr[-3000:]}")


def run(version: str, code: str, dataset: str, seed: int, budget: list[str], extra: list[str], out: str,
        posthoc: str = "full") -> dict:
  folder = os.path.join(out, version, f"{dataset}_seed{seed}")
  metrics_file = os.path.join(folder, "report", "metrics.json")
  if not os.path.exists(metrics_file):
    flags, num_samples = DATASETS[dataset]
    real = held_out(dataset, out)  # writes the npz inputs too
    flags = [f.format(out=os.path.abspath(out)) for f in flags]
    num_samples = num_samples or len(load_npz(real).lengths)
    launch(code, *flags, f"--workdir={folder}/run", *budget, f"--config.train.seed={seed}", *extra)
    launch(code, "--mode=generate", f"--workdir={folder}/run", f"--num_samples={num_samples}", "--seed=0",
           f"--output={folder}/synthetic.npz")
    launch(ROOT, "--mode=evaluate", f"--real={real}", f"--synthetic={folder}/synthetic.npz",
           f"--out={folder}/report", f"--posthoc_scores={posthoc}")  # one scorer for every version
  with open(metrics_file) as fh:
    return json.load(fh)


def table(results: dict, versions: list[str], seeds: list[int]) -> str:
  lines = []
  for dataset, by_version in results.items():
    keys = sorted(set.intersection(*(set(r) for v in by_version.values() for r in v.values())))
    head = [f"{v} seed {s}" for v in versions for s in seeds] + [f"{v} mean" for v in versions]
    lines += [f"\n### {dataset}\n", "| metric | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in keys:
      cells = [f"{by_version[v][s][k]:.4g}" for v in versions for s in seeds]
      means = [np.mean([by_version[v][s][k] for s in seeds]) for v in versions]
      best = min(means)
      cells += [f"**{m:.4g}**" if m == best and len(versions) > 1 else f"{m:.4g}" for m in means]
      lines.append(f"| {k} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--code", action="append", required=True, help="NAME=DIR: a checkout to run (repeat)")
  p.add_argument("--datasets", default="mba,demo")
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--steps", type=int, default=5000)
  p.add_argument("--minutes", type=float, default=0, help="train each run this long instead of --steps")
  p.add_argument("--flags", action="append", default=[], help='NAME="FLAGS": extra launch.py flags of a version')
  p.add_argument("--out", default="/tmp/dg_ab")
  p.add_argument("--posthoc_scores", default="full", help="TimeGAN's scores in each evaluation: full | quick | off")
  args = p.parse_args()
  codes = dict(c.split("=", 1) for c in args.code)
  extra = {name: shlex.split(f) for name, f in (x.split("=", 1) for x in args.flags)}
  budget = ([f"--config.train.max_minutes={args.minutes}", "--config.train.num_steps=100000000"] if args.minutes
            else [f"--config.train.num_steps={args.steps}"])
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.out, exist_ok=True)
  results = {}
  for dataset in args.datasets.split(","):
    results[dataset] = {v: {} for v in codes}
    for seed in seeds:
      for version, code in codes.items():  # alternate the versions
        print(f"{dataset} seed {seed}: {version}", flush=True)
        results[dataset][version][seed] = run(version, code, dataset, seed, budget, extra.get(version, []), args.out,
                                              args.posthoc_scores)
  text = table(results, list(codes), seeds)
  print(text)
  with open(os.path.join(args.out, "ab.json"), "w") as fh:
    json.dump(results, fh, indent=1)
  with open(os.path.join(args.out, "ab.md"), "w") as fh:
    fh.write(text)


if __name__ == "__main__":
  main()
