"""TimeGAN's post-hoc scores (dg_jax/evaluation/posthoc.py, published settings) of dg_jax runs beside
the real-vs-real reference, which is not 0 for two real sets. MBA: scored against its test split (139
series), the reference is its train split (600); demo: scored against a second draw (data seed 1, 1000
series), the reference is the training draw (seed 0); sines, stocklike, macro (benchmarks/multivariate.py):
the held-out draw against the training draw. Each replica of --workdir (a run trained on that
dataset) generates as many series as the reference has (its best generator when scored).

  python benchmarks/posthoc_scores.py --dataset=mba --workdir=/tmp/abl/mba/paper
  python benchmarks/posthoc_scores.py --dataset=demo --workdir=/tmp/demo_k2

Prints mean ± std over the 5 repeats per set, and the time each took.
"""
import argparse
import os
import tempfile
import time

import multivariate
from common import SHARED_DATA

from dg_jax.data.demo import make_demo
from dg_jax.data.dg_format import MBA_ATTRIBUTE_NAMES, MBA_FEATURE_NAMES, load_dg_folder
from dg_jax.evaluation.posthoc import posthoc_scores
from dg_jax.sampling import generate, load_generator


def datasets(name: str):
  """(held-out real data, the training data)."""
  if name == "mba":
    return [load_dg_folder(os.path.join(SHARED_DATA, "mba"), split, MBA_FEATURE_NAMES, MBA_ATTRIBUTE_NAMES)
            for split in ("test", "train")]
  if name in multivariate.SETS:
    from dg_jax.data.npz_format import load_npz
    train, held_out = multivariate.write(name, os.path.join(tempfile.gettempdir(), "dg_multivariate"))
    return load_npz(held_out), load_npz(train)
  return make_demo(seed=1), make_demo(seed=0)


def report(label: str, real, synthetic) -> None:
  start = time.time()
  s = posthoc_scores(real, synthetic)
  print(f"{label}: discriminative {s['discriminative_score']:.3f} ± {s['discriminative_score_std']:.3f}  "
        f"predictive {s['predictive_score']:.4f} ± {s['predictive_score_std']:.4f}  ({time.time() - start:.0f} s)",
        flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--dataset", choices=["mba", "demo", *multivariate.SETS], required=True)
  p.add_argument("--workdir", help="a run trained on --dataset; every replica is scored")
  args = p.parse_args()
  real, train = datasets(args.dataset)
  report(f"{args.dataset} real vs real", real, train)
  if args.workdir:
    _, _, config = load_generator(args.workdir)
    for k in range(config.train.num_seeds):
      model, params, _ = load_generator(args.workdir, seed_index=k)
      report(f"{args.dataset} dg_jax replica {k}", real, generate(model, params, train.num_samples, seed=0))


if __name__ == "__main__":
  main()
