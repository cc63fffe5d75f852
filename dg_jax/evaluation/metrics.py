"""Fidelity metrics of §5: pure functions of a real and a synthetic Dataset (original units).

`evaluate(real, synthetic)` returns these flat keys (lower is closer for every one):

| key                                      | what                                                         | paper           |
|------------------------------------------|--------------------------------------------------------------|-----------------|
| `autocorrelation_mse/<feature>`          | MSE of the mean autocorrelation curves, lags 1.. both define | Fig 1, Table 3  |
| `midrange_w1/<feature>`                  | W1 of the per-series (max+min)/2 over valid steps            | Fig 6           |
| `pearson_w1/<a>,<b>`                     | W1 of the per-series Pearson correlation of a and b          | Fig 8           |
| `length_w1`                              | W1 of the series lengths                                     | Fig 9, 18       |
| `jsd/<attribute>`                        | base-2 Jensen-Shannon divergence of its histogram, in [0, 1] | Fig 10, 19      |
| `w1/<attribute>`                         | W1 of a continuous attribute                                 |                 |
| `total_w1/<feature>/<attribute>=<label>` | W1 of per-series totals within a category (with `total_by`)  | Table 2, Fig 20 |

Features: the continuous ones (categorical features get no feature keys); pairs `<a>,<b>` in schema
order. W1 is the 1-D Wasserstein-1 distance between empirical distributions, in the variable's units.
A key whose statistic is undefined for the data (one-record series have no autocorrelation, a category
the synthetic set lacks has no totals) is left out of `evaluate`'s result, and `reasons` says why.
Memorisation (`memorisation/...`), downstream tasks (`downstream/...`) and membership inference live
in memorisation.py, downstream.py and membership.py.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from dg_jax.data.schema import DataError, Dataset


def series_autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray | None:
  """Sample autocorrelation of one series at lags 0..max_lag (as statsmodels' acf); None if constant."""
  x = np.asarray(x, np.float64)
  if x.size == 0 or np.all(x == x[0]):
    return None
  x = x - np.mean(x)
  denom = np.dot(x, x)
  lags = min(max_lag, len(x) - 1)
  return np.array([np.dot(x[:len(x) - k], x[k:]) / denom for k in range(lags + 1)])


def feature_scaling(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """Per feature mean and std ([K] each) over valid steps (std 1 for a constant feature)."""
  x = data.features[data.valid_steps].astype(np.float64)  # [valid steps, K]
  std = x.std(0)
  return x.mean(0), np.where(std > 0, std, 1.0)


def _centred(data: Dataset, feature: int, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
  """A feature with each series' mean over its valid steps removed (0 after the end), and [n] True for
  series that are not constant."""
  x = data.features[rows, :, feature].astype(np.float64)
  valid = data.valid_steps[rows]
  hi, lo = np.where(valid, x, -np.inf).max(1), np.where(valid, x, np.inf).min(1)
  mean = np.where(valid, x, 0).sum(1) / valid.sum(1)
  return np.where(valid, x - mean[:, None], 0.0), hi > lo


def mean_autocorrelation(data: Dataset, feature: int, chunk: int = 1024) -> np.ndarray:
  """[T] mean over series of the autocorrelation at lags 0..T-1 (each over its valid steps, as
  `series_autocorrelation`; constant series skipped); NaN where no series is long enough.
  Vectorised with an FFT over `chunk` series at a time."""
  t = data.max_length
  total, count = np.zeros(t), np.zeros(t)
  for start in range(0, data.num_samples, chunk):
    rows = slice(start, start + chunk)
    x, varying = _centred(data, feature, rows)
    spectrum = np.fft.rfft(x, n=2 * t)
    lagged = np.fft.irfft(spectrum * np.conj(spectrum), n=2 * t)[:, :t]  # sum_i x_i x_{i+k}, no wrap-around
    denom = np.sum(x * x, axis=1)
    ok = (np.arange(t)[None, :] < np.asarray(data.lengths[rows])[:, None]) & varying[:, None]
    total += np.where(ok, lagged / np.where(varying, denom, 1)[:, None], 0).sum(0)
    count += ok.sum(0)
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
  """Per category of `attribute` present in the real data: W1 between real and synthetic per-series
  totals of `feature` (Table 2); NaN for a category the synthetic data lacks."""
  real_totals, syn_totals = series_totals(real, feature), series_totals(synthetic, feature)
  out = {}
  for code, label in enumerate(real.attribute_vars[attribute].categories):
    r = real_totals[real.attributes[:, attribute] == code]
    if r.size:
      out[label] = wasserstein1(r, syn_totals[synthetic.attributes[:, attribute] == code])
  return out


def series_midranges(data: Dataset, feature: int) -> np.ndarray:
  """Per series (max+min)/2 of a feature over its valid steps (Figure 6)."""
  valid = data.valid_steps
  x = data.features[:, :, feature].astype(np.float64)
  return (np.where(valid, x, -np.inf).max(1) + np.where(valid, x, np.inf).min(1)) / 2


def series_pearson(data: Dataset, a: int, b: int) -> np.ndarray:
  """Per series Pearson correlation of features a and b over valid steps; series where either is
  constant are left out (Figure 8)."""
  x, x_ok = _centred(data, a)
  y, y_ok = _centred(data, b)
  ok = x_ok & y_ok
  x, y = x[ok], y[ok]
  r = np.sum(x * y, 1) / np.sqrt(np.sum(x * x, 1) * np.sum(y * y, 1))
  return np.clip(r, -1.0, 1.0)


def check_same_schema(reference: Dataset, other: Dataset) -> None:
  """Raises DataError naming `other`'s source unless its variables match `reference`'s (names, kinds,
  categories, in order)."""
  for role, mine, theirs in (("feature", reference.feature_vars, other.feature_vars),
                             ("attribute", reference.attribute_vars, other.attribute_vars)):
    want = [(v.name, v.kind, v.categories) for v in mine]
    got = [(v.name, v.kind, v.categories) for v in theirs]
    if want != got:
      diff = next((f"{g} instead of {w}" for w, g in zip(want, got) if w != g),
                  f"{len(got)} {role}s instead of {len(want)}")
      raise DataError(f"{other.source}: {role} variables do not match those of {reference.source}: {diff}")


def categorical_attributes(data: Dataset, names: str | Sequence[str] | None) -> list[int]:
  """Indices of the named categorical attributes (one name or several; None: none)."""
  names = [names] if isinstance(names, str) else list(names or ())
  known = [v.name for v in data.attribute_vars]
  out = []
  for name in names:
    if name not in known:
      raise DataError(f"{data.source}: unknown attribute {name!r} for per-category totals; attributes are {known}")
    if not data.attribute_vars[known.index(name)].is_categorical:
      raise DataError(f"{data.source}: attribute {name!r} is continuous; per-category totals need a categorical one")
    out.append(known.index(name))
  return out


# Why a metric can be undefined for a dataset (it is then left out of `evaluate`'s result).
UNDEFINED_BECAUSE = {
    "autocorrelation_mse": "no series (real or synthetic) has 2 or more records that are not all equal",
    "pearson_w1": "no series (real or synthetic) has 2 or more records where both features vary",
    "total_w1": "the synthetic set has no series in this category",
}


def evaluate(real: Dataset, synthetic: Dataset, total_by: str | Sequence[str] | None = None,
             reasons: dict[str, str] | None = None) -> dict[str, float]:
  """The distribution and temporal metrics, flat keys `<metric>/<variable>` (lower is closer; the
  module docstring lists them). total_by: categorical attribute name(s) whose categories split the
  per-series totals of each continuous feature (`total_w1/<feature>/<attribute>=<label>`).
  Metrics undefined for these datasets are left out; `reasons`, if given, receives key -> why."""
  check_same_schema(real, synthetic)
  by = categorical_attributes(real, total_by)
  out = {}
  for j, var in enumerate(real.feature_vars):
    if var.is_categorical:
      continue
    out[f"autocorrelation_mse/{var.name}"] = autocorrelation_mse(real, synthetic, j)
    out[f"midrange_w1/{var.name}"] = wasserstein1(series_midranges(real, j), series_midranges(synthetic, j))
    for a in by:
      attr = real.attribute_vars[a].name
      for label, w1 in total_w1_by_category(real, synthetic, j, a).items():
        out[f"total_w1/{var.name}/{attr}={label}"] = w1
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
  defined = {k: v for k, v in out.items() if np.isfinite(v)}
  if reasons is not None:
    reasons.update({k: UNDEFINED_BECAUSE.get(k.split("/")[0], "undefined for this data")
                    for k in out if k not in defined})
  return defined
