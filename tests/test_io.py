"""The path layer (dg_jax/io_utils.py): workdir and bundle files on a remote-style URI go through
etils.epath, here mocked so that gs://bucket/... lands in a local folder."""
import json
import os

import numpy as np
import pytest

from configs import tiny
from dg_jax import io_utils
from dg_jax.checkpoints import is_bundle, load_bundle, save_bundle
from dg_jax.data.loaders import load_dataset
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.train import MetricsLog, fit_schema_from_config


def test_remote_style_workdir_and_bundle(fake_bucket):
  c = tiny.get_config()
  data = load_dataset(c.data)
  schema = fit_schema_from_config(data, c)
  params = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  save_bundle("gs://bucket/b", params, schema, c.to_json())
  assert is_bundle("gs://bucket/b") and (fake_bucket / "b" / "generator.msgpack").is_file()
  assert (fake_bucket / "b" / "manifest.json").is_file() and not (fake_bucket / "b" / ".incomplete").exists()
  p2, s2, config = load_bundle("gs://bucket/b")
  np.testing.assert_array_equal(p2["params"]["w"], params["params"]["w"])
  assert s2 == schema and config["train"]["seed"] == c.train.seed

  save_npz(data, "gs://bucket/run/data.npz")
  np.testing.assert_array_equal(load_npz("gs://bucket/run/data.npz").features, data.features)

  log = MetricsLog("gs://bucket/run", 0, enabled=True, tensorboard=False)
  for step in (10, 20, 30):
    log.append(dict(step=step))
  assert not (fake_bucket / "run" / "metrics.jsonl").exists()  # an object store gets the file at checkpoints
  log.flush()
  MetricsLog("gs://bucket/run", 20, enabled=True, tensorboard=False)  # a resume from step 20
  rows = (fake_bucket / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(r)["step"] for r in rows] == [10, 20]


def test_local_writes_are_atomic(tmp_path):
  path = tmp_path / "sub" / "f.txt"
  io_utils.write_text(str(path), "old")
  with pytest.raises(RuntimeError):
    with io_utils.atomic_path(str(path)) as tmp:
      with open(tmp, "w") as fh:
        fh.write("half")
      raise RuntimeError("killed mid-write")
  assert path.read_text() == "old" and os.listdir(path.parent) == ["f.txt"]
  assert io_utils.join("gs://b/run", "x", "y") == "gs://b/run/x/y"
  assert io_utils.as_path("rel").is_absolute() and str(io_utils.as_path("gs://b/x")) == "gs://b/x"
