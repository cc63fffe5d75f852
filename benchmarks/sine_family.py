"""What TimeGAN's discriminative score sees on the sines set (issue 21): every series of
benchmarks/multivariate.py's sines is (sin(f t + p) + 1) / 2 with f, p ~ U(0, 0.1), so each generated
series can be fitted back to its nearest member of that family (a 0.001 grid over f, p in [0, 0.12]).
Prints, per file, how far series lie off the family (RMS residual) and the histograms of the fitted f
and p beside the real ones; with --score, also the discriminative score of the generated series, of
their projections onto the family, and of the projections with f (or p) redrawn from the real
distribution: the drop that a redraw buys is how much of the score that parameter's distribution makes.

  python benchmarks/sine_family.py --real /tmp/ab/sines_held_out.npz /tmp/ab/base/sines_seed0/synthetic.npz
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from multivariate import sine_curves

from dg_jax.data.npz_format import load_npz
from dg_jax.evaluation.posthoc import discriminative_score

GRID = np.linspace(0, 0.12, 121)
BINS = np.linspace(0, 0.12, 13)


def fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[n, T, D] series -> the nearest family member's (f, p) and the RMS residual, each [n, D]."""
  n, t, d = features.shape
  f_grid, p_grid = (a.ravel() for a in np.meshgrid(GRID, GRID, indexing="ij"))
  family = sine_curves(f_grid, p_grid, t).astype(np.float32)
  norms = (family ** 2).sum(1)
  x = features.transpose(0, 2, 1).reshape(-1, t).astype(np.float32)
  best, residual = [], []
  for i in range(0, len(x), 2000):  # [2000, 14641] distances at a time
    dist = (x[i:i + 2000] ** 2).sum(1)[:, None] - 2 * x[i:i + 2000] @ family.T + norms[None]
    k = dist.argmin(1)
    best.append(k)
    residual.append(np.sqrt(np.maximum(dist[np.arange(len(k)), k], 0) / t))
  k = np.concatenate(best)
  return f_grid[k].reshape(n, d), p_grid[k].reshape(n, d), np.concatenate(residual).reshape(n, d)


def histogram(v: np.ndarray) -> str:
  return " ".join(f"{h:.2f}" for h in np.histogram(v, BINS)[0] / v.size)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--real", required=True, help="real sines (npz), e.g. ab_fidelity.py's sines_held_out.npz")
  p.add_argument("synthetic", nargs="+", help="generated sines (npz)")
  p.add_argument("--samples", type=int, default=2000, help="series read from each file")
  p.add_argument("--score", action="store_true", help="also the four discriminative scores (about 30 s a file on 2 cores)")
  args = p.parse_args()
  real = load_npz(args.real)
  rng = np.random.default_rng(0)
  print(f"f and p histograms: {len(BINS) - 1} bins of 0.01 over [0, 0.12]; real ones are uniform on [0, 0.1]")
  for path in [args.real] + args.synthetic:
    data = load_npz(path)
    f, ph, res = fit(data.features[:args.samples])
    print(f"{path}\n  off the family: RMS residual median {np.median(res):.4f}, 90% {np.quantile(res, 0.9):.4f}"
          f"\n  f {histogram(f)}\n  p {histogram(ph)}")
    if args.score and path != args.real:
      n, t = len(f), data.features.shape[1]
      variants = dict(generated=data.features[:n], projected=sine_curves(f, ph, t).transpose(0, 2, 1),
                      f_redrawn=sine_curves(rng.uniform(0, 0.1, f.shape), ph, t).transpose(0, 2, 1),
                      p_redrawn=sine_curves(f, rng.uniform(0, 0.1, ph.shape), t).transpose(0, 2, 1))
      for name, x in variants.items():
        synthetic = dataclasses.replace(data, features=x.astype(np.float32), lengths=data.lengths[:n],
                                        attributes=data.attributes[:n])
        mean, std = discriminative_score(real, synthetic)
        print(f"  discriminative score, {name}: {mean:.3f} ± {std:.3f}")


if __name__ == "__main__":
  main()
