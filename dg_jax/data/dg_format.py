"""The original DoppelGANger dataset folder format.

A folder holds `data_{split}.npz` (data_feature [n, T, Kdim], data_attribute [n, Adim], data_gen_flag [n, T],
optionally data_{feature,attribute}_{min,max}) and two pickled lists of the original code's `output.Output`
objects (data_feature_output.pkl, data_attribute_output.pkl) that say how the columns split into variables:
a DISCRETE output is a one-hot block of `dim` columns, a CONTINUOUS one is `dim` scaled columns.
"""
from __future__ import annotations

import copyreg
import enum
import io
import json
import os
import pickle
import struct
from typing import Sequence

import numpy as np

from dg_jax.data.schema import DataError, Dataset, Variable, categorical, continuous
from dg_jax.io_utils import atomic_path

FEATURE_PICKLE = "data_feature_output.pkl"
ATTRIBUTE_PICKLE = "data_attribute_output.pkl"
# Extra npz key written by save_dg_folder: our variable names and labels (the original code ignores it).
VARIABLES_KEY = "dg_jax_variables"

# Names from /work/shared/data/README.md, to pass as feature_names / attribute_names.
MBA_FEATURE_NAMES = ("traffic_byte_counter", "ping_loss_rate")
MBA_ATTRIBUTE_NAMES = ("ISP", "technology", "state")


# Stand-ins for the original code's `output` module, which pickles refer to by name.
class OutputType(enum.Enum):
  CONTINUOUS = "CONTINUOUS"
  DISCRETE = "DISCRETE"


class Normalization(enum.Enum):
  ZERO_ONE = "ZERO_ONE"
  MINUSONE_ONE = "MINUSONE_ONE"


class Output:
  """One output block of the original code: type_, dim, normalization, is_gen_flag."""

  def __init__(self, type_, dim, normalization=None, is_gen_flag=False):
    self.type_, self.dim, self.normalization, self.is_gen_flag = type_, dim, normalization, is_gen_flag

  def __repr__(self):
    return f"Output({self.type_}, dim={self.dim}, normalization={self.normalization}, is_gen_flag={self.is_gen_flag})"


# The only globals a schema pickle may name; Python 2 spellings first (its pickles say copy_reg/__builtin__).
_ALLOWED_GLOBALS = {
    ("output", "Output"): Output,
    ("output", "OutputType"): OutputType,
    ("output", "Normalization"): Normalization,
    ("copy_reg", "_reconstructor"): copyreg._reconstructor,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
}


class _SchemaUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the names in _ALLOWED_GLOBALS, so a pickle cannot run code."""

  def __init__(self, fh, path):
    super().__init__(fh)
    self._path = path

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise DataError(f"{self._path}: refused to load global {module}.{name} (only output.Output, "
                      "output.OutputType and output.Normalization are allowed)") from None


def read_outputs(path: str) -> list[Output]:
  """Reads a pickled list of `output.Output` objects safely and checks its fields."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as fh:
      data = fh.read()
  except OSError as e:
    raise DataError(f"{path}: cannot read schema pickle ({e.strerror})") from None
  try:
    outputs = _SchemaUnpickler(io.BytesIO(data), path).load()
  except DataError:
    raise
  except Exception as e:  # a corrupt pickle can fail in many ways
    raise DataError(f"{path}: not a valid output pickle ({type(e).__name__}: {e})") from None
  if not isinstance(outputs, list):
    raise DataError(f"{path}: expected a list of output.Output, got {type(outputs).__name__}")
  for i, o in enumerate(outputs):
    where = f"{path}: output {i}"
    if not isinstance(o, Output):
      raise DataError(f"{where} is a {type(o).__name__}, not output.Output")
    fields = vars(o)
    missing = [f for f in ("type_", "dim") if f not in fields]
    if missing:
      raise DataError(f"{where} lacks field(s) {missing}")
    o.normalization, o.is_gen_flag = fields.get("normalization"), fields.get("is_gen_flag", False)
    if not isinstance(o.type_, OutputType):
      raise DataError(f"{where}: type_ must be an OutputType, got {o.type_!r}")
    if isinstance(o.dim, bool) or not isinstance(o.dim, int) or o.dim < 1:
      raise DataError(f"{where}: dim must be a positive integer, got {o.dim!r}")
    if o.normalization is not None and not isinstance(o.normalization, Normalization):
      raise DataError(f"{where}: normalization must be a Normalization or None, got {o.normalization!r}")
    if o.type_ == OutputType.CONTINUOUS and o.normalization is None:
      raise DataError(f"{where}: a CONTINUOUS output needs a normalization (ZERO_ONE or MINUSONE_ONE)")
    if o.is_gen_flag:
      # The original code appends the generation flag itself; it is never part of data_feature.
      raise DataError(f"{where} is a generation flag; data_gen_flag holds it, not the schema pickles")
  return outputs


