"""The original DoppelGANger folder format: the real MBA / GCUT schema files, round trips and bad input."""
import enum
import os
import pickle
import pickletools
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dg_jax.data import dg_format
from dg_jax.data.dg_format import (Normalization, Output, OutputType, load_dg_folder, load_dg_schema, read_outputs,
                                   save_dg_folder, write_outputs)
from dg_jax.data.schema import DataError, Dataset, categorical, continuous

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real(name):
  if not (DATA / name).is_dir():
    pytest.skip(f"real data not found at {DATA / name}")
  return DATA / name


# --------------------------------------------------------------------------------------------- real data

def test_mba_shapes_and_original_units():
  path = real("mba")
  ds = load_dg_folder(path)
  assert ds.features.shape == (600, 56, 2) and ds.attributes.shape == (600, 3)
  assert [v.dim for v in ds.attribute_vars] == [15, 5, 53]
  assert ds.attribute_vars[1].categories == tuple(str(i) for i in range(5))
  assert all(not v.is_categorical for v in ds.feature_vars)
  assert np.all(ds.lengths == 56)
  with np.load(path / "data_train.npz") as z:
    lo, hi = z["data_feature_min"].astype(np.float64), z["data_feature_max"].astype(np.float64)
    expected = (z["data_feature"] * (hi - lo) + lo).astype(np.float32)
    codes = [z["data_attribute"][:, a:b].argmax(1) for a, b in [(0, 15), (15, 20), (20, 73)]]
  np.testing.assert_array_equal(ds.features, expected)
  np.testing.assert_array_equal(ds.attributes, np.stack(codes, 1))
  assert ds.features[..., 0].min() > 1e6  # byte counters, not [0, 1]
  assert ds.source == str(path / "data_train.npz")


def test_mba_test_split_and_names():
  ds = load_dg_folder(real("mba"), split="test", feature_names=dg_format.MBA_FEATURE_NAMES,
                      attribute_names=dg_format.MBA_ATTRIBUTE_NAMES)
  assert ds.num_samples == 139
  assert [v.name for v in ds.attribute_vars] == ["ISP", "technology", "state"]
  assert int((ds.attributes[:, 1] == 3).sum()) == 137  # README: the test split is not i.i.d.


def test_gcut_schema():
  fvars, avars = load_dg_schema(real("gcut_schema"))
  assert len(fvars) == 9 and all(not v.is_categorical for v in fvars)
  assert len(avars) == 1 and avars[0].categories == ("0", "1", "2", "3")


def test_mba_round_trip_is_exact(tmp_path):
  ds = load_dg_folder(real("mba"))
  save_dg_folder(ds, tmp_path)
  again = load_dg_folder(tmp_path)
  np.testing.assert_array_equal(again.features, ds.features)
  np.testing.assert_array_equal(again.attributes, ds.attributes)
  np.testing.assert_array_equal(again.lengths, ds.lengths)
  assert again.feature_vars == ds.feature_vars and again.attribute_vars == ds.attribute_vars


# ------------------------------------------------------------------------------------------- round trips

def small_dataset():
  rng = np.random.default_rng(0)
  n, t = 7, 5
  lengths = np.array([5, 1, 3, 5, 2, 4, 1])
  valid = np.arange(t)[None, :] < lengths[:, None]
  f = np.stack([rng.normal(1e3, 50, (n, t)), rng.integers(0, 3, (n, t)), rng.uniform(-1e-3, 2e-3, (n, t))], -1)
  f = (f * valid[:, :, None]).astype(np.float32)
  a = np.stack([rng.integers(0, 4, n), rng.normal(0, 1e6, n), np.full(n, 2.5)], -1)
  return Dataset(f, lengths, a, [continuous("bw", log1p=True), categorical("proto", ["tcp", "udp", "quic"]),
                                 continuous("delta")],
                 [categorical("isp", "abcd"), continuous("offset"), continuous("constant")]).validate()


