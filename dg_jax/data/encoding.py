"""Model space: scaling, one-hot, auto-normalisation and generation flags, with exact inverses.

Encoded layout (all float32):
  attributes             [n, A]     one-hot blocks / scaled continuous values, in schema order
  additional_attributes  [n, 2*Kc+2*Ks]  per continuous feature: (max+min)/2 in the feature's range, and
                                    (max-min)/2 in [0, 1], or with `log_half_range` its position on a
                                    log scale from AUTO_NORM_EPS to the largest possible half-range
                                    (empty without auto-normalisation); then a 2-column "at the floor
                                    throughout" flag per `series_floored` feature ([1,0] leaves it)
  features               [n, T, F]  per record: feature blocks, a 2-column "at the floor" flag per floored
                                    feature ([1,0] above it, [0,1] at it), then the 2 generation-flag
                                    columns ([1,0] continues, [0,1] ends here, [0,0] after the end)
"""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Iterable

import numpy as np

from dg_jax.data.schema import DataError, Dataset, Variable

ZERO_ONE = "zero_one"
MINUS_ONE_ONE = "minus_one_one"
NORMALIZATIONS = (ZERO_ONE, MINUS_ONE_ONE)
# Per-series ranges are widened by this much so constant series stay finite (§4.2, original code).
AUTO_NORM_EPS = 1e-4

# One output head of a generator: activation in {"softmax", "sigmoid", "tanh"} and width.
Head = collections.namedtuple("Head", "activation dim")
FLAG_HEAD = Head("softmax", 2)