def write_outputs(outputs: Sequence[Output], path: str) -> None:
  """Writes a protocol-2 pickle that the original code (Python 2 or 3, module `output`) can load."""
  with atomic_path(path) as tmp, open(tmp, "wb") as fh:
    fh.write(_dump_outputs(outputs))


def _dump_outputs(outputs: Sequence[Output]) -> bytes:
  # Written opcode by opcode (as Python 2 would) because pickle can only name classes that are importable
  # under their own module; ours must be named `output.*`.
  def text(s):  # SHORT_BINSTRING: a Python 2 str
    b = s.encode("ascii")
    return b"U" + bytes([len(b)]) + b

  def member(cls_name, value):  # output.<cls_name>(value), the way Enum pickles itself
    return b"coutput\n" + cls_name.encode() + b"\n" + text(value) + b"\x85R"

  out = [b"\x80\x02]("]  # PROTO 2, EMPTY_LIST, MARK
  for o in outputs:
    norm = b"N" if o.normalization is None else member("Normalization", o.normalization.value)
    out += [b"coutput\nOutput\n)\x81}(",  # GLOBAL, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK
            text("dim"), b"J", struct.pack("<i", o.dim),
            text("type_"), member("OutputType", o.type_.value),
            text("is_gen_flag"), b"\x88" if o.is_gen_flag else b"\x89",
            text("normalization"), norm,
            b"ub"]  # SETITEMS, BUILD
  out.append(b"e.")  # APPENDS, STOP
  return b"".join(out)


def _variables(outputs, prefix, names, path):
  """Variables of an output list: (variable, first column, width, normalization) per variable."""
  cols = []
  offset = 0
  for o in outputs:
    if o.type_ == OutputType.DISCRETE:
      cols.append((o.dim, offset, o.dim, None))
      offset += o.dim
    else:  # a continuous block of dim columns is dim variables
      for _ in range(o.dim):
        cols.append((None, offset, 1, o.normalization))
        offset += 1
  if names is None:
    names = [f"{prefix}_{i}" for i in range(len(cols))]
  names = [str(x) for x in names]
  if len(names) != len(cols):
    raise DataError(f"{path}: got {len(names)} {prefix} names for {len(cols)} {prefix} variables")
  out = []
  for name, (k, off, width, norm) in zip(names, cols):
    var = continuous(name) if k is None else categorical(name, [str(c) for c in range(k)])
    out.append((var, off, width, norm))
  return out, offset


def load_dg_schema(path: str, feature_names: Sequence[str] | None = None,
                   attribute_names: Sequence[str] | None = None) -> tuple[tuple[Variable, ...], tuple[Variable, ...]]:
  """(feature_vars, attribute_vars) from a folder's two schema pickles."""
  fvars, _ = _variables(read_outputs(os.path.join(path, FEATURE_PICKLE)), "feature", feature_names,
                        os.path.join(path, FEATURE_PICKLE))
  avars, _ = _variables(read_outputs(os.path.join(path, ATTRIBUTE_PICKLE)), "attribute", attribute_names,
                        os.path.join(path, ATTRIBUTE_PICKLE))
  return tuple(v for v, *_ in fvars), tuple(v for v, *_ in avars)