def test_round_trip_mixed_dataset(tmp_path):
  ds = small_dataset()
  save_dg_folder(ds, tmp_path, split="test")
  again = load_dg_folder(tmp_path, split="test")
  # the format is float32: continuous attributes come back rounded, and stay put from then on
  np.testing.assert_array_equal(again.attributes, ds.attributes.astype(np.float32))
  ds = again
  save_dg_folder(ds, tmp_path / "2", split="test")
  again = load_dg_folder(tmp_path / "2", split="test")
  for k in ("features", "attributes", "lengths"):
    np.testing.assert_array_equal(getattr(again, k), getattr(ds, k))
  assert again.feature_vars == ds.feature_vars and again.attribute_vars == ds.attribute_vars
  with np.load(tmp_path / "2" / "data_test.npz") as z:
    assert z["data_feature"].shape == (7, 5, 5)  # bw, proto one-hot (3), delta
    assert z["data_attribute"].shape == (7, 6)
    assert z["data_feature"][:, :, [0, 4]].min() >= 0 and z["data_feature"][:, :, [0, 4]].max() <= 1
    np.testing.assert_array_equal(z["data_gen_flag"].sum(1), ds.lengths)


def test_saved_names_yield_to_explicit_names(tmp_path):
  save_dg_folder(small_dataset(), tmp_path)
  ds = load_dg_folder(tmp_path, feature_names=["x", "y", "z"])
  assert [v.name for v in ds.feature_vars] == ["x", "y", "z"]
  assert ds.feature_vars[1].categories == ("0", "1", "2")
  assert [v.name for v in ds.attribute_vars] == ["isp", "offset", "constant"]


def original_output_module():
  """The original code's output.py, as the original code would import it."""
  mod = types.ModuleType("output")

  class OutputType(enum.Enum):
    CONTINUOUS = "CONTINUOUS"
    DISCRETE = "DISCRETE"

  class Normalization(enum.Enum):
    ZERO_ONE = "ZERO_ONE"
    MINUSONE_ONE = "MINUSONE_ONE"

  class Output(object):
    def __init__(self, type_, dim, normalization=None, is_gen_flag=False):
      self.type_, self.dim, self.normalization, self.is_gen_flag = type_, dim, normalization, is_gen_flag

  for cls in (OutputType, Normalization, Output):
    cls.__module__, cls.__qualname__ = "output", cls.__name__
    setattr(mod, cls.__name__, cls)
  return mod


def test_saved_pickles_load_in_the_original_code(tmp_path, monkeypatch):
  save_dg_folder(small_dataset(), tmp_path)
  mod = original_output_module()
  monkeypatch.setitem(sys.modules, "output", mod)
  with open(tmp_path / "data_feature_output.pkl", "rb") as fh:
    outs = pickle.load(fh)
  assert [(o.type_, o.dim, o.normalization, o.is_gen_flag) for o in outs] == [
      (mod.OutputType.CONTINUOUS, 1, mod.Normalization.ZERO_ONE, False),
      (mod.OutputType.DISCRETE, 3, None, False),
      (mod.OutputType.CONTINUOUS, 1, mod.Normalization.ZERO_ONE, False)]
  # and pickles the original code writes load here
  (tmp_path / "orig.pkl").write_bytes(pickle.dumps(outs, protocol=0))
  assert [(o.type_, o.dim) for o in read_outputs(tmp_path / "orig.pkl")] == [
      (OutputType.CONTINUOUS, 1), (OutputType.DISCRETE, 3), (OutputType.CONTINUOUS, 1)]


def test_writer_reproduces_real_schema_pickles(tmp_path):
  for name in ("data_feature_output.pkl", "data_attribute_output.pkl"):
    original = read_outputs(real("gcut_schema") / name)
    write_outputs(original, tmp_path / name)
    fields = lambda outs: [(o.type_, o.dim, o.normalization, o.is_gen_flag) for o in outs]
    assert fields(read_outputs(tmp_path / name)) == fields(original)
    ops = list(pickletools.genops((tmp_path / name).read_bytes()))
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} <= {"output Output", "output OutputType",
                                                                  "output Normalization"}


# ------------------------------------------------------------------------------------------- bad input

