"""The project's own npz format: what generation writes and training reads.

Arrays: features float32 [n, T, K] (original units, 0 after each end), lengths int [n],
attributes float [n, m] (codes for categorical columns), feature_types / attribute_types
(str: continuous|categorical); optional feature_names / attribute_names, attribute_labels_<j> /
feature_labels_<k> (labels of the codes) and feature_log1p / attribute_log1p (bool).
Loadable with np.load(path, allow_pickle=False).
"""
from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from dg_jax import io_utils
from dg_jax.data.schema import CATEGORICAL, KINDS, DataError, Dataset, Variable

REQUIRED = ("features", "lengths", "attributes", "feature_types", "attribute_types")


def save_npz(dataset: Dataset, path: str) -> None:
  dataset = dataset.validate()
  arrays = dict(features=dataset.features, lengths=dataset.lengths, attributes=dataset.attributes)
  for role, variables in (("feature", dataset.feature_vars), ("attribute", dataset.attribute_vars)):
    arrays[f"{role}_types"] = np.array([v.kind for v in variables], dtype=str)
    arrays[f"{role}_names"] = np.array([v.name for v in variables], dtype=str)
    arrays[f"{role}_log1p"] = np.array([v.log1p for v in variables], dtype=bool)
    arrays[f"{role}_asinh"] = np.array([v.asinh for v in variables], dtype=bool)
    for j, v in enumerate(variables):
      if v.is_categorical:
        arrays[f"{role}_labels_{j}"] = np.array(v.categories, dtype=str)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  io_utils.write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> Dataset:
  path = os.fspath(path)
  if not io_utils.exists(path):
    raise DataError(f"{path}: no such file")
  try:
    with np.load(io.BytesIO(io_utils.read_bytes(path)), allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated, not an npz
    raise DataError(f"{path}: not a readable npz file without pickles ({e})") from e
  missing = [k for k in REQUIRED if k not in arrays]
  if missing:
    raise DataError(f"{path}: missing arrays {missing} (have {sorted(arrays)})")
  features = arrays["features"]
  attributes = arrays["attributes"]
  if attributes.ndim == 1 and attributes.size == 0:
    attributes = attributes.reshape(len(features), 0)
  variables = {}
  for role, values in (("feature", features.reshape(-1, features.shape[-1]) if features.ndim == 3 else None),
                       ("attribute", attributes if attributes.ndim == 2 else None)):
    types = [str(t) for t in np.atleast_1d(arrays[f"{role}_types"])]
    names = [str(x) for x in arrays.get(f"{role}_names", [f"{role}_{j}" for j in range(len(types))])]
    log1p = arrays.get(f"{role}_log1p", np.zeros(len(types), bool))
    asinh = arrays.get(f"{role}_asinh", np.zeros(len(types), bool))
    if len(names) != len(types) or len(log1p) != len(types) or len(asinh) != len(types):
      raise DataError(f"{path}: {role}_names / {role}_log1p / {role}_asinh must have one entry per {role} "
                      f"({len(types)})")
    out = []
    for j, (kind, name) in enumerate(zip(types, names)):
      if kind not in KINDS:
        raise DataError(f"{path}: {role} {name!r} has type {kind!r}; expected one of {KINDS}")
      if kind == CATEGORICAL:
        labels = arrays.get(f"{role}_labels_{j}")
        if labels is None:  # unnamed codes: labels "0".."k-1" with k from the data
          col = values[:, j] if values is not None and j < values.shape[1] else np.zeros(1)
          finite = col[np.isfinite(col)]
          labels = [str(c) for c in range(int(finite.max()) + 1 if finite.size else 1)]
        out.append(Variable(name, kind, tuple(str(x) for x in labels)))
      else:
        out.append(Variable(name, kind, log1p=bool(log1p[j]), asinh=bool(asinh[j])))
    variables[role] = tuple(out)
  return Dataset(features, arrays["lengths"], attributes, variables["feature"], variables["attribute"],
                 source=path).validate()