def load_dg_folder(path: str, split: str = "train", feature_names: Sequence[str] | None = None,
                   attribute_names: Sequence[str] | None = None) -> Dataset:
  """Loads `data_{split}.npz` of a DoppelGANger folder into original units.

  Continuous columns are mapped back with data_{feature,attribute}_{min,max} when present (else they stay
  in [0, 1] / [-1, 1]) and rounded to float32; one-hot blocks become codes with labels "0".."k-1". Names are
  feature_i / attribute_i unless given here or stored by `save_dg_folder`.
  """
  path = os.fspath(path)
  npz = os.path.join(path, f"data_{split}.npz")
  fpkl, apkl = os.path.join(path, FEATURE_PICKLE), os.path.join(path, ATTRIBUTE_PICKLE)
  fvars, kdim = _variables(read_outputs(fpkl), "feature", feature_names, fpkl)
  avars, adim = _variables(read_outputs(apkl), "attribute", attribute_names, apkl)
  try:
    with np.load(npz, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except OSError as e:
    raise DataError(f"{npz}: cannot read ({e})") from None
  except ValueError as e:  # object arrays, corrupt archive
    raise DataError(f"{npz}: cannot read ({e})") from None
  for key in ("data_feature", "data_attribute", "data_gen_flag"):
    if key not in arrays:
      raise DataError(f"{npz}: missing array {key!r}")
  f, a, flag = arrays["data_feature"], arrays["data_attribute"], arrays["data_gen_flag"]
  if f.ndim != 3 or f.shape[2] != kdim:
    raise DataError(f"{npz}: data_feature must have shape [n, T, {kdim}] per {FEATURE_PICKLE}, got {f.shape}")
  n, t, _ = f.shape
  if a.shape != (n, adim):
    raise DataError(f"{npz}: data_attribute must have shape [{n}, {adim}] per {ATTRIBUTE_PICKLE}, got {a.shape}")
  if flag.shape != (n, t):
    raise DataError(f"{npz}: data_gen_flag must have shape [{n}, {t}], got {flag.shape}")

  # Lengths: the gen flag must be a run of ones then zeros.
  lengths = (flag == 1).sum(axis=1)
  valid = np.arange(t)[None, :] < lengths[:, None]
  bad = np.flatnonzero(np.any(flag != valid, axis=1))
  if bad.size:
    raise DataError(f"{npz}: data_gen_flag row {bad[0]} is not a run of ones followed by zeros "
                    f"({bad.size} bad rows)")

  stored = _stored_variables(arrays, npz, [v for v, *_ in fvars], [v for v, *_ in avars])
  if stored is not None and feature_names is None:
    fvars = [(s, *rest) for s, (_, *rest) in zip(stored[0], fvars)]
  if stored is not None and attribute_names is None:
    avars = [(s, *rest) for s, (_, *rest) in zip(stored[1], avars)]

  # The format is float32 throughout, so continuous attributes are rounded to float32 as well; this also
  # makes load -> save -> load exact.
  features = _decode(f, valid, fvars, _scaling(arrays, "data_feature", kdim, fvars, npz), npz, "feature")
  attributes = _decode(a[:, None, :], np.ones((n, 1), bool), avars,
                       _scaling(arrays, "data_attribute", adim, avars, npz), npz, "attribute")[:, 0, :]
  ds = Dataset(features.astype(np.float32), lengths, attributes.astype(np.float32), [v for v, *_ in fvars],
               [v for v, *_ in avars], source=npz)
  return ds.validate()


def _stored_variables(arrays, npz, fvars, avars):
  """Our own variables saved by save_dg_folder, if present and consistent with the pickles."""
  if VARIABLES_KEY not in arrays:
    return None
  try:
    d = json.loads(str(arrays[VARIABLES_KEY]))
    stored = ([Variable.from_dict(v) for v in d["features"]], [Variable.from_dict(v) for v in d["attributes"]])
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f"{npz}: cannot parse {VARIABLES_KEY!r} ({e})") from None
  for got, want in zip(stored, (fvars, avars)):
    if [(v.kind, v.dim) for v in got] != [(v.kind, v.dim) for v in want]:
      raise DataError(f"{npz}: {VARIABLES_KEY!r} does not match the schema pickles")
  return stored


def _scaling(arrays, prefix, width, cols, npz):
  """Per-variable (min, max) from {prefix}_min/_max, or None when absent."""
  lo, hi = arrays.get(prefix + "_min"), arrays.get(prefix + "_max")
  if lo is None and hi is None:
    return None
  if lo is None or hi is None:
    raise DataError(f"{npz}: has only one of {prefix}_min / {prefix}_max")
  n_cont = sum(norm is not None for *_, norm in cols)
  lo, hi = np.asarray(lo, np.float64).ravel(), np.asarray(hi, np.float64).ravel()
  if lo.shape != hi.shape or lo.size not in (width, n_cont):
    raise DataError(f"{npz}: {prefix}_min/_max must have {width} entries (one per column) or {n_cont} "
                    f"(one per continuous variable), got {lo.size} and {hi.size}")
  out, j = [], 0
  for _, off, _, norm in cols:
    if norm is None:
      out.append(None)
      continue
    i = off if lo.size == width else j  # indexed by column or by continuous variable
    out.append((lo[i], hi[i]))
    j += 1
  return out


