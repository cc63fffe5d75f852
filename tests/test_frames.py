"""DataFrame / CSV loaders: long and wide formats, round trips, and errors that name the source and column."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dg_jax.data import frames as fr
from dg_jax.data.schema import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def assert_same(a, b):
  for k in ("features", "lengths", "attributes"):
    np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
  assert a.feature_vars == b.feature_vars and a.attribute_vars == b.attribute_vars


def long_df():
  return pd.DataFrame({
      "uid": ["b", "b", "a", "a", "a", "c"],
      "t": [2, 1, 3, 1, 2, 5],
      "isp": ["x", "x", "y", "y", "y", "x"],
      "rank": [10, 10, 2, 2, 2, 1],
      "fast": [True, True, False, False, False, True],
      "bw": [1.5, 0.5, 3.0, 1.0, 2.0, 7.0],
      "proto": ["tcp", "udp", "udp", "udp", "tcp", "tcp"],
  })


def from_long(df, **kw):
  return fr.from_long_frame(df, "uid", "t", ["isp", "rank", "fast"], ["bw", "proto"], categorical=["rank"], **kw)


def test_long_frame_layout():
  ds = from_long(long_df())
  assert ds.lengths.tolist() == [2, 3, 1]  # ids in order of first appearance: b, a, c
  assert ds.features[:, :, 0].tolist() == [[0.5, 1.5, 0], [1, 2, 3], [7, 0, 0]]  # sorted by t
  isp, rank, fast = ds.attribute_vars
  assert isp.categories == ("x", "y") and fast.categories == ("False", "True")
  assert rank.categories == ("1", "2", "10")  # numbers sort as numbers
  assert ds.attributes.tolist() == [[0, 2, 1], [1, 1, 0], [0, 0, 1]]
  assert ds.feature_vars[1].categories == ("tcp", "udp")
  assert ds.source == "DataFrame"


def test_long_round_trip_keeps_labels_and_order():
  df = long_df()
  df["isp"] = pd.Categorical(df["isp"], categories=["y", "x", "z"])  # a dtype order and an unused label
  ds = from_long(df)
  assert ds.attribute_vars[0].categories == ("y", "x", "z")
  out = fr.to_long_frame(ds)
  assert list(out.columns) == ["id", "step", "isp", "rank", "fast", "bw", "proto"]
  assert out["proto"].tolist() == ["udp", "tcp", "udp", "tcp", "udp", "tcp"]
  assert out["rank"].tolist() == ["10", "10", "2", "2", "2", "1"]
  again = fr.from_long_frame(out, "id", "step", ["isp", "rank", "fast"], ["bw", "proto"])
  assert_same(again, ds)
  assert_same(fr.from_long_frame(fr.to_long_frame(again, time_column=None), "id",
                                 attribute_columns=["isp", "rank", "fast"]), ds)


def test_feature_columns_default_to_the_rest():
  ds = fr.from_long_frame(long_df().drop(columns=["rank", "fast"]), "uid", "t", ["isp"])
  assert [v.name for v in ds.feature_vars] == ["bw", "proto"]
  ds = fr.from_long_frame(long_df().drop(columns=["rank", "fast"]), "uid", "t", ["isp"], feature_columns=[])
  assert [v.name for v in ds.feature_vars] == ["bw", "proto"]
  with pytest.raises(DataError, match=r"DataFrame: no feature columns"):
    fr.from_long_frame(long_df()[["uid", "t"]], "uid", "t")


def test_max_length_truncates_and_pads():
  ds = from_long(long_df(), max_length=2)
  assert ds.lengths.tolist() == [2, 2, 1] and ds.features[1, :, 0].tolist() == [1, 2]
  assert from_long(long_df(), max_length=5).features.shape == (3, 5, 2)


def test_csv_long_round_trip(tmp_path):
  ds = from_long(long_df())
  path = tmp_path / "out" / "long.csv"
  fr.write_csv_long(ds, path)
  assert [p.name for p in path.parent.iterdir()] == ["long.csv"]  # no temp file left behind
  again = fr.read_csv_long(path, "id", "step", ["isp", "rank", "fast"], categorical=["rank"])
  assert_same(again, ds)
  assert again.source == str(path)


def test_wide_round_trip():
  ds = from_long(long_df())
  wide = fr.to_wide_frame(ds, id_column="id")
  assert list(wide.columns[:7]) == ["id", "isp", "rank", "fast", "bw_0", "bw_1", "bw_2"]
  assert np.isnan(wide.loc[0, "bw_2"]) and pd.isna(wide.loc[2, "proto_1"])
  assert_same(fr.from_wide_frame(wide, fr.wide_columns(ds), "id", ["isp", "rank", "fast"]), ds)


def test_csv_wide_single_feature(tmp_path):
  path = tmp_path / "w.csv"
  path.write_text("site,kind,d1,d2,d3\ns1,10,1.5,2.5,\ns2,7,4,,\ns3,10,0,1,2\n")
  ds = fr.read_csv_wide(path, ["d1", "d2", "d3"], "site", ["kind"], categorical=["kind"], feature_name="load")
  assert ds.lengths.tolist() == [2, 1, 3] and ds.feature_vars[0].name == "load"
  assert ds.attribute_vars[0].categories == ("7", "10")
  fr.write_csv_wide(ds, tmp_path / "w2.csv", step_format="t{t}")
  assert_same(fr.read_csv_wide(tmp_path / "w2.csv", ["t0", "t1", "t2"], None, ["kind"], ["kind"], "load"), ds)


def test_real_mba_long_round_trip():
  if not (DATA / "mba").is_dir():
    pytest.skip(f"real data not found at {DATA / 'mba'}")
  from dg_jax.data.dg_format import load_dg_folder
  ds = load_dg_folder(DATA / "mba").subset(slice(0, 50))
  names = [v.name for v in ds.attribute_vars]
  assert_same(fr.from_long_frame(fr.to_long_frame(ds), "id", "step", names, categorical=names), ds)


def test_real_wwt_wide_round_trip(tmp_path):
  if not (DATA / "wwt10").is_dir():
    pytest.skip(f"real data not found at {DATA / 'wwt10'}")
  from dg_jax.data.wwt import load_wwt
  ds = load_wwt(DATA / "wwt10" / "train_1_sample.csv")
  fr.write_csv_wide(ds, tmp_path / "w.csv")
  again = fr.read_csv_wide(tmp_path / "w.csv", fr.wide_columns(ds), attribute_columns=["domain", "access", "agent"])
  np.testing.assert_array_equal(again.features, ds.features)
  # labels come back sorted from CSV text, so compare them, not the codes
  for j, (a, b) in enumerate(zip(again.attribute_vars, ds.attribute_vars)):
    assert [a.categories[int(c)] for c in again.attributes[:, j]] == [b.categories[int(c)] for c in ds.attributes[:, j]]


# ---------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("edit, pattern", [
    (lambda df: df.drop(columns="isp"), r"DataFrame: missing column 'isp'"),
    (lambda df: df.assign(isp=["x", "y", "y", "y", "y", "x"]), r"DataFrame: attribute column 'isp' is not constant "
     r"within id 'b'"),
    (lambda df: df.assign(bw=[1, 2, np.nan, 4, 5, 6]), r"DataFrame: feature column 'bw' has missing values "
     r"\(first at id 'a'\)"),
    (lambda df: df.assign(bw=[1, 2, np.inf, 4, 5, 6]), r"DataFrame: feature 'bw' has 1 NaN or infinite"),
    (lambda df: df.assign(proto=[None, "a", "b", "c", "d", "e"]), r"DataFrame: feature column 'proto' has missing"),
    (lambda df: df.assign(fast=[True, True, None, None, None, True]), r"DataFrame: attribute column 'fast' has "
     "missing values"),
    (lambda df: df.assign(uid=["b", None, "a", "a", "a", "c"]), r"DataFrame: id column 'uid' has missing values"),
    (lambda df: df.assign(t=[1, 2, 3, np.nan, 5, 6]), r"DataFrame: time column 't' has missing values"),
    (lambda df: df.assign(bw=pd.to_datetime(["2020-01-01"] * 6)), r"DataFrame: column 'bw' has dtype datetime64"),
    (lambda df: df.iloc[:0], r"DataFrame: no rows"),
])
def test_long_errors(edit, pattern):
  with pytest.raises(DataError, match=pattern):
    from_long(edit(long_df()))


def test_csv_errors_name_the_file(tmp_path):
  path = tmp_path / "bad.csv"
  path.write_text("uid,t,isp,rank,fast,bw,proto\na,1,x,1,True,,tcp\n")
  with pytest.raises(DataError, match=r"bad\.csv: feature column 'bw' has missing values"):
    fr.read_csv_long(path, "uid", "t", ["isp", "rank", "fast"])
  with pytest.raises(DataError, match=r"bad\.csv: missing column 'nope'"):
    fr.read_csv_long(path, "nope")
  path.write_text("")
  with pytest.raises(DataError, match=r"bad\.csv: cannot parse CSV"):
    fr.read_csv_long(path, "uid")


def wide_df():
  return pd.DataFrame({"id": ["p", "q"], "a": ["u", "v"], "x0": [1.0, 2.0], "x1": [3.0, np.nan], "x2": [5.0, np.nan],
                       "y0": ["s", "t"], "y1": ["s", None], "y2": ["t", None]})


@pytest.mark.parametrize("edit, cols, pattern", [
    (lambda df: df.assign(x1=[np.nan, np.nan]), None, r"DataFrame: feature 'x' column 'x1' is empty at id 'p' but a "
     "later step is not"),
    (lambda df: df.assign(y1=["s", "t"]), None, r"DataFrame: feature 'y' has 2 steps at id 'q' but 'x' has 1"),
    (lambda df: df, {"x": ["x0", "x1"], "y": ["y0"]},
     r"DataFrame: every feature needs the same number of step columns"),
    (lambda df: df, {"x": ["x0", "x9", "x2"]}, r"DataFrame: missing column 'x9'"),
    (lambda df: df.assign(x0=[1, np.nan], y0=["s", None]), None, r"DataFrame: id 'q' has no feature values"),
    (lambda df: df.assign(a=["u", None]), None, r"DataFrame: attribute column 'a' is empty at id 'q'"),
])
def test_wide_errors(edit, cols, pattern):
  with pytest.raises(DataError, match=pattern):
    fr.from_wide_frame(edit(wide_df()), cols or {"x": ["x0", "x1", "x2"], "y": ["y0", "y1", "y2"]}, "id", ["a"])


def test_wide_without_id_names_the_row(tmp_path):
  path = tmp_path / "w.csv"
  path.write_text("v0,v1,v2\n1,2,3\n1,,3\n")
  with pytest.raises(DataError, match=r"w\.csv: feature 'value' column 'v1' is empty at row 1"):
    fr.read_csv_wide(path, ["v0", "v1", "v2"])


def test_to_frame_name_clash():
  ds = from_long(long_df())
  with pytest.raises(DataError, match=r"id/time column name 'bw' is also a variable name"):
    fr.to_long_frame(ds, id_column="bw")