@dataclasses.dataclass(frozen=True)
class Schema:
  """Fitted description of a dataset: variables with global ranges, T, and the normalisation choices."""
  attribute_vars: tuple[Variable, ...]
  feature_vars: tuple[Variable, ...]
  max_length: int
  normalization: str = ZERO_ONE
  auto_normalize: bool = True
  # The shortest training series: generated series are never shorter (unless a length is forced).
  # min_length == max_length (every series has length T, as in MBA) means fixed-length generation.
  min_length: int = 1
  # The per-series half-range on a log scale (`encode_half`): series whose range is a small share of the
  # global one (a day's move of a stock over ten years) are then generated away from the sigmoid's flat
  # end; a linear code of 0.006 saturates there and the feature collapses (issue 21). Off in schemas
  # saved before it existed.
  log_half_range: bool = False
  # The fixed [2Kc, 2Kc] map through which the critics see the min/max block (`min_max_view`; fitted
  # on the training data when model.whiten_levels is on); () = as generated, as in the paper and in
  # schemas saved before it existed.
  min_max_view: tuple[tuple[float, ...], ...] = ()
  # model.aux_critic_levels: the [Kc, Kc] map through which the auxiliary critic also sees each series' mean
  # of each continuous feature (`level_view`); () = it sees none (off, no tied means, old schemas).
  level_view: tuple[tuple[float, ...], ...] = ()
  # The log code's span (`half_range_bounds`): the smallest and largest per-series half-range of the
  # training data, so that no generated series is narrower than the narrowest real one (issue 21); ()
  # = from AUTO_NORM_EPS to half the value range, as in schemas saved before it and in private runs.
  log_half_bounds: tuple[float, ...] = ()
  # model.step_critic_weight: per continuous feature, the root mean square of the training series'
  # differences between neighbouring kept records (`step_scale`), by which the step critic's view divides
  # them, 0 for a feature that is not smooth (`SMOOTH_STEPS`: not judged); () = no step critic (off, in
  # private runs and in schemas saved before it).
  step_scale: tuple[float, ...] = ()
  # With auto-normalisation, per continuous feature the same root mean square of the differences times
  # each series' half-range, the steps in the data's units, which the step critic also sees
  # (`unit_step_scale`); () = normalised steps only (no min/max, and schemas saved before it).
  unit_step_scale: tuple[float, ...] = ()
  # model.floor_flags: the continuous features (indices into feature_vars) that sit at their minimum in many
  # records (`floored_features`), each with an "at the floor" flag per record; () = none (off, in private
  # runs and in schemas saved before it).
  floored: tuple[int, ...] = ()
  # model.floor_series_flags: the floored features (a subset of `floored`) that also get an "at the floor
  # throughout" flag per series, after the min/max block (auto-normalisation only); () = none (off, and in
  # schemas saved before it).
  series_floored: tuple[int, ...] = ()

  def __post_init__(self):
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
    if not set(self.series_floored) <= set(self.floored) or (self.series_floored and not self.auto_normalize):
      raise ValueError(f"series_floored {self.series_floored} must be floored features {self.floored}, "
                       "with auto-normalisation")

  @property
  def _continuous_activation(self) -> str:
    return "sigmoid" if self.normalization == ZERO_ONE else "tanh"

  def _heads(self, variables) -> tuple[Head, ...]:
    return tuple(Head("softmax", v.dim) if v.is_categorical else Head(self._continuous_activation, 1)
                 for v in variables)

  @property
  def attribute_heads(self) -> tuple[Head, ...]:
    return self._heads(self.attribute_vars)

  @property
  def additional_heads(self) -> tuple[Head, ...]:
    if not self.auto_normalize:
      return ()
    return ((Head(self._continuous_activation, 1), Head("sigmoid", 1)) * len(self.continuous_features)
            + (FLAG_HEAD,) * len(self.series_floored))

  @property
  def min_max_dim(self) -> int:
    """The min/max block's columns at the start of the additional attributes: (midrange, half-range code) per
    continuous feature; the series' floor flags (`series_floored`) follow it."""
    return 2 * len(self.continuous_features) if self.auto_normalize else 0

  def half_codes(self, additional):
    """[n, additional_dim] additional attributes -> [n, Kc] the half-range codes (numpy or jnp)."""
    return additional[:, 1:self.min_max_dim:2]

  @property
  def feature_heads(self) -> tuple[Head, ...]:
    """Heads of one record: the features', the floor flags' (`floored`), the generation flag last."""
    return self._heads(self.feature_vars) + (FLAG_HEAD,) * len(self.floored) + (FLAG_HEAD,)

  def put_at_floor(self, y, blocks: list, j: int, where=np.where):
    """Feature j's model-space values y with the records whose floor flag (among a record's blocks, split by
    `feature_heads`) says so exactly at the floor; numpy, or jnp with where=jnp.where."""
    if j not in self.floored:
      return y
    flag = blocks[self.floor_flag_head(j)]
    return where(flag[..., 1] > flag[..., 0], value_range(self.normalization)[0], y)

  def floor_flag_head(self, j: int) -> int:
    """The index in `feature_heads` of floored feature j's floor flag."""
    return len(self.feature_vars) + self.floored.index(j)

  @property
  def head_starts(self) -> np.ndarray:
    """The first column of each of `feature_heads` in a record."""
    return np.cumsum([0] + [h.dim for h in self.feature_heads])[:-1]

  @property
  def continuous_features(self) -> tuple[int, ...]:
    return tuple(i for i, v in enumerate(self.feature_vars) if not v.is_categorical)

  @property
  def continuous_columns(self) -> np.ndarray:
    """The columns of a record (`feature_heads`) that hold the continuous features."""
    return self.head_starts[list(self.continuous_features)]

  @property
  def attribute_dim(self) -> int:
    return sum(h.dim for h in self.attribute_heads)

  @property
  def additional_dim(self) -> int:
    return sum(h.dim for h in self.additional_heads)

  @property
  def feature_dim(self) -> int:
    return sum(h.dim for h in self.feature_heads)

  def to_json(self) -> str:
    d = dataclasses.asdict(self)
    return json.dumps(d, indent=1)

  @classmethod
  def from_json(cls, text: str) -> "Schema":
    d = json.loads(text)
    d["attribute_vars"] = tuple(Variable.from_dict(v) for v in d["attribute_vars"])
    d["feature_vars"] = tuple(Variable.from_dict(v) for v in d["feature_vars"])
    d["min_max_view"] = tuple(map(tuple, d.get("min_max_view", ())))  # hashable: the model is a jit static
    d["level_view"] = tuple(map(tuple, d.get("level_view", ())))
    d["log_half_bounds"] = tuple(d.get("log_half_bounds", ()))
    d["step_scale"] = tuple(d.get("step_scale", ()))
    d["unit_step_scale"] = tuple(d.get("unit_step_scale", ()))
    d["floored"] = tuple(d.get("floored", ()))
    d["series_floored"] = tuple(d.get("series_floored", ()))
    return cls(**d)


@dataclasses.dataclass
class Encoded:
  attributes: np.ndarray
  additional_attributes: np.ndarray
  features: np.ndarray

  @property
  def num_samples(self) -> int:
    return int(self.features.shape[0])


# A continuous variable spans orders of magnitude (log1p=auto) when the central 98% of |x| (1st to 99th
# percentile) spans this many decades, counted in log10(1 + |x|) so that values below 1 never qualify.
HEAVY_TAIL_DECADES = 2.0