def arrays():
  """A 3-sample, 4-step folder's arrays; sample 2 has length 2."""
  feature = np.zeros((3, 4, 3))
  feature[:, :, 0] = 0.5
  feature[:, :, 1] = 1
  feature[2, 2:] = 0
  attribute = np.array([[1, 0, 0, 0.25], [0, 1, 0, 0.5], [0, 0, 1, 1.0]])
  flag = np.ones((3, 4))
  flag[2, 2:] = 0
  return dict(data_feature=feature, data_attribute=attribute, data_gen_flag=flag)


def make_folder(path, edit=None, **extra):
  """Features [continuous, discrete(2)], attributes [discrete(3), continuous MINUSONE_ONE]."""
  path.mkdir(exist_ok=True)
  a = arrays()
  if edit:
    edit(a)
  np.savez(path / "data_train.npz", **a, **extra)
  write_outputs([Output(OutputType.CONTINUOUS, 1, Normalization.ZERO_ONE), Output(OutputType.DISCRETE, 2)],
                path / "data_feature_output.pkl")
  write_outputs([Output(OutputType.DISCRETE, 3), Output(OutputType.CONTINUOUS, 1, Normalization.MINUSONE_ONE)],
                path / "data_attribute_output.pkl")
  return path


def test_small_folder_without_scaling(tmp_path):
  ds = load_dg_folder(make_folder(tmp_path / "d"))
  assert ds.lengths.tolist() == [4, 4, 2]
  assert ds.features[0, :, 0].tolist() == [0.5] * 4 and ds.features[2, 2:].tolist() == [[0, 0], [0, 0]]
  assert ds.attributes.tolist() == [[0, 0.25], [1, 0.5], [2, 1.0]]


def test_scaling_per_column_or_per_continuous_variable(tmp_path):
  # Attribute 1 is MINUSONE_ONE: (x + 1) / 2 * (max - min) + min.
  ds = load_dg_folder(make_folder(tmp_path / "a", data_attribute_min=np.array([0, 0, 0, 10.]),
                                  data_attribute_max=np.array([1, 1, 1, 20.]),
                                  data_feature_min=np.array([-4.]), data_feature_max=np.array([4.])))
  np.testing.assert_allclose(ds.attributes[:, 1], [16.25, 17.5, 20])
  assert ds.features[0, 0, 0] == 0 and ds.features[2, 3, 0] == 0


def setitem(key, index, value):
  def edit(a):
    a[key][index] = value
  return edit


@pytest.mark.parametrize("edit, pattern", [
    (setitem("data_attribute", (1, 2), 1), r"data_train\.npz: attribute 'attribute_0' is not one-hot at sample 1 "),
    (setitem("data_feature", (0, 3, 2), 1), r"data_train\.npz: feature 'feature_1' is not one-hot at sample 0, step 3"),
    (setitem("data_feature", (1, 1, 1), 0.5),
     r"data_train\.npz: feature 'feature_1' is not one-hot at sample 1, step 1"),
    (setitem("data_gen_flag", (1, 1), 0), r"data_train\.npz: data_gen_flag row 1 is not a run of ones"),
    (setitem("data_gen_flag", (0, 0), 2), r"data_train\.npz: data_gen_flag row 0 is not a run of ones"),
    (setitem("data_feature", (2, 3, 0), 0.1), r"data_train\.npz: feature 'feature_0' has non-zero values after the "
     "end of sample 2"),
    (setitem("data_feature", (0, 2, 0), np.nan), r"data_train\.npz: feature 'feature_0' has 1 NaN"),
    (setitem("data_attribute", (0, 3), np.inf), r"data_train\.npz: attribute 'attribute_1' has 1 NaN or infinite"),
    (lambda a: a.update(data_attribute=np.zeros((3, 5))), r"data_train\.npz: data_attribute must have shape \[3, 4\]"),
    (lambda a: a.update(data_feature=np.zeros((3, 4, 2))),
     r"data_train\.npz: data_feature must have shape \[n, T, 3\]"),
    (lambda a: a.update(data_gen_flag=np.ones((3, 5))), r"data_train\.npz: data_gen_flag must have shape \[3, 4\]"),
    (lambda a: [a["data_gen_flag"].__setitem__(1, 0), a["data_feature"].__setitem__(1, 0)],
     r"data_train\.npz: lengths must lie in \[1, T=4\]; sample 1 has length 0"),
])
def test_bad_arrays_name_file_and_variable(tmp_path, edit, pattern):
  with pytest.raises(DataError, match=pattern):
    load_dg_folder(make_folder(tmp_path / "d", edit))


