"""Pick a loader by `config.data.format`."""
from __future__ import annotations

import glob
import os

import ml_collections
import numpy as np

from dg_jax.data.schema import DataError, Dataset

FORMATS = ("auto", "demo", "npz", "dg", "wwt", "csv_long", "gcut")


def _names(text: str) -> list[str]:
  return [x.strip() for x in text.split(",") if x.strip()]


def resolve_format(fmt: str, path: str) -> str:
  """"auto": demo without a path, npz for *.npz, dg for a folder holding data_<split>.npz."""
  if fmt != "auto":
    return fmt
  if not path:
    return "demo"
  if path.endswith(".npz"):  # one file, or shards PATH-{shard}.npz
    return "npz"
  if os.path.isdir(path) and glob.glob(os.path.join(path, "data_*.npz")):
    return "dg"
  raise DataError(f"{path}: cannot tell its format; set config.data.format to one of {FORMATS[1:]}")


def load_dataset(dc: ml_collections.ConfigDict) -> Dataset:
  fmt = resolve_format(dc.format, dc.path)
  if fmt != "demo" and not dc.path:
    raise DataError(f"config.data.path is empty; data.format={fmt!r} needs a file or folder")
  if fmt == "demo":
    from dg_jax.data.demo import make_demo
    data = make_demo(dc.demo.num_samples, dc.demo.length, dc.demo.seed, dc.demo.variable_lengths)
  elif fmt == "npz":
    from dg_jax.data.npz_format import load_npz
    from dg_jax.data.shares import concat, is_sharded_path, shard_files
    data = concat([load_npz(f) for f in shard_files(dc.path)], dc.path) if is_sharded_path(dc.path) else load_npz(dc.path)
  elif fmt == "dg":
    from dg_jax.data.dg_format import load_dg_folder
    data = load_dg_folder(dc.path, split=dc.split, feature_names=_names(dc.feature_names) or None,
                          attribute_names=_names(dc.attribute_names) or None)
  elif fmt == "wwt":
    from dg_jax.data.wwt import load_wwt
    data = load_wwt(dc.path)
  elif fmt == "csv_long":
    from dg_jax.data.frames import read_csv_long
    data = read_csv_long(dc.path, id_column=dc.id_column, time_column=dc.time_column or None,
                         attribute_columns=_names(dc.attribute_columns), feature_columns=_names(dc.feature_columns))
  elif fmt == "gcut":
    from dg_jax.data.gcut import load_gcut
    usage, events = sorted(glob.glob(dc.path)), sorted(glob.glob(dc.events_path))
    if not usage or not events:
      raise DataError(f"gcut: no files match data.path={dc.path!r} or data.events_path={dc.events_path!r}")
    data, _ = load_gcut(usage, events)
  else:
    raise DataError(f"unknown data.format {fmt!r}; expected one of {FORMATS}")
  if dc.max_samples and data.num_samples > dc.max_samples:
    keep = np.sort(np.random.default_rng(0).choice(data.num_samples, dc.max_samples, replace=False))
    data = data.subset(keep)
  return data.validate()