def heavy_tailed(values: np.ndarray) -> bool:
  """Whether values (a variable's, over valid steps) span orders of magnitude (HEAVY_TAIL_DECADES)."""
  if values.size == 0:
    return False
  low, high = np.quantile(np.abs(values.astype(np.float64)), [0.01, 0.99])
  return bool(np.log10(1 + high) - np.log10(1 + low) >= HEAVY_TAIL_DECADES)


def fit_schema(dataset: Dataset, normalization: str = ZERO_ONE, auto_normalize: bool = True,
               log1p: Iterable[str] = (), auto_log: bool = False, log_half_range: bool | str = False) -> Schema:
  """Global per-variable ranges (over valid steps only) of `dataset`; `log1p` names more variables to log.

  auto_log: also transform every continuous variable that is `heavy_tailed` in this data: log1p(x)
  when it is never negative, asinh(x) (signed, log-like in both tails) when it is.
  log_half_range: True, False, or "auto" (`auto_half_range`)."""
  dataset = dataset.validate()
  log1p = set(log1p)
  known = {v.name for v in dataset.feature_vars + dataset.attribute_vars}
  if log1p - known:
    raise DataError(f"{dataset.source}: log1p names unknown variables {sorted(log1p - known)}")
  valid = _valid_mask(dataset.lengths, dataset.max_length)

  def fit(var: Variable, values: np.ndarray) -> Variable:
    if var.is_categorical:
      return var
    var = dataclasses.replace(var, log1p=var.log1p or var.name in log1p)
    if auto_log and not (var.log1p or var.asinh) and heavy_tailed(values):
      var = dataclasses.replace(var, **{"log1p" if values.min() >= 0 else "asinh": True})
    if var.log1p and np.any(values < 0):
      raise DataError(f"{dataset.source}: variable {var.name!r} uses log1p but has negative values")
    t = _forward(var, values.astype(np.float64))
    return dataclasses.replace(var, low=float(t.min()), high=float(t.max()))

  features = tuple(fit(v, dataset.features[:, :, j][valid]) for j, v in enumerate(dataset.feature_vars))
  attributes = tuple(fit(v, dataset.attributes[:, j]) for j, v in enumerate(dataset.attribute_vars))
  schema = Schema(attributes, features, dataset.max_length, normalization, auto_normalize, int(dataset.lengths.min()),
                  log_half_range != "auto" and bool(log_half_range))
  return auto_half_range(dataset, schema)[0] if log_half_range == "auto" else schema


# data.log_half_range="auto" codes half-ranges on a log scale when some continuous feature's median
# per-series half-range codes below this linearly: the sigmoid's slope there is below 0.02 (1/12 of its
# slope at 0.5), and one overshoot towards 0 can leave the feature flat for good (issue 21: 24-day
# stock windows code near 0.006; the demo's, sines' and WWT's log1p-scaled series above 0.05).
NARROW_HALF_RANGE = 0.02


