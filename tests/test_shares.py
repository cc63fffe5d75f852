"""Sharded npz input (data.path=PATH-{shard}.npz): loading, checks, and what sharding refuses.
tests/test_multiprocess.py trains on it with two processes reading half each."""
import dataclasses
import logging

import jax
import numpy as np
import pytest

from configs import tiny
from dg_jax.data.loaders import load_dataset
from dg_jax.data.npz_format import save_npz
from dg_jax.data.schema import DataError, categorical
from dg_jax.failures import BadInput
from dg_jax.sampling import restore_run
from dg_jax.train import train_and_evaluate


def test_shards_load_in_order_are_checked_and_refuse_what_sharding_cannot_do(tmp_path):
  data = load_dataset(tiny.get_config().data)
  for i in range(3):
    save_npz(data.subset(np.arange(20 * i, 20 * (i + 1) + (4 if i == 2 else 0))), str(tmp_path / f"s-{i:05d}.npz"))
  c = tiny.get_config()
  c.data.path = str(tmp_path / "s-{shard}.npz")
  whole = load_dataset(c.data)
  np.testing.assert_array_equal(whole.features, data.features)
  np.testing.assert_array_equal(whole.attributes, data.attributes)
  c.privacy.update(enabled=True, noise_multiplier=1.0)
  with pytest.raises(BadInput, match="sharded over the devices .* does not go with privacy.enabled"):
    train_and_evaluate(c, str(tmp_path / "w"))
  c.train.data_placement = "sharded"
  c.data.path = str(tmp_path / "s-00000.npz")
  with pytest.raises(BadInput, match="data_placement=sharded needs data.path=PATH-{shard}.npz"):
    train_and_evaluate(c, str(tmp_path / "w"))
  other = dataclasses.replace(data, attribute_vars=(categorical("service", ("video", "web", "mail")),
                                                    data.attribute_vars[1]))
  save_npz(other.subset(np.arange(3)), str(tmp_path / "s-00003.npz"))
  c.data.path = str(tmp_path / "s-{shard}.npz")
  with pytest.raises(DataError, match="s-00003.npz: its variables or categories differ"):
    load_dataset(c.data)
  c.data.path = str(tmp_path / "none-{shard}.npz")
  with pytest.raises(DataError, match="no shard files match"):
    load_dataset(c.data)


def test_blocks_in_host_memory_train_what_blocks_on_device_train(tmp_path, caplog):
  """train.data_placement=sharded_host (blocks too large for the devices): each process builds its devices'
  batches from its blocks on the host; the same batches, so the same run, as the blocks on device."""
  data = load_dataset(tiny.get_config().data)
  for i in range(4):
    save_npz(data.subset(np.arange(16 * i, 16 * (i + 1))), str(tmp_path / f"part-{i:05d}.npz"))
  params = {}
  caplog.set_level(logging.INFO)
  for placement in ("sharded", "sharded_host"):
    c = tiny.get_config()
    c.train.update(num_steps=10, data_placement=placement)
    c.num_devices, c.data.path = 2, str(tmp_path / "part-{shard}.npz")
    train_and_evaluate(c, str(tmp_path / placement))
    params[placement] = jax.device_get(restore_run(str(tmp_path / placement))[1]["params"])
  assert "each on its devices" in caplog.text and "in host memory; each process builds" in caplog.text
  # two programs (batches gathered on device, or fed), which XLA may fuse apart: equal up to float rounding
  # (at most 3e-9 beyond 1e-6 relative seen); two shards swapped part them by 3.5e-4 (median), up to 0.01
  close = lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)  # noqa: E731
  jax.tree.map(close, params["sharded"], params["sharded_host"])