def _decode(x, valid, cols, scaling, npz, role):
  """[n, T, dim] model-space blocks -> [n, T, len(cols)] values; 0 where not valid."""
  n, t, _ = x.shape
  out = np.zeros((n, t, len(cols)), np.float64)
  for j, (var, off, width, norm) in enumerate(cols):
    block = np.asarray(x[:, :, off:off + width], np.float64)
    after = block[~valid]
    if after.size and np.any(after != 0):
      i = np.flatnonzero(np.any(np.any(block != 0, axis=2) & ~valid, axis=1))[0]
      raise DataError(f"{npz}: {role} {var.name!r} has non-zero values after the end of sample {i}")
    if var.is_categorical:
      ok = np.all((block == 0) | (block == 1), axis=2) & (block.sum(axis=2) == 1)
      bad = valid & ~ok
      if bad.any():
        i, s = np.argwhere(bad)[0]
        raise DataError(f"{npz}: {role} {var.name!r} is not one-hot at sample {i}"
                        + (f", step {s}" if role == "feature" else "") + f" (got {block[i, s].tolist()})")
      out[:, :, j] = block.argmax(axis=2)
    else:
      v = block[:, :, 0]
      if scaling is not None:
        lo, hi = scaling[j]
        if norm == Normalization.MINUSONE_ONE:
          v = (v + 1) / 2
        v = v * (hi - lo) + lo
      out[:, :, j] = v
  out[~valid] = 0
  return out


def save_dg_folder(dataset: Dataset, path: str, split: str = "train") -> None:
  """Writes `dataset` as a DoppelGANger folder: one-hot blocks, continuous columns scaled to [0, 1].

  data_{feature,attribute}_{min,max} hold the scaling (one entry per column; 0/1 for one-hot columns).
  Scaled values are stored as float64 so that loading gives back float32 values exactly (continuous
  attributes come back rounded to float32). Our names and labels go into an extra npz array that the
  original code ignores.
  """
  ds = dataset.validate()
  path = os.fspath(path)
  n, t, _ = ds.features.shape
  valid = np.arange(t)[None, :] < ds.lengths[:, None]
  f, flo, fhi, fout = _encode(ds.features, valid, ds.feature_vars)
  a, alo, ahi, aout = _encode(ds.attributes[:, None, :], np.ones((n, 1), bool), ds.attribute_vars)
  variables = json.dumps({"features": [v.to_dict() for v in ds.feature_vars],
                          "attributes": [v.to_dict() for v in ds.attribute_vars]})
  os.makedirs(path, exist_ok=True)
  with atomic_path(os.path.join(path, f"data_{split}.npz"), suffix=".npz") as tmp:
    with open(tmp, "wb") as fh:  # a file object stops np.savez from appending ".npz" to the temp name
      np.savez(fh, data_feature=f, data_attribute=a[:, 0, :], data_gen_flag=valid.astype(np.float64),
               data_feature_min=flo.astype(np.float32), data_feature_max=fhi.astype(np.float32),
               data_attribute_min=alo, data_attribute_max=ahi, **{VARIABLES_KEY: np.array(variables)})
  write_outputs(fout, os.path.join(path, FEATURE_PICKLE))
  write_outputs(aout, os.path.join(path, ATTRIBUTE_PICKLE))


def _encode(x, valid, variables):
  """[n, T, K] values -> ([n, T, dim] model space, column mins, column maxes, outputs)."""
  blocks, lo, hi, outputs = [], [], [], []
  for j, var in enumerate(variables):
    v = x[:, :, j].astype(np.float64)
    if var.is_categorical:
      k = len(var.categories)
      onehot = np.eye(k)[v.astype(np.int64)] * valid[:, :, None]
      blocks.append(onehot)
      lo += [0.0] * k
      hi += [1.0] * k
      outputs.append(Output(OutputType.DISCRETE, k))
    else:
      mn, mx = v[valid].min(), v[valid].max()
      scaled = (v - mn) / (mx - mn) if mx > mn else np.zeros_like(v)  # a constant maps to 0
      blocks.append((scaled * valid)[:, :, None])
      lo.append(mn)
      hi.append(mx)
      outputs.append(Output(OutputType.CONTINUOUS, 1, Normalization.ZERO_ONE))
  n, t = valid.shape
  data = np.concatenate(blocks, axis=2) if blocks else np.zeros((n, t, 0))
  return data, np.array(lo, np.float64), np.array(hi, np.float64), outputs