def _series_bounds(g: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[n, T] scaled values -> each series' (max, min) over its valid steps, widened by AUTO_NORM_EPS."""
  return (np.where(valid, g, -np.inf).max(axis=1) + AUTO_NORM_EPS,
          np.where(valid, g, np.inf).min(axis=1) - AUTO_NORM_EPS)


def auto_half_range(dataset: Dataset, schema: Schema) -> tuple[Schema, list[str]]:
  """data.log_half_range="auto": (the schema with the log code where `narrow_series` names a feature, the names)."""
  narrow = narrow_series(dataset, schema) if schema.auto_normalize else []
  return dataclasses.replace(schema, log_half_range=bool(narrow)), narrow


def narrow_series(dataset: Dataset, schema: Schema) -> list[str]:
  """The continuous features whose series each span a small share of the feature's range (median per-series
  half-range coding below NARROW_HALF_RANGE linearly), not because of a heavy tail: where most series sit
  near 0 and a few span decades (`heavy_tailed`, which data.log1p models), the log code made spreads and
  correlations worse (docs/results.md)."""
  valid = _valid_mask(dataset.lengths, dataset.max_length)
  names = []
  for j, halves in zip(schema.continuous_features, _half_ranges(dataset, schema).T):
    var, x = schema.feature_vars[j], dataset.features[:, :, j]
    if np.median(halves) < NARROW_HALF_RANGE and (var.log1p or var.asinh or not heavy_tailed(x[valid])):
      names.append(var.name)
  return names


def _half_ranges(dataset: Dataset, schema: Schema) -> np.ndarray:
  """[n, Kc] each series' half-range per continuous feature (widened by AUTO_NORM_EPS), in the schema's scaling."""
  valid = _valid_mask(dataset.lengths, dataset.max_length)
  bounds = [_series_bounds(_scale(schema.feature_vars[j], dataset.features[:, :, j], schema.normalization), valid)
            for j in schema.continuous_features]
  return np.array([(big - small) / 2 for big, small in bounds]).T.reshape(dataset.num_samples, -1)


def _forward(var: Variable, x: np.ndarray) -> np.ndarray:
  return np.log1p(x) if var.log1p else np.arcsinh(x) if var.asinh else x


def _valid_mask(lengths: np.ndarray, t: int) -> np.ndarray:
  return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


def _scale(var: Variable, x: np.ndarray, normalization: str) -> np.ndarray:
  """Original units -> [0,1] or [-1,1] by the variable's global range."""
  t = _forward(var, x.astype(np.float64))
  width = var.high - var.low
  u = (t - var.low) / width if width > 0 else t - var.low
  return u if normalization == ZERO_ONE else 2 * u - 1


def value_range(normalization: str) -> tuple[float, float]:
  """The model-space range of continuous values: [0, 1] or [-1, 1]."""
  return (0.0, 1.0) if normalization == ZERO_ONE else (-1.0, 1.0)


def half_range_bounds(dataset: Dataset, schema: Schema) -> tuple[float, float]:
  """The smallest and largest per-series half-range (widened by AUTO_NORM_EPS) over the continuous
  features, in the schema's scaling: the span of the log code (Schema.log_half_bounds)."""
  halves = _half_ranges(dataset, schema)
  if not halves.size:
    return AUTO_NORM_EPS, AUTO_NORM_EPS
  return float(halves.min()), float(halves.max())  # equal (no span): the caller keeps the fixed one


def _log_half_span(schema: Schema) -> tuple[float, float]:
  """(smallest half-range, ln(largest / smallest)) of the log code."""
  if schema.log_half_bounds:
    low, high = schema.log_half_bounds
  else:  # half the value range, widened as every series is, over AUTO_NORM_EPS
    bottom, top = value_range(schema.normalization)
    low, high = AUTO_NORM_EPS, (top - bottom) / 2 + AUTO_NORM_EPS
  return low, float(np.log(high / low))


def encode_half(half, schema: Schema):
  """Per-series half-ranges (at least AUTO_NORM_EPS) -> their code in [0, 1]: linear, or with
  schema.log_half_range ln(half / smallest) over ln(largest / smallest) (`_log_half_span`)."""
  if not schema.log_half_range:
    return half
  low, span = _log_half_span(schema)
  return np.clip(np.log(half / low) / span, 0.0, 1.0)


def decode_half(code, schema: Schema):
  """The inverse of `encode_half`, for numpy or jnp arrays."""
  if not schema.log_half_range:
    return code
  low, span = _log_half_span(schema)
  return low * float(np.exp(span)) ** code


def _unscale(var: Variable, y: np.ndarray, normalization: str) -> np.ndarray:
  y = y.astype(np.float64)
  u = y if normalization == ZERO_ONE else (y + 1) / 2
  width = var.high - var.low
  t = u * width + var.low if width > 0 else u + var.low
  return np.expm1(t) if var.log1p else np.sinh(t) if var.asinh else t


def clip_to_schema(dataset: Dataset, schema: Schema) -> tuple[Dataset, dict[str, int]]:
  """`dataset` with each continuous value clipped into the schema's range of its variable, and the
  number of series clipped per variable (none when the schema was fitted on this data). A schema from
  elsewhere (train.init_from: fitted on public data) may be narrower than the data; unclipped, such
  values would encode outside the range the generator's outputs can reach."""
  features, attributes, clipped = dataset.features.copy(), dataset.attributes.copy(), {}
  valid = _valid_mask(dataset.lengths, dataset.max_length)
  for values, variables, mask in ((features, schema.feature_vars, valid), (attributes, schema.attribute_vars, True)):
    for j, var in enumerate(variables):
      if var.is_categorical:
        continue
      u = _scale(var, values[..., j], ZERO_ONE)
      low, high = (u < -1e-6) & mask, (u > 1 + 1e-6) & mask  # not float round-off at the range's ends
      series = (low | high) if low.ndim == 1 else (low | high).any(axis=1)
      if series.any():
        clipped[var.name] = int(series.sum())
        ends = _unscale(var, np.array([0.0, 1.0]), ZERO_ONE)
        values[..., j] = np.where(low, ends[0], np.where(high, ends[1], values[..., j]))
  if not clipped:
    return dataset, clipped
  return dataclasses.replace(dataset, features=features, attributes=attributes), clipped


def _one_hot(codes: np.ndarray, k: int) -> np.ndarray:
  return np.eye(k, dtype=np.float32)[codes.astype(np.int64)]


def _check_compatible(dataset: Dataset, schema: Schema) -> None:
  src = dataset.source
  for role, got, want in (("feature", dataset.feature_vars, schema.feature_vars),
                          ("attribute", dataset.attribute_vars, schema.attribute_vars)):
    if [v.name for v in got] != [v.name for v in want]:
      raise DataError(f"{src}: {role} variables {[v.name for v in got]} do not match the schema's "
                      f"{[v.name for v in want]}")
    for g, w in zip(got, want):
      if g.kind != w.kind:
        raise DataError(f"{src}: {role} {g.name!r} is {g.kind} but the schema says {w.kind}")
      if g.is_categorical and g.categories != w.categories:
        unknown = sorted(set(g.categories) - set(w.categories))
        raise DataError(f"{src}: {role} {g.name!r} has categories {list(g.categories)}, the schema has "
                        f"{list(w.categories)}" + (f" (unknown: {unknown})" if unknown else ""))
  if dataset.max_length > schema.max_length:
    raise DataError(f"{src}: series of up to {dataset.max_length} steps are longer than the schema's "
                    f"T = {schema.max_length}")


def encode_attributes(attributes: np.ndarray, schema: Schema) -> np.ndarray:
  """[n, m] attribute values (codes for categorical) -> [n, A] model-space attributes."""
  cols = []
  for j, var in enumerate(schema.attribute_vars):
    x = attributes[:, j]
    cols.append(_one_hot(x, var.dim) if var.is_categorical
                else _scale(var, x, schema.normalization)[:, None].astype(np.float32))
  return np.concatenate(cols, axis=1) if cols else np.zeros((len(attributes), 0), np.float32)


def encode(dataset: Dataset, schema: Schema) -> Encoded:
  dataset = dataset.validate()
  _check_compatible(dataset, schema)
  n, t = dataset.num_samples, schema.max_length
  feats = np.zeros((n, t, dataset.features.shape[2]), np.float32)
  feats[:, :dataset.max_length] = dataset.features  # zero-pad to the schema's T
  valid = _valid_mask(dataset.lengths, t)

  additional, cols = [], []
  for j, var in enumerate(schema.feature_vars):
    x = feats[:, :, j]
    if var.is_categorical:
      cols.append(_one_hot(x, var.dim) * valid[..., None])
      continue
    g = _scale(var, x, schema.normalization)
    if schema.auto_normalize:
      big, small = _series_bounds(g, valid)
      additional += [(big + small) / 2, encode_half((big - small) / 2, schema)]
      g = (g - small[:, None]) / (big - small)[:, None]
      if schema.normalization == MINUS_ONE_ONE:
        g = 2 * g - 1
    cols.append((g * valid)[..., None].astype(np.float32))
  for j in schema.floored:
    cols.append(_one_hot(_at_floor(schema.feature_vars[j], feats[:, :, j]), 2) * valid[..., None])
  for j in schema.series_floored:  # [1, 0] leaves the floor, [0, 1] at it throughout
    throughout = (_at_floor(schema.feature_vars[j], feats[:, :, j]) | ~valid).all(axis=1)
    additional += list(_one_hot(throughout, 2).T)
  cols.append(lengths_to_flags(dataset.lengths, t))
  return Encoded(
      attributes=encode_attributes(dataset.attributes, schema),
      additional_attributes=(np.stack(additional, axis=1).astype(np.float32) if additional
                             else np.zeros((n, 0), np.float32)),
      features=np.concatenate(cols, axis=2))


# model.whiten_levels: the critics see the midranges m (one per continuous feature) as m U diag(g) U^T,
# where U and lambda are the eigenvectors and eigenvalues of their covariance over the training series and
# g = sqrt(VIEW_FLOOR * mean(lambda) / lambda) clipped to [1, MAX_VIEW_GAIN]: no direction of the levels
# counts for less than half the average one (std). The critics are 1-Lipschitz in their input (gradient
# penalty), so a direction in which real levels barely vary was worth little to them: the levels of a
# stock's prices lie within a few tenths of a percent of their range of each other, generated ones lay
# 3-19x further apart and a classifier told them from real ones (issue 21, docs/results.md). Half-ranges
# and wider directions are seen as generated; where no direction is narrow the map is the identity and
# left out (the paper's input); the cap keeps a constant direction finite. Applied to the half-ranges
# too, or raising each direction to the average, it made sines worse.
VIEW_FLOOR = 0.25
MAX_VIEW_GAIN = 1000 ** 0.5


def min_max_moments(additional: np.ndarray) -> np.ndarray:
  """[n, d] min/max blocks -> [d + 1, d + 1] sums of the outer products of (1, x): count, sums and
  cross products in one array, so that shares of the data can add theirs (data/shares.py)."""
  x = np.concatenate([np.ones((len(additional), 1)), np.asarray(additional, np.float64)], axis=1)
  return x.T @ x


def _narrow_directions(cov: np.ndarray):
  """A covariance -> (eigenvectors, their gains): a direction with eigenvalue lambda is magnified by
  sqrt(VIEW_FLOOR * mean(lambda) / lambda) clipped to [1, MAX_VIEW_GAIN]; None where none is narrow."""
  lam, u = np.linalg.eigh(cov)
  lam = np.maximum(lam, 0)  # rounding can leave a constant direction slightly negative
  if lam.mean() <= 0:
    return None
  with np.errstate(divide="ignore"):
    gain = np.clip(np.sqrt(VIEW_FLOOR * lam.mean() / lam), 1, MAX_VIEW_GAIN)
  return None if (gain == 1).all() else (u, gain)


def min_max_view(moments: np.ndarray) -> tuple[tuple[float, ...], ...]:
  """`min_max_moments` (summed over shares) -> Schema.min_max_view; () where no direction is narrow."""
  n = moments[0, 0]
  if moments.shape[0] < 2 or n < 2:
    return ()
  mean = moments[0, 1:] / n
  cov = (moments[1:, 1:] - n * np.outer(mean, mean)) / (n - 1)
  mids = np.arange(0, len(cov), 2)  # the block is (midrange, half-range) per feature: the levels only
  narrow = _narrow_directions(cov[np.ix_(mids, mids)])
  if narrow is None:
    return ()  # the paper's view
  u, gain = narrow
  view = np.eye(len(cov))
  view[np.ix_(mids, mids)] = (u * gain) @ u.T
  return tuple(map(tuple, view.tolist()))


def series_means(features, additional, schema: Schema):
  """[n, T, F] encoded records and [n, additional_dim] additional attributes (as generated, numpy or jnp) ->
  [n, Kc] each series' mean of each continuous feature over its kept records, in the model's scale of the
  data (what its midrange and half-range imply: the level of the series, not of its normalised shape)."""
  start, end = value_range(schema.normalization)
  kept = features[..., -2:].sum(-1)  # the generation flags: 0 past the end
  u = (features[..., schema.continuous_columns] * kept[..., None]).sum(1) / kept.sum(1).clip(1)[:, None]
  mid, half = additional[:, 0:schema.min_max_dim:2], decode_half(schema.half_codes(additional), schema)
  return mid + half * (2 * (u - start) / (end - start) - 1)


def level_moments(attributes: np.ndarray, means: np.ndarray) -> np.ndarray:
  """[n, A] encoded attributes and [n, Kc] `series_means` -> the sums of the outer products of
  (1, attributes, means), so that shares of the data can add theirs (data/shares.py)."""
  x = np.concatenate([np.ones((len(means), 1)), np.asarray(attributes, np.float64),
                      np.asarray(means, np.float64)], axis=1)
  return x.T @ x


def level_view(moments: np.ndarray, num_means: int) -> tuple[tuple[float, ...], ...]:
  """`level_moments` (summed over shares) -> Schema.level_view, the [Kc, Kc] map through which the auxiliary
  critic sees the series' means (model.aux_critic_levels); () where none is tied to another. The means'
  covariance left after a least-squares fit on the attributes (what is narrow within each kind of series:
  the critic sees the attributes), as correlations, its narrow directions magnified as `min_max_view`'s, in
  the means' own units, so that means that do not move together are seen as generated, whatever their
  spreads."""
  n, k = moments[0, 0], num_means
  if k < 2 or n < 2:
    return ()
  xx, xm, mm = moments[:-k, :-k], moments[:-k, -k:], moments[-k:, -k:]
  cov = (mm - xm.T @ np.linalg.pinv(xx) @ xm) / (n - 1)
  std = np.sqrt(np.maximum(np.diag(cov), 0))
  if (std <= 0).any():
    return ()  # a mean fixed by the attributes: nothing to standardise by
  narrow = _narrow_directions(cov / np.outer(std, std))
  if narrow is None:
    return ()
  u, gain = narrow
  view = (np.diag(1 / std) @ (u * gain) @ u.T) @ np.diag(std)  # rows: means as generated -> seen
  return tuple(map(tuple, view.tolist()))


# A feature is smooth, and the step critic judges it, where the root mean square of its second differences
# is below this share of its first: var(second) = 2 var(first) (1 - r), r the correlation of neighbouring
# steps, so below 1 each step mostly continues the last (r > 0.5). A random walk has sqrt(2), white noise
# sqrt(3), a sine over P records 2 sin(pi / P) (sines: 0.08; stock prices, MBA, the demo 1.4-1.7). On rough
# data the step critic damps what the feature critic gets right (docs/results.md), on smooth data it takes
# away the jitter.
SMOOTH_STEPS = 1.0


def step_moments(features: np.ndarray, schema: Schema, half: np.ndarray | None = None) -> np.ndarray:
  """[n, T, F] encoded features -> [4, Kc]: per continuous feature the sums of squared first and second
  differences between neighbouring kept records, and their counts (shares of the data add theirs); with
  `half` ([n, Kc] per-series half-ranges) a fifth row, the sums of squared first differences times them."""
  kept = features[..., -2:].sum(-1) > 0
  pairs = (kept[:, 1:] & kept[:, :-1])[..., None]
  triples = pairs[:, 1:] & pairs[:, :-1]
  x = np.asarray(features[..., schema.continuous_columns], np.float64)
  first = np.diff(x, axis=1) ** 2 * pairs
  rows = [first.sum((0, 1)), np.broadcast_to(pairs.sum(), x.shape[-1:]),
          (np.diff(x, 2, axis=1) ** 2 * triples).sum((0, 1)), np.broadcast_to(triples.sum(), x.shape[-1:])]
  if half is not None:
    rows.append((first * np.asarray(half, np.float64)[:, None, :] ** 2).sum((0, 1)))
  return np.stack(rows)


def step_scale(moments: np.ndarray) -> tuple[float, ...]:
  """`step_moments` (summed over shares) -> Schema.step_scale: the first differences' root mean square
  for a smooth feature, 0 for one that is not (or never moves, or has no three records in a row)."""
  first, second = (np.sqrt(moments[i] / np.maximum(moments[i + 1], 1)) for i in (0, 2))
  smooth = (moments[3] > 0) & (second < SMOOTH_STEPS * first)
  return tuple(float(r) if s else 0.0 for r, s in zip(first, smooth))


def unit_step_scale(moments: np.ndarray) -> tuple[float, ...]:
  """`step_moments` (summed over shares) -> Schema.unit_step_scale: the root mean square of the steps in the
  data's units where `step_scale` calls the feature smooth, else 0; () without half-ranges (no fifth row)."""
  if len(moments) < 5:
    return ()
  rms = np.sqrt(moments[4] / np.maximum(moments[1], 1))
  return tuple(float(r) if s > 0 and r > 0 else 0.0 for r, s in zip(rms, step_scale(moments)))


# model.floor_flags: a continuous feature whose training records sit at its minimum (the low end of its global
# range, within FLOOR_TOLERANCE of the range) in at least FLOOR_SHARE of them has a point mass there that a
# sigmoid or tanh output never produces: MBA's ping loss rate is 0 in 98% of its records, and its generated
# series were bumps with 4-38% of their records at their minimum (issue 21). Such a feature gets a two-way
# softmax per record, as the generation flags: at the floor or above it; decoding puts the records whose
# flag says so exactly at the floor.
FLOOR_SHARE = 0.1
FLOOR_TOLERANCE = 1e-6


def _at_floor(var: Variable, x: np.ndarray) -> np.ndarray:
  return _scale(var, x, ZERO_ONE) <= FLOOR_TOLERANCE


def floor_counts(dataset: Dataset, schema: Schema) -> np.ndarray:
  """[4, Kc] per continuous feature its valid records at the floor, all valid records, the series at the floor
  throughout, and all series (shares add theirs)."""
  valid = _valid_mask(dataset.lengths, dataset.max_length)
  at = [_at_floor(schema.feature_vars[j], dataset.features[:, :, j]) for j in schema.continuous_features]
  k = len(at)
  return np.array([[(a & valid).sum() for a in at], [valid.sum()] * k,
                   [(a | ~valid).all(axis=1).sum() for a in at], [dataset.num_samples] * k], np.float64).reshape(4, k)


def floored_features(counts: np.ndarray, schema: Schema, series: bool = False) -> tuple[int, ...]:
  """`floor_counts` (summed over shares) -> Schema.floored: the features at their floor in FLOOR_SHARE of the
  records, and in more than one (a minimum reached once is no point mass, however few the records); with
  `series`, Schema.series_floored: those of them at the floor throughout in FLOOR_SHARE of the series (and more
  than one)."""
  def point_mass(at, n):
    return at > 1 and at >= FLOOR_SHARE * n

  return tuple(j for j, at, n, at_series, num in zip(schema.continuous_features, *counts)
               if point_mass(at, n) and (not series or point_mass(at_series, num)))


def lengths_to_flags(lengths: np.ndarray, t: int) -> np.ndarray:
  """[n] lengths -> [n, T, 2] generation flags (Appendix B)."""
  steps = np.arange(t)[None, :]
  lengths = np.asarray(lengths)[:, None]
  return np.stack([steps < lengths - 1, steps == lengths - 1], axis=-1).astype(np.float32)


def flags_to_lengths(flags: np.ndarray) -> np.ndarray:
  """[n, T, 2] flags (one-hot or soft) -> [n] lengths: up to and including the first "end",
  or up to the first all-zero flag, or T."""
  flags = np.asarray(flags)
  n, t, _ = flags.shape
  go, end = flags[..., 0], flags[..., 1]
  ends = end > go
  stop = ends | (go + end <= 0)  # not flags.sum(-1): numpy reduces a strided size-2 axis slowly
  first = np.where(stop.any(axis=1), stop.argmax(axis=1), t)
  ends_here = np.take_along_axis(ends, np.minimum(first, t - 1)[:, None], 1)[:, 0]
  return np.clip(np.where((first < t) & ends_here, first + 1, first), 1, t).astype(np.int64)


def _split(x: np.ndarray, heads) -> list[np.ndarray]:
  bounds = np.cumsum([h.dim for h in heads])[:-1]
  return np.split(x, bounds, axis=-1)


def decode_attributes(attributes: np.ndarray, schema: Schema) -> np.ndarray:
  blocks = _split(np.asarray(attributes), schema.attribute_heads)
  cols = [b.argmax(-1).astype(np.float64) if v.is_categorical else _unscale(v, b[:, 0], schema.normalization)
          for v, b in zip(schema.attribute_vars, blocks)]
  return np.stack(cols, axis=1) if cols else np.zeros((len(attributes), 0))


def decode(encoded: Encoded, schema: Schema, source: str = "<generated>") -> Dataset:
  """Model-space arrays (one-hot or soft) -> original units and labels, truncated at each series' length."""
  feats = np.asarray(encoded.features)
  n, t, f = feats.shape
  if f != schema.feature_dim:
    raise DataError(f"{source}: features have {f} columns per record, the schema expects {schema.feature_dim}")
  blocks = _split(feats, schema.feature_heads)
  lengths = flags_to_lengths(blocks[-1])
  valid = _valid_mask(lengths, t)
  additional = np.asarray(encoded.additional_attributes, np.float64)
  out = np.zeros((n, t, len(schema.feature_vars)), np.float64)
  for c, (j, var) in enumerate((j, v) for j, v in enumerate(schema.feature_vars) if not v.is_categorical):
    y = blocks[j][..., 0].astype(np.float64)
    if schema.auto_normalize:
      x01 = y if schema.normalization == ZERO_ONE else (y + 1) / 2
      mid, half = additional[:, 2 * c:2 * c + 1], decode_half(additional[:, 2 * c + 1:2 * c + 2], schema)
      # A generated min (mid - half) can fall outside the global range, e.g. negative byte counts;
      # keep values within the range the data was scaled to, as without auto-normalisation.
      y = np.clip(x01 * (2 * half) + (mid - half), *value_range(schema.normalization))
    out[:, :, j] = _unscale(var, schema.put_at_floor(y, blocks, j), schema.normalization)
  for j, var in enumerate(schema.feature_vars):
    if var.is_categorical:
      out[:, :, j] = blocks[j].argmax(-1)
  out[~valid] = 0
  return Dataset(out.astype(np.float32), lengths, decode_attributes(encoded.attributes, schema),
                 schema.feature_vars, schema.attribute_vars, source)
