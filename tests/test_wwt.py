"""Wikipedia Web Traffic loader on the real 10-page sample and on small files written here."""
import csv
from pathlib import Path

import numpy as np
import pytest

from dg_jax.data import wwt
from dg_jax.data.schema import DataError
from dg_jax.data.wwt import load_wwt

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def sample():
  path = DATA / "wwt10" / "train_1_sample.csv"
  if not path.is_file():
    pytest.skip(f"real data not found at {path}")
  return path


def test_real_sample(sample):
  ds = load_wwt(sample)
  assert ds.features.shape == (10, 550, 1) and np.all(ds.lengths == 550)
  (views,) = ds.feature_vars
  assert views.name == "views" and views.log1p
  assert [v.name for v in ds.attribute_vars] == ["domain", "access", "agent"]
  assert ds.attribute_vars[1].categories == wwt.ACCESSES and ds.attribute_vars[2].categories == wwt.AGENTS
  with open(sample, newline="", encoding="utf-8") as fh:
    rows = list(csv.reader(fh))
  assert len(rows[0]) == 551 and rows[0][1] == "2015-07-01" and rows[0][-1] == "2016-12-31"
  for i, row in enumerate(rows[1:]):
    labels = [v.categories[int(c)] for v, c in zip(ds.attribute_vars, ds.attributes[i])]
    assert row[0].endswith("_" + "_".join(labels))  # names may hold underscores; the last three parts are ours
    np.testing.assert_array_equal(ds.features[i, :, 0], np.array(row[1:], np.float32))
  assert ds.attribute_vars[0].categories[int(ds.attributes[0, 0])] == "ja.wikipedia.org"


def test_subsample_is_reproducible(sample):
  ds = load_wwt(sample)
  a, b = load_wwt(sample, num_pages=4, seed=1), load_wwt(sample, num_pages=4, seed=1)
  assert a.num_samples == 4
  np.testing.assert_array_equal(a.features, b.features)
  rows = [int(np.flatnonzero((ds.features == a.features[i]).all(axis=(1, 2)))[0]) for i in range(4)]
  assert rows == sorted(rows)  # a subset, in file order
  assert load_wwt(sample, num_pages=100).num_samples == 10


def write(path, *rows, days=("2015-07-01", "2015-07-02", "2015-07-03")):
  path.write_text("\n".join([",".join(("Page",) + days)] + [",".join(r) for r in rows]) + "\n")
  return path


def test_missing_values_dropped_or_zero(tmp_path, caplog):
  path = write(tmp_path / "t.csv", ("A_b_c_en.wikipedia.org_desktop_spider", "1", "2", "3"),
               ("X_de.wikipedia.org_mobile-web_all-agents", "", "5", "6"),
               ("Y_xx.wikivoyage.org_all-access_all-agents", "7", "8", "9"))
  with caplog.at_level("INFO"):
    ds = load_wwt(path)
  assert "dropped 1 of 3 pages" in caplog.text
  assert ds.features[:, :, 0].tolist() == [[1, 2, 3], [7, 8, 9]]
  assert ds.attribute_vars[0].categories == wwt.DOMAINS + ("xx.wikivoyage.org",)  # an unknown domain goes last
  assert ds.attributes.tolist() == [[2, 1, 1], [9, 0, 0]]
  filled = load_wwt(path, drop_missing=False)
  assert filled.features[1, :, 0].tolist() == [0, 5, 6]


@pytest.mark.parametrize("rows, pattern", [
    ([("Foo_en.wikipedia.org_desktop", "1", "2", "3")], r"t\.csv: column 'Page' value 'Foo_en\.wikipedia\.org_desktop'"
     " is not"),
    ([("Foo_en.wikipedia.org_phone_spider", "1", "2", "3")], r"t\.csv: column 'Page' value .* is not"),
    ([("Foo_en.wikipedia.org_desktop_spider", "1", "", "3")], r"t\.csv: no pages left after dropping"),
    ([("Foo_en.wikipedia.org_desktop_spider", "1", "-2", "3")], r"t\.csv: feature 'views' uses log1p but has negative"),
    ([("Foo_en.wikipedia.org_desktop_spider", "1", "x", "3")], r"t\.csv: day column '2015-07-02' is not numeric"),
    ([], r"t\.csv: the file has no pages"),
])
def test_bad_files(tmp_path, rows, pattern):
  with pytest.raises(DataError, match=pattern):
    load_wwt(write(tmp_path / "t.csv", *rows))


def test_missing_page_column(tmp_path):
  (tmp_path / "t.csv").write_text("Name,2015-07-01\nA_en.wikipedia.org_desktop_spider,1\n")
  with pytest.raises(DataError, match=r"t\.csv: missing column 'Page'"):
    load_wwt(tmp_path / "t.csv")
