"""pandas DataFrames and CSV files <-> Dataset.

Long format: one row per record (id, optional time, attributes repeated per id, features).
Wide format: one row per series (optional id, attributes, one column per time step and feature; empty cells
at the end of a row mean the series ended there).

A column is categorical when its dtype is category/object/string/bool or it is named in `categorical`;
otherwise it must be numeric. Labels come from a category dtype's order, else from the sorted unique values
(numerically when they are all numbers, also numbers written as text), as strings.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

from absl import logging
import numpy as np
import pandas as pd

from dg_jax.data.schema import DataError, Dataset, Variable, categorical, continuous
from dg_jax.io_utils import atomic_path

FRAME = "DataFrame"


# ---------------------------------------------------------------------------------------------- columns

def _is_categorical_dtype(dtype) -> bool:
  return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(dtype)
          or pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype))


def _as_number(v):
  try:
    return float(v)
  except (TypeError, ValueError):
    return None


def _sorted_labels(values) -> list:
  """Sorted unique non-missing values: numerically if all are numbers (or numeric text), else as text."""
  uniq = list(pd.unique(values))
  nums = [_as_number(v) for v in uniq]
  if all(x is not None for x in nums):
    return [v for _, _, v in sorted(zip(nums, map(str, uniq), uniq))]
  return sorted(uniq, key=str)


def _encode(values: pd.Series, name: str, force_categorical: bool, source: str) -> tuple[Variable, np.ndarray]:
  """A column -> (variable, float64 values with NaN where missing; codes for categorical)."""
  if force_categorical or _is_categorical_dtype(values.dtype):
    if isinstance(values.dtype, pd.CategoricalDtype):
      cats = list(values.dtype.categories)
    else:
      cats = _sorted_labels(values.dropna())
    labels = [str(c) for c in cats]
    if len(set(labels)) != len(labels):
      raise DataError(f"{source}: column {name!r} has distinct values with the same text: {labels}")
    if not labels:
      raise DataError(f"{source}: categorical column {name!r} has no values")
    codes = pd.Categorical(values, categories=cats).codes.astype(np.float64)
    codes[codes < 0] = np.nan
    return categorical(name, labels), codes
  if not pd.api.types.is_numeric_dtype(values.dtype):
    raise DataError(f"{source}: column {name!r} has dtype {values.dtype}, which is neither numeric nor "
                    "categorical (name it in `categorical` to treat it as categories)")
  return continuous(name), values.to_numpy(np.float64, na_value=np.nan)


def _require(df: pd.DataFrame, columns, source: str) -> None:
  for c in columns:
    if c not in df.columns:
      raise DataError(f"{source}: missing column {c!r}")


def _decode(var: Variable, values: np.ndarray, missing: np.ndarray | None = None):
  """Codes -> pandas values with the variable's labels (a Categorical keeps their order)."""
  if not var.is_categorical:
    return values
  codes = values.astype(np.int64)
  if missing is not None:
    codes = np.where(missing, -1, codes)
  return pd.Categorical.from_codes(codes, categories=list(var.categories))


# -------------------------------------------------------------------------------------------- long format

def from_long_frame(df: pd.DataFrame, id_column, time_column=None, attribute_columns: Sequence = (),
                    feature_columns: Sequence | None = None, categorical: Sequence = (),
                    max_length: int | None = None, source: str = FRAME) -> Dataset:
  """One row per record -> Dataset; series in order of first appearance of their id.

  Records are sorted by `time_column` within each id (stably); feature_columns default (None or empty) to
  all other columns. T is the longest series, or `max_length`, in which case longer series keep their first
  `max_length` records.
  """
  categorical = set(categorical or ())
  attribute_columns = list(attribute_columns)
  keys = [id_column] + ([time_column] if time_column is not None else [])
  _require(df, keys + attribute_columns + list(feature_columns or []), source)
  if not feature_columns:  # None or empty: all other columns
    feature_columns = [c for c in df.columns if c not in keys and c not in attribute_columns]
  feature_columns = list(feature_columns)
  if not feature_columns:
    raise DataError(f"{source}: no feature columns")
  if len(df) == 0:
    raise DataError(f"{source}: no rows")

  ids, uniq = pd.factorize(df[id_column], sort=False)
  if np.any(ids < 0):
    raise DataError(f"{source}: id column {id_column!r} has missing values")
  if time_column is not None:
    times = pd.factorize(df[time_column], sort=True)[0]
    if np.any(times < 0):
      raise DataError(f"{source}: time column {time_column!r} has missing values")
    order = np.lexsort((times, ids))
  else:
    order = np.argsort(ids, kind="stable")

  n = len(uniq)
  counts = np.bincount(ids, minlength=n)
  t = int(max_length) if max_length is not None else int(counts.max())
  if t < 1:
    raise DataError(f"{source}: max_length must be at least 1, got {max_length}")
  if counts.max() > t:
    logging.info("%s: truncated %d of %d series to max_length=%d", source, int((counts > t).sum()), n, t)
  lengths = np.minimum(counts, t)
  sorted_ids = ids[order]
  pos = np.arange(len(order)) - (np.cumsum(counts) - counts)[sorted_ids]
  keep = pos < t

  first = order[np.r_[0, np.cumsum(counts)[:-1]]]  # first row of each series
  attr_vars, attrs = [], np.zeros((n, len(attribute_columns)))
  for j, col in enumerate(attribute_columns):
    varying = df[col].groupby(ids).nunique(dropna=False) > 1
    if varying.any():
      raise DataError(f"{source}: attribute column {col!r} is not constant within id {uniq[varying.idxmax()]!r}")
    var, values = _encode(df[col], str(col), col in categorical, source)
    if np.isnan(values).any():
      raise DataError(f"{source}: attribute column {col!r} has missing values")
    attr_vars.append(var)
    attrs[:, j] = values[first]

  feat_vars, feats = [], np.zeros((n, t, len(feature_columns)), np.float32)
  for j, col in enumerate(feature_columns):
    var, values = _encode(df[col], str(col), col in categorical, source)
    if np.isnan(values).any():
      row = int(np.flatnonzero(np.isnan(values))[0])
      raise DataError(f"{source}: feature column {col!r} has missing values (first at id {uniq[ids[row]]!r})")
    feat_vars.append(var)
    feats[sorted_ids[keep], pos[keep], j] = values[order][keep]
  return Dataset(feats, lengths, attrs, feat_vars, attr_vars, source=source).validate()


