"""encode -> decode gives back every real dataset in ../shared/data, and the config loaders read them."""
import ml_collections
import numpy as np
import pytest

from configs import default, mba, wwt
from dg_jax.data import encoding
from dg_jax.data.dg_format import load_dg_folder
from dg_jax.data.loaders import load_dataset, resolve_format
from dg_jax.data.schema import DataError
from dg_jax.data.wwt import load_wwt


def round_trip(data, **kw):
  schema = encoding.fit_schema(data, **kw)
  back = encoding.decode(encoding.encode(data, schema), schema)
  np.testing.assert_array_equal(back.lengths, data.lengths)
  np.testing.assert_array_equal(back.attributes, data.attributes)
  scale = np.abs(data.features).max(axis=(0, 1))
  np.testing.assert_allclose(back.features, data.features, rtol=1e-4, atol=1e-5 * scale.max())


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("normalization", encoding.NORMALIZATIONS)
def test_mba_round_trip(shared_data, split, normalization):
  round_trip(load_dg_folder(shared_data / "mba", split), normalization=normalization)


def test_wwt_round_trip(shared_data):
  data = load_wwt(shared_data / "wwt10" / "train_1_sample.csv")
  round_trip(data)
  round_trip(data, normalization=encoding.MINUS_ONE_ONE, auto_normalize=False)


def test_config_loaders(shared_data, tmp_path):
  m = load_dataset(mba.get_config().data)
  assert m.features.shape == (600, 56, 2) and m.attribute_vars[1].name == "technology"
  assert load_dataset(wwt.get_config().data).features.shape == (10, 550, 1)
  c = default.get_config()
  assert load_dataset(c.data).source.startswith("demo(")
  assert resolve_format("auto", str(shared_data / "mba")) == "dg"
  assert resolve_format("auto", "x.npz") == "npz"
  with pytest.raises(DataError, match="cannot tell its format"):
    resolve_format("auto", str(tmp_path))
  c.data.format, c.data.path = "npz", ""
  with pytest.raises(DataError, match="config.data.path is empty"):
    load_dataset(c.data)
  c.data.format = "parquet"
  c.data.path = "x"
  with pytest.raises(DataError, match="unknown data.format 'parquet'"):
    load_dataset(ml_collections.ConfigDict(c.data))
