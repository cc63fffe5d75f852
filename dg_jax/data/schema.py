"""The data model: variables and datasets in the user's own units.

A dataset is n samples; each has m attributes (metadata) and a series of
T_i <= T records of K features (measurements). Categorical values are stored
as integer codes 0..k-1 whose labels live in `Variable.categories`.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dg_jax.failures import BadInput

CONTINUOUS = "continuous"
CATEGORICAL = "categorical"
KINDS = (CONTINUOUS, CATEGORICAL)


class DataError(BadInput):
  """Bad input data; the message names the source, the variable and the problem."""


@dataclasses.dataclass(frozen=True)
class Variable:
  """One attribute or feature.

  For categorical variables `categories` holds the label of each code. For
  continuous ones `log1p` models log1p(x) (heavy-tailed counts, x >= 0), `asinh`
  models asinh(x) (heavy-tailed values of both signs), and `low`/`high` are the
  global range of the (transformed) values, set by `encoding.fit_schema`.
  """
  name: str
  kind: str
  categories: tuple[str, ...] = ()
  log1p: bool = False
  asinh: bool = False
  low: float | None = None
  high: float | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise DataError(f"variable {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
    if self.kind == CATEGORICAL:
      if not self.categories:
        raise DataError(f"variable {self.name!r}: a categorical variable needs at least one category")
      if self.log1p or self.asinh:
        raise DataError(f"variable {self.name!r}: log1p and asinh apply to continuous variables only")
    if self.log1p and self.asinh:
      raise DataError(f"variable {self.name!r}: log1p or asinh, not both")
    object.__setattr__(self, "categories", tuple(str(c) for c in self.categories))

  @property
  def is_categorical(self) -> bool:
    return self.kind == CATEGORICAL

  @property
  def dim(self) -> int:
    """Width in model space: one-hot size, or 1."""
    return len(self.categories) if self.is_categorical else 1

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "Variable":
    d = dict(d)
    d["categories"] = tuple(d.get("categories", ()))
    return cls(**d)


def categorical(name: str, categories: Sequence) -> Variable:
  return Variable(name, CATEGORICAL, tuple(str(c) for c in categories))


def continuous(name: str, log1p: bool = False) -> Variable:
  return Variable(name, CONTINUOUS, log1p=log1p)


@dataclasses.dataclass
class Dataset:
  """Samples in original units.

  features:   float32 [n, T, K]; 0 after each series' end; categorical columns hold codes.
  lengths:    int64 [n], 1 <= lengths <= T.
  attributes: float64 [n, m]; categorical columns hold codes.
  """
  features: np.ndarray
  lengths: np.ndarray
  attributes: np.ndarray
  feature_vars: tuple[Variable, ...]
  attribute_vars: tuple[Variable, ...]
  source: str = "<in-memory dataset>"

  def __post_init__(self):
    self.feature_vars = tuple(self.feature_vars)
    self.attribute_vars = tuple(self.attribute_vars)

  @property
  def num_samples(self) -> int:
    return int(self.features.shape[0])

  @property
  def max_length(self) -> int:
    return int(self.features.shape[1])

  @property
  def valid_steps(self) -> np.ndarray:
    """[n, T] True on each series' records before its end."""
    return np.arange(self.max_length)[None, :] < np.asarray(self.lengths)[:, None]

  def subset(self, index) -> "Dataset":
    return dataclasses.replace(self, features=self.features[index], lengths=self.lengths[index],
                               attributes=self.attributes[index])

  def validate(self) -> "Dataset":
    """Checks shapes, finiteness, lengths, padding and category codes; returns self with canonical dtypes."""
    src = self.source
    f, a = np.asarray(self.features), np.asarray(self.attributes)
    lengths = np.asarray(self.lengths)
    if f.ndim != 3:
      raise DataError(f"{src}: features must have shape [n, T, K], got shape {f.shape}")
    n, t, k = f.shape
    if n == 0:
      raise DataError(f"{src}: the dataset is empty (0 samples)")
    if t == 0:
      raise DataError(f"{src}: features have no time steps (T = 0)")
    if a.ndim != 2 or a.shape[0] != n:
      raise DataError(f"{src}: attributes must have shape [{n}, m], got shape {a.shape}")
    if lengths.shape != (n,):
      raise DataError(f"{src}: lengths must have shape [{n}], got shape {lengths.shape}")
    if k != len(self.feature_vars):
      raise DataError(f"{src}: features have {k} columns but {len(self.feature_vars)} feature variables are declared")
    if a.shape[1] != len(self.attribute_vars):
      raise DataError(f"{src}: attributes have {a.shape[1]} columns but {len(self.attribute_vars)} "
                      "attribute variables are declared")
    names = [v.name for v in self.feature_vars + self.attribute_vars]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
      raise DataError(f"{src}: variable names must be unique, repeated: {dup}")
    if not np.issubdtype(lengths.dtype, np.integer):
      if not np.all(np.isfinite(lengths)) or np.any(lengths != np.round(lengths)):
        raise DataError(f"{src}: lengths must be integers")
    lengths = lengths.astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > t))
    if bad.size:
      raise DataError(f"{src}: lengths must lie in [1, T={t}]; sample {bad[0]} has length {lengths[bad[0]]} "
                      f"({bad.size} bad samples)")
    f = f.astype(np.float32)
    a = a.astype(np.float64)
    valid = np.arange(t)[None, :] < lengths[:, None]
    for j, var in enumerate(self.feature_vars):
      _check_values(f[:, :, j][valid], var, src, "feature")
      after = f[:, :, j][~valid]
      if after.size and np.any(after != 0):
        i = np.flatnonzero(np.any((f[:, :, j] != 0) & ~valid, axis=1))[0]
        raise DataError(f"{src}: feature {var.name!r} has non-zero values after the end of sample {i} "
                        f"(length {lengths[i]}); values after a series' end must be 0")
    for j, var in enumerate(self.attribute_vars):
      _check_values(a[:, j], var, src, "attribute")
    return dataclasses.replace(self, features=f, lengths=lengths, attributes=a)


def _check_values(x: np.ndarray, var: Variable, src: str, role: str) -> None:
  bad = ~np.isfinite(x)
  if bad.any():
    raise DataError(f"{src}: {role} {var.name!r} has {int(bad.sum())} NaN or infinite values")
  if var.is_categorical:
    k = len(var.categories)
    bad = (x != np.round(x)) | (x < 0) | (x >= k)
    if bad.any():
      raise DataError(f"{src}: {role} {var.name!r} has value {float(x[bad][0])} outside its {k} categories "
                      f"(codes 0..{k - 1})")
  elif var.log1p and np.any(x < 0):
    raise DataError(f"{src}: {role} {var.name!r} uses log1p but has negative values (min {x.min()})")