def to_long_frame(dataset: Dataset, id_column="id", time_column="step") -> pd.DataFrame:
  """Dataset -> one row per record: id 0..n-1, step 0..length-1, attributes, features (labels restored)."""
  ds = dataset.validate()
  names = [v.name for v in ds.attribute_vars + ds.feature_vars]
  keys = [id_column] + ([time_column] if time_column is not None else [])
  clash = [k for k in keys if k in names]
  if clash:
    raise DataError(f"{ds.source}: id/time column name {clash[0]!r} is also a variable name")
  sample = np.repeat(np.arange(ds.num_samples), ds.lengths)
  step = np.arange(len(sample)) - np.repeat(np.cumsum(ds.lengths) - ds.lengths, ds.lengths)
  cols = {id_column: sample}
  if time_column is not None:
    cols[time_column] = step
  for j, var in enumerate(ds.attribute_vars):
    cols[var.name] = _decode(var, ds.attributes[sample, j])
  for j, var in enumerate(ds.feature_vars):
    cols[var.name] = _decode(var, ds.features[sample, step, j])
  return pd.DataFrame(cols)


# -------------------------------------------------------------------------------------------- wide format

def from_wide_frame(df: pd.DataFrame, feature_columns: Sequence | Mapping[str, Sequence], id_column=None,
                    attribute_columns: Sequence = (), categorical: Sequence = (), feature_name: str = "value",
                    source: str = FRAME) -> Dataset:
  """One row per series -> Dataset.

  feature_columns: the per-step columns of a single feature (named `feature_name`), or a dict
  feature name -> per-step columns. Empty cells end a series; an empty cell followed by a value is an
  error. `categorical` may name attribute columns and feature names. `id_column` only labels errors.
  """
  categorical = set(categorical or ())
  if not isinstance(feature_columns, Mapping):
    feature_columns = {feature_name: list(feature_columns)}
  feature_columns = {str(k): list(v) for k, v in feature_columns.items()}
  attribute_columns = list(attribute_columns)
  steps = {len(v) for v in feature_columns.values()}
  if not feature_columns or steps == {0}:
    raise DataError(f"{source}: no feature columns")
  if len(steps) != 1:
    raise DataError(f"{source}: every feature needs the same number of step columns, got "
                    + ", ".join(f"{k}: {len(v)}" for k, v in feature_columns.items()))
  _require(df, ([id_column] if id_column is not None else []) + attribute_columns
           + [c for cols in feature_columns.values() for c in cols], source)
  n, t = len(df), steps.pop()
  if n == 0:
    raise DataError(f"{source}: no rows")
  row_name = (lambda i: f"id {df[id_column].iloc[i]!r}") if id_column is not None else (lambda i: f"row {i}")

  attr_vars, attrs = [], np.zeros((n, len(attribute_columns)))
  for j, col in enumerate(attribute_columns):
    var, values = _encode(df[col], str(col), col in categorical, source)
    if np.isnan(values).any():
      raise DataError(f"{source}: attribute column {col!r} is empty at {row_name(int(np.isnan(values).argmax()))}")
    attr_vars.append(var)
    attrs[:, j] = values

  feat_vars, feats, lengths = [], np.zeros((n, t, len(feature_columns)), np.float32), None
  for j, (name, cols) in enumerate(feature_columns.items()):
    stacked = pd.concat([df[c] for c in cols], ignore_index=True)  # step-major, so one set of labels
    var, values = _encode(stacked, name, name in categorical, source)
    values = values.reshape(t, n).T
    present = ~np.isnan(values)
    length = present.sum(axis=1)
    gap = present != (np.arange(t)[None, :] < length[:, None])
    if gap.any():
      i = int(np.flatnonzero(gap.any(axis=1))[0])
      s = int(np.flatnonzero(~present[i])[0])
      raise DataError(f"{source}: feature {name!r} column {cols[s]!r} is empty at {row_name(i)} but a later "
                      "step is not (only the end of a series may be empty)")
    if lengths is None:
      lengths = length
    elif np.any(length != lengths):
      i = int(np.flatnonzero(length != lengths)[0])
      raise DataError(f"{source}: feature {name!r} has {length[i]} steps at {row_name(i)} but "
                      f"{feat_vars[0].name!r} has {lengths[i]}")
    feat_vars.append(var)
    feats[:, :, j] = np.where(present, values, 0)
  if np.any(lengths == 0):
    raise DataError(f"{source}: {row_name(int(np.flatnonzero(lengths == 0)[0]))} has no feature values")
  return Dataset(feats, lengths, attrs, feat_vars, attr_vars, source=source).validate()


