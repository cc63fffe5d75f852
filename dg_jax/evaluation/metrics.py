"""Fidelity metrics of §5: pure functions of a real and a synthetic Dataset (original units).

`evaluate(real, synthetic)` returns these flat keys (lower is closer for every one):

| key                                      | what                                                         | paper           |
|------------------------------------------|--------------------------------------------------------------|-----------------|
| `autocorrelation_mse/<feature>`          | MSE of the mean autocorrelation curves, lags 1.. both define | Fig 1, Table 3  |
| `midrange_w1/<feature>`                  | W1 of the per-series (max+min)/2 over valid steps            | Fig 6           |
| `spread_log_ratio/<feature>`             | abs ln of median within-series std, synthetic over real       |                 |
| `flat_share_gap/<feature>`               | abs difference of the shares of flat series (`flat_share`)    |                 |
| `at_min_gap/<feature>`                   | abs difference of the `at_min_share`s (zero-inflated series)  |                 |
| `diff1_log_ratio/<feature>`              | abs ln of `difference_spread` of order 1, synthetic over real |                 |
| `diff2_log_ratio/<feature>`              | abs ln of `difference_spread` of order 2 (roughness), same    |                 |
| `pearson_w1/<a>,<b>`                     | W1 of the per-series Pearson correlation of a and b          | Fig 8           |
| `length_w1`                              | W1 of the series lengths                                     | Fig 9, 18       |
| `jsd/<attribute>`                        | base-2 Jensen-Shannon divergence of its histogram, in [0, 1] | Fig 10, 19      |
| `w1/<attribute>`                         | W1 of a continuous attribute                                 |                 |
| `total_w1/<feature>/<attribute>=<label>` | W1 of per-series totals within a category (with `total_by`)  | Table 2, Fig 20 |

The variability keys catch what the others miss: a feature whose levels, marginals and correlations
are right but whose series are flat (collapsed), jittery (rough from record to record), or a broad bump where
real ones sit at their minimum with a spike (a loss rate: `at_min_gap`); ln 1.5 = 0.41.
Features: the continuous ones (categorical features get no feature keys); pairs `<a>,<b>` in schema
order. W1 is the 1-D Wasserstein-1 distance between empirical distributions, in the variable's units.

Which keys apply is decided by the real data alone: a statistic the real data does not define (one-record
series have no autocorrelation) is left out, and `reasons` says why. A key that applies but that the
synthetic data does not define (all its series constant, a category it never generates) is NaN: a
failure of the generator, the worst value, never dropped (dg_jax.sweep counts it as a failed seed).
`failures` names the collapses that other metrics can miss: a continuous feature whose synthetic series
are flat far more often than the real ones, a categorical variable reduced to one category, NaN values.
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
  return curve_mse(mean_autocorrelation(real, feature), mean_autocorrelation(synthetic, feature))


def curve_mse(a: np.ndarray, b: np.ndarray) -> float:
  """MSE of two mean autocorrelation curves over the lags 1.. that both define (NaN if none)."""
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


# A series is flat if its range over its valid steps is at most this share of the median range of the real
# series that vary: where most real series are constant (MBA's ping loss rate), a median over all of them would
# be 0, and generated series that move by 1e-4 of the range (auto-normalisation's widening) would not count.
FLAT_TOLERANCE = 0.05
COLLAPSE_MARGIN = 0.5  # collapsed: the share of flat synthetic series exceeds the real share by more than this


def series_ranges(data: Dataset, feature: int) -> np.ndarray:
  """Per series max - min of a feature over its valid steps."""
  valid = data.valid_steps
  x = data.features[:, :, feature].astype(np.float64)
  return np.where(valid, x, -np.inf).max(1) - np.where(valid, x, np.inf).min(1)


def flat_tolerance(real: Dataset, feature: int) -> float:
  ranges = series_ranges(real, feature)
  varying = ranges[ranges > 0]
  return FLAT_TOLERANCE * float(np.median(varying)) if varying.size else 0.0


def flat_share(data: Dataset, feature: int, tolerance: float) -> float:
  """The share of series whose range is at most `tolerance` (flat_tolerance of the real data)."""
  return float(np.mean(series_ranges(data, feature) <= tolerance))


AT_MIN = 0.01  # at_min_share: a record within this share of its series' range of the series' minimum


def at_min_share(data: Dataset, feature: int, tolerance: float) -> float:
  """The median, over the series that are not flat (range above `tolerance`), of the share of a series'
  records at its minimum (within AT_MIN of its range); NaN where none varies. One record in a series that
  moves; 98% in MBA's varying ping loss series, zero but for a spike. Generated ones were broad bumps, 4-38%
  at their minimum, whose spreads, steps and autocorrelation, all relative to a series' own spread, scored
  well (issue 21, docs/results.md)."""
  x = data.features[:, :, feature].astype(np.float64)
  valid, ranges = data.valid_steps, series_ranges(data, feature)
  low = np.where(valid, x, np.inf).min(1, keepdims=True)
  near = (valid & (x - low <= AT_MIN * ranges[:, None])).sum(1) / valid.sum(1)
  moving = ranges > tolerance
  return float(np.median(near[moving])) if moving.any() else float("nan")


def series_spreads(data: Dataset, feature: int) -> np.ndarray:
  """Per series standard deviation of a feature over its valid steps."""
  x, _ = _centred(data, feature)
  return np.sqrt(np.sum(x * x, 1) / data.valid_steps.sum(1))


def difference_spread(data: Dataset, feature: int, order: int) -> float:
  """How rough a feature's series are from record to record: the median over series of the standard
  deviation of their `order`-th differences over their own standard deviation (NaN where no series has
  order + 1 records and varies). Relative to each series' spread, so that on heavy-tailed data a few large
  series do not decide it (a pooled std of differences moved 9x between two draws of the demo data)."""
  x = data.features[:, :, feature].astype(np.float64)
  d, valid = np.diff(x, order, axis=1), data.valid_steps[:, order:]
  count = valid.sum(1)
  mean = np.where(valid, d, 0).sum(1) / np.maximum(count, 1)
  rough = np.sqrt(np.where(valid, (d - mean[:, None]) ** 2, 0).sum(1) / np.maximum(count, 1))
  spread = series_spreads(data, feature)
  ok = (count > 0) & (spread > 0)
  return float(np.median(rough[ok] / spread[ok])) if ok.any() else float("nan")


def log_ratio(synthetic: float, real: float) -> float:
  """|ln(synthetic / real)|: 0 when equal, ln 1.5 = 0.41 at 1.5x either way; inf when only one is 0."""
  if synthetic == real:
    return 0.0
  with np.errstate(divide="ignore"):
    return float(abs(np.log(synthetic) - np.log(real)))


def variability(data: Dataset, feature: int, tolerance: float) -> dict[str, float]:
  """How a continuous feature varies within series: the median within-series standard deviation, the share
  of flat series (range at most `tolerance`), the share of a varying series' records at its minimum
  (`at_min_share`), and the roughness of first and second differences (`difference_spread`)."""
  return dict(spread=float(np.median(series_spreads(data, feature))), flat_share=flat_share(data, feature, tolerance),
              at_min=at_min_share(data, feature, tolerance), diff1=difference_spread(data, feature, 1),
              diff2=difference_spread(data, feature, 2))


def failures(real: Dataset, synthetic: Dataset) -> list[str]:
  """The ways `synthetic` collapsed, as lines ([] for none): non-finite values; a continuous feature whose
  series are flat in COLLAPSE_MARGIN more of the synthetic set than of the real one; a categorical
  attribute or feature of which the synthetic set has one category where the real set has several."""
  out = []
  if not (np.isfinite(synthetic.features).all() and np.isfinite(synthetic.attributes).all()):
    out.append("non-finite values")
  for j, var in enumerate(real.feature_vars):
    if var.is_categorical:
      continue
    tol = flat_tolerance(real, j)
    syn, ref = flat_share(synthetic, j, tol), flat_share(real, j, tol)
    if syn > ref + COLLAPSE_MARGIN:
      out.append(f"{var.name}: {syn:.0%} of the series are flat ({ref:.0%} of the real ones)")
  columns = [(var, real.attributes[:, j], synthetic.attributes[:, j]) for j, var in enumerate(real.attribute_vars)]
  columns += [(var, real.features[:, :, j][real.valid_steps], synthetic.features[:, :, j][synthetic.valid_steps])
              for j, var in enumerate(real.feature_vars)]
  for var, ref, syn in columns:
    if var.is_categorical and len(np.unique(ref)) > 1 and len(np.unique(syn)) == 1:
      out.append(f"{var.name}: one category only ({var.categories[int(syn[0])]}), the real data has "
                 f"{len(np.unique(ref))}")
  return out


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


# Why a metric does not apply to the real data (it is then left out of `evaluate`'s result).
UNDEFINED_BECAUSE = {
    "spread_log_ratio": "the real series of this feature are all constant",
    "at_min_gap": "no real series varies by more than the flat tolerance",
    "diff1_log_ratio": "no real series has 2 or more records that are not all equal",
    "diff2_log_ratio": "no real series has 3 or more records whose step-to-step changes vary",
    "autocorrelation_mse": "no real series has 2 or more records that are not all equal",
    "pearson_w1": "no real series has 2 or more records where both features vary",
}
FAILED_BECAUSE = "the synthetic data does not define it (e.g. every series constant, a category never generated): " \
                 "a failure of the generator"


def evaluate(real: Dataset, synthetic: Dataset, total_by: str | Sequence[str] | None = None,
             reasons: dict[str, str] | None = None) -> dict[str, float]:
  """The distribution and temporal metrics, flat keys `<metric>/<variable>` (lower is closer; the
  module docstring lists them). total_by: categorical attribute name(s) whose categories split the
  per-series totals of each continuous feature (`total_w1/<feature>/<attribute>=<label>`).
  Keys the real data does not define are left out; keys it defines but the synthetic data does not are
  NaN (the generator's failure). `reasons`, if given, receives key -> why for both."""
  check_same_schema(real, synthetic)
  by = categorical_attributes(real, total_by)
  out, inapplicable = {}, set()
  for j, var in enumerate(real.feature_vars):
    if var.is_categorical:
      continue
    real_curve = mean_autocorrelation(real, j)
    key = f"autocorrelation_mse/{var.name}"
    out[key] = curve_mse(real_curve, mean_autocorrelation(synthetic, j))
    if not np.isfinite(real_curve[1:]).any():
      inapplicable.add(key)
    out[f"midrange_w1/{var.name}"] = wasserstein1(series_midranges(real, j), series_midranges(synthetic, j))
    tol = flat_tolerance(real, j)
    ref, syn = variability(real, j, tol), variability(synthetic, j, tol)
    out[f"spread_log_ratio/{var.name}"] = log_ratio(syn["spread"], ref["spread"])
    out[f"flat_share_gap/{var.name}"] = abs(syn["flat_share"] - ref["flat_share"])
    out[f"at_min_gap/{var.name}"] = abs(syn["at_min"] - ref["at_min"])
    if not np.isfinite(ref["at_min"]):
      inapplicable.add(f"at_min_gap/{var.name}")
    for d in ("diff1", "diff2"):
      key = f"{d}_log_ratio/{var.name}"
      out[key] = log_ratio(syn[d], ref[d])
      if not ref[d] > 0:
        inapplicable.add(key)
    if not ref["spread"] > 0:
      inapplicable.add(f"spread_log_ratio/{var.name}")
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
      key = f"pearson_w1/{real.feature_vars[a].name},{real.feature_vars[b].name}"
      real_r = series_pearson(real, a, b)
      out[key] = wasserstein1(real_r, series_pearson(synthetic, a, b))
      if real_r.size == 0:
        inapplicable.add(key)
  if reasons is not None:
    reasons.update({k: UNDEFINED_BECAUSE[k.split("/")[0]] for k in inapplicable})
    reasons.update({k: FAILED_BECAUSE for k, v in out.items() if k not in inapplicable and not np.isfinite(v)})
  return {k: (v if np.isfinite(v) else float("nan")) for k, v in out.items() if k not in inapplicable}
