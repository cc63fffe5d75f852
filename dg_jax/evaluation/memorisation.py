"""Memorisation check of Appendix C (Figures 21-23): how close synthetic series are to training series.

Distances are squared errors between whole series over all time steps and the chosen features, by default
in units of each feature's std on the training side (as the paper's normalised series: otherwise a
feature in big units, such as MBA's byte counts, decides alone); scale=False keeps the datasets' units. Steps
after a series' end hold 0 (the Dataset convention), so a length difference counts as the squared
values the longer series has there; the paper compares whole series the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dg_jax.data.schema import Dataset
from dg_jax.evaluation.metrics import feature_scaling, wasserstein1


def _flat(data: Dataset, features: Sequence[int] | None, std: np.ndarray | float = 1.0) -> np.ndarray:
  f = data.features.astype(np.float64) / std
  f = f if features is None else f[:, :, list(features)]
  return f.reshape(data.num_samples, -1)


def nearest_neighbours(train: Dataset, query: Dataset, chunk: int = 256, features: Sequence[int] | None = None,
                       scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """For each query series, its nearest training series by squared error over all steps and `features`
  (default all). Returns (indices int64 [n_query], squared distances float64 [n_query]).

  scale: divide each feature by its std over the training side's valid steps first, so features in
  different units weigh alike (distances are then in those std units; padding stays 0).

  Vectorised as |q|^2 + |t|^2 - 2 q.t over chunks of `chunk` query rows; the winner's distance is then
  recomputed directly, so an exact copy of a training series has distance exactly 0.
  """
  if train.features.shape[1:] != query.features.shape[1:]:
    raise ValueError(f"nearest_neighbours: training series ({train.source}) have shape [T, K] = "
                     f"{list(train.features.shape[1:])} but query series ({query.source}) have "
                     f"{list(query.features.shape[1:])}")
  if chunk < 1:
    raise ValueError(f"nearest_neighbours: chunk must be >= 1, got {chunk}")
  std = feature_scaling(train)[1] if scale else 1.0
  t, q = _flat(train, features, std), _flat(query, features, std)
  t_sq = np.einsum("ij,ij->i", t, t)
  idx = np.empty(len(q), np.int64)
  for s in range(0, len(q), chunk):
    block = q[s:s + chunk]
    d = t_sq[None, :] - 2.0 * block @ t.T  # |q|^2 is constant per row and does not change the argmin
    idx[s:s + chunk] = np.argmin(d, axis=1)
  dist = np.sum((q - t[idx]) ** 2, axis=1)
  return idx, dist


def memorisation_summary(train: Dataset, synthetic: Dataset, held_out: Dataset,
                         features: Sequence[int] | None = None, scale: bool = True) -> dict[str, float]:
  """Compares synthetic samples' NN squared distances to training with held-out real samples' ones.

  A model that copies training series puts synthetic samples much closer to training than fresh real
  samples are: `median_ratio` (synthetic median / held-out median) well below 1 and `closer_fraction`
  (share of synthetic samples nearer to training than the nearest held-out sample is) well above 0.
  """
  _, syn = nearest_neighbours(train, synthetic, features=features, scale=scale)
  _, held = nearest_neighbours(train, held_out, features=features, scale=scale)
  syn_med, held_med = float(np.median(syn)), float(np.median(held))
  return {
      "memorisation/synthetic_median": syn_med,
      "memorisation/held_out_median": held_med,
      "memorisation/median_ratio": syn_med / held_med if held_med > 0 else float("inf") if syn_med > 0 else 1.0,
      "memorisation/closer_fraction": float(np.mean(syn < held.min())),
      "memorisation/exact_copy_fraction": float(np.mean(syn == 0)),
      "memorisation/distance_w1": wasserstein1(syn, held),
  }