def wide_columns(dataset: Dataset, step_format: str = "{name}_{t}") -> dict[str, list[str]]:
  """Feature name -> its per-step column names in `to_wide_frame`."""
  return {v.name: [step_format.format(name=v.name, t=t) for t in range(dataset.max_length)]
          for v in dataset.feature_vars}


def to_wide_frame(dataset: Dataset, id_column=None, step_format: str = "{name}_{t}") -> pd.DataFrame:
  """Dataset -> one row per series: optional id, attributes, then `step_format` columns (empty after the end)."""
  ds = dataset.validate()
  missing = ~ds.valid_steps
  cols = {} if id_column is None else {id_column: np.arange(ds.num_samples)}
  for j, var in enumerate(ds.attribute_vars):
    cols[var.name] = _decode(var, ds.attributes[:, j])
  for j, (var, names) in enumerate(zip(ds.feature_vars, wide_columns(ds, step_format).values())):
    for t, col in enumerate(names):
      if col in cols:
        raise DataError(f"{ds.source}: wide column name {col!r} is used twice")
      values = ds.features[:, t, j]
      cols[col] = _decode(var, values, missing[:, t]) if var.is_categorical else np.where(
          missing[:, t], np.float32(np.nan), values)
  return pd.DataFrame(cols)


# ----------------------------------------------------------------------------------------------------- CSV

def _read_csv(path, str_columns, **kwargs) -> pd.DataFrame:
  """pd.read_csv with categorical columns kept as text; parser errors name the file."""
  path = os.fspath(path)
  try:
    header = pd.read_csv(path, nrows=0, **kwargs).columns
    dtype = {c: str for c in header if c in str_columns}
    return pd.read_csv(path, dtype=dtype, **kwargs)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot parse CSV ({e})") from None


def read_csv_long(path, id_column, time_column=None, attribute_columns: Sequence = (),
                  feature_columns: Sequence | None = None, categorical: Sequence = (),
                  max_length: int | None = None, **read_csv_kwargs) -> Dataset:
  """`from_long_frame` on a CSV file; columns named in `categorical` are read as text."""
  df = _read_csv(path, set(categorical or ()), **read_csv_kwargs)
  return from_long_frame(df, id_column, time_column, attribute_columns, feature_columns, categorical,
                         max_length, source=os.fspath(path))


def read_csv_wide(path, feature_columns: Sequence | Mapping[str, Sequence], id_column=None,
                  attribute_columns: Sequence = (), categorical: Sequence = (), feature_name: str = "value",
                  **read_csv_kwargs) -> Dataset:
  """`from_wide_frame` on a CSV file; categorical attributes and features are read as text."""
  categorical = set(categorical or ())
  cols = feature_columns if isinstance(feature_columns, Mapping) else {feature_name: feature_columns}
  text = categorical | {c for name, cs in cols.items() if name in categorical for c in cs}
  df = _read_csv(path, text, **read_csv_kwargs)
  return from_wide_frame(df, feature_columns, id_column, attribute_columns, categorical, feature_name,
                         source=os.fspath(path))


def write_csv_long(dataset: Dataset, path, id_column="id", time_column="step") -> None:
  """Writes `to_long_frame(dataset)` as CSV, atomically."""
  df = to_long_frame(dataset, id_column, time_column)
  with atomic_path(path, suffix=".csv") as tmp:
    df.to_csv(tmp, index=False)


def write_csv_wide(dataset: Dataset, path, id_column=None, step_format: str = "{name}_{t}") -> None:
  """Writes `to_wide_frame(dataset)` as CSV, atomically."""
  df = to_wide_frame(dataset, id_column, step_format)
  with atomic_path(path, suffix=".csv") as tmp:
    df.to_csv(tmp, index=False)
