"""Fidelity metrics of §5 (the ones the model benchmark needs), pure functions of two datasets."""
from __future__ import annotations

import numpy as np

from dg_jax.data.schema import Dataset


def series_autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray | None:
  """Sample autocorrelation of one series at lags 0..max_lag (as statsmodels' acf); None if constant."""
  x = np.asarray(x, np.float64) - np.mean(x)
  denom = np.dot(x, x)
  if denom <= 0:
    return None
  lags = min(max_lag, len(x) - 1)
  return np.array([np.dot(x[:len(x) - k], x[k:]) / denom for k in range(lags + 1)])


def mean_autocorrelation(data: Dataset, feature: int) -> np.ndarray:
  """[T] mean over series of the autocorrelation at lags 0..T-1 (each over its valid steps);
  NaN where no series is long enough."""
  t = data.max_length
  total, count = np.zeros(t), np.zeros(t)
  for i in range(data.num_samples):
    acf = series_autocorrelation(data.features[i, :data.lengths[i], feature], t - 1)
    if acf is not None:
      total[:len(acf)] += acf
      count[:len(acf)] += 1
  with np.errstate(invalid="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def autocorrelation_mse(real: Dataset, synthetic: Dataset, feature: int) -> float:
  """MSE between the mean autocorrelation curves over lags 1.. that both define (Table 3)."""
  a, b = mean_autocorrelation(real, feature), mean_autocorrelation(synthetic, feature)
  n = min(len(a), len(b))
  a, b = a[1:n], b[1:n]
  ok = np.isfinite(a) & np.isfinite(b)
  return float(np.mean((a[ok] - b[ok]) ** 2)) if ok.any() else float("nan")


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
  """Base-2 Jensen-Shannon divergence of two histograms (normalised here), in [0, 1]."""
  p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
  p, q = p / p.sum(), q / q.sum()
  m = (p + q) / 2

  def kl(a, b):
    nz = a > 0
    return np.sum(a[nz] * np.log2(a[nz] / b[nz]))
  return float(max(0.0, (kl(p, m) + kl(q, m)) / 2))


def attribute_jsd(real: Dataset, synthetic: Dataset, attribute: int) -> float:
  k = real.attribute_vars[attribute].dim
  hist = lambda d: np.bincount(d.attributes[:, attribute].astype(int), minlength=k)[:k]
  return jensen_shannon(hist(real), hist(synthetic))


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
  """1-D Wasserstein-1 distance between two empirical distributions: the area between their CDFs."""
  a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
  if a.size == 0 or b.size == 0:
    return float("nan")
  grid = np.concatenate([a, b])
  grid.sort()
  cdf_a = np.searchsorted(a, grid[:-1], side="right") / a.size
  cdf_b = np.searchsorted(b, grid[:-1], side="right") / b.size
  return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


def series_totals(data: Dataset, feature: int) -> np.ndarray:
  return data.features[:, :, feature].astype(np.float64).sum(axis=1)  # zero after each end


def total_w1_by_category(real: Dataset, synthetic: Dataset, feature: int, attribute: int) -> dict[str, float]:
  """Per category of `attribute`: W1 between real and synthetic per-series totals of `feature` (Table 2).
  Categories missing from either side are left out."""
  var = real.attribute_vars[attribute]
  out = {}
  for code, label in enumerate(var.categories):
    r = series_totals(real, feature)[real.attributes[:, attribute] == code]
    s = series_totals(synthetic, feature)[synthetic.attributes[:, attribute] == code]
    if r.size and s.size:
      out[label] = wasserstein1(r, s)
  return out


def series_midranges(data: Dataset, feature: int) -> np.ndarray:
  """Per series (max+min)/2 of a feature over its valid steps (Figure 6)."""
  valid = np.arange(data.max_length)[None, :] < data.lengths[:, None]
  x = data.features[:, :, feature].astype(np.float64)
  return (np.where(valid, x, -np.inf).max(1) + np.where(valid, x, np.inf).min(1)) / 2


def series_pearson(data: Dataset, a: int, b: int) -> np.ndarray:
  """Per series Pearson correlation of features a and b over valid steps; series where either is
  constant are left out (Figure 8)."""
  out = []
  for i in range(data.num_samples):
    x = data.features[i, :data.lengths[i], a].astype(np.float64)
    y = data.features[i, :data.lengths[i], b].astype(np.float64)
    if x.std() > 0 and y.std() > 0:
      out.append(np.corrcoef(x, y)[0, 1])
  return np.array(out)


def evaluate(real: Dataset, synthetic: Dataset) -> dict[str, float]:
  """The distribution and temporal metrics, flat keys `<metric>/<variable>` (lower is closer)."""
  out = {}
  for j, var in enumerate(real.feature_vars):
    if var.is_categorical:
      continue
    out[f"autocorrelation_mse/{var.name}"] = autocorrelation_mse(real, synthetic, j)
    out[f"midrange_w1/{var.name}"] = wasserstein1(series_midranges(real, j), series_midranges(synthetic, j))
  for j, var in enumerate(real.attribute_vars):
    if var.is_categorical:
      out[f"jsd/{var.name}"] = attribute_jsd(real, synthetic, j)
    else:
      out[f"w1/{var.name}"] = wasserstein1(real.attributes[:, j], synthetic.attributes[:, j])
  out["length_w1"] = wasserstein1(real.lengths, synthetic.lengths)
  continuous = [j for j, v in enumerate(real.feature_vars) if not v.is_categorical]
  for x, a in enumerate(continuous):
    for b in continuous[x + 1:]:
      name = f"{real.feature_vars[a].name},{real.feature_vars[b].name}"
      out[f"pearson_w1/{name}"] = wasserstein1(series_pearson(real, a, b), series_pearson(synthetic, a, b))
  return out