@pytest.mark.parametrize("extra, pattern", [
    (dict(data_feature_min=np.zeros(1)), r"has only one of data_feature_min / data_feature_max"),
    (dict(data_feature_min=np.zeros(2), data_feature_max=np.ones(2)), r"data_feature_min/_max must have 3 entries"),
    (dict(dg_jax_variables=np.array("{")), r"cannot parse 'dg_jax_variables'"),
    (dict(dg_jax_variables=np.array('{"features": [], "attributes": []}')), r"'dg_jax_variables' does not match"),
])
def test_bad_extra_arrays(tmp_path, extra, pattern):
  with pytest.raises(DataError, match=r"data_train\.npz: " + pattern):
    load_dg_folder(make_folder(tmp_path / "d", **extra))


def test_empty_dataset(tmp_path):
  path = make_folder(tmp_path / "d", lambda a: a.update({k: v[:0] for k, v in a.items()}))
  with pytest.raises(DataError, match=r"data_train\.npz: the dataset is empty"):
    load_dg_folder(path)


def test_missing_array_and_file(tmp_path):
  path = make_folder(tmp_path / "d")
  np.savez(path / "data_train.npz", data_feature=np.zeros((3, 4, 3)), data_gen_flag=np.ones((3, 4)))
  with pytest.raises(DataError, match=r"data_train\.npz: missing array 'data_attribute'"):
    load_dg_folder(path)
  with pytest.raises(DataError, match=r"data_test\.npz: cannot read"):
    load_dg_folder(path, split="test")
  os.remove(path / "data_attribute_output.pkl")
  with pytest.raises(DataError, match=r"data_attribute_output\.pkl: cannot read"):
    load_dg_folder(path)


def test_wrong_number_of_names(tmp_path):
  with pytest.raises(DataError, match=r"data_feature_output\.pkl: got 1 feature names for 2"):
    load_dg_folder(make_folder(tmp_path / "d"), feature_names=["x"])


# ------------------------------------------------------------------------------------------- pickles

class Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned",))


@pytest.mark.parametrize("payload, refused", [
    (pickle.dumps([os.system], protocol=0), r"(posix|os|nt)\.system"),
    (pickle.dumps([Evil()], protocol=2), r"(posix|os|nt)\.system"),
    (pickle.dumps(Evil(), protocol=4), r"(posix|os|nt)\.system"),
    (pickle.dumps([types.SimpleNamespace()], protocol=0), r"types\.SimpleNamespace"),
])
def test_unsafe_pickles_are_refused(tmp_path, payload, refused):
  path = tmp_path / "data_feature_output.pkl"
  path.write_bytes(payload)
  with pytest.raises(DataError, match=rf"data_feature_output\.pkl: refused to load global {refused}"):
    read_outputs(path)


@pytest.mark.parametrize("payload, pattern", [
    (pickle.dumps({"a": 1}), r"expected a list of output\.Output, got dict"),
    (pickle.dumps([1]), r"output 0 is a int, not output\.Output"),
    (b"\x80\x02]q\x00(cfoo", r"not a valid output pickle"),
    (dg_format._dump_outputs([Output(OutputType.CONTINUOUS, 1, None)]), r"output 0: a CONTINUOUS output needs"),
    (dg_format._dump_outputs([Output(OutputType.DISCRETE, 0)]), r"output 0: dim must be a positive integer"),
    (dg_format._dump_outputs([Output(OutputType.DISCRETE, 2, None, True)]), r"output 0 is a generation flag"),
    (b"coutput\nOutputType\n(S'SPARSE'\ntR.", r"not a valid output pickle \(ValueError"),
])
def test_malformed_pickles(tmp_path, payload, pattern):
  path = tmp_path / "x.pkl"
  path.write_bytes(payload)
  with pytest.raises(DataError, match=rf"x\.pkl: .*{pattern}"):
    read_outputs(path)
