"""Generation, conditional generation, metadata retraining, bundles and the CLI, on configs/tiny.py."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pandas as pd
import pytest

from configs import tiny
from dg_jax import train_step
from dg_jax.api import DoppelGANgerModel
from dg_jax.checkpoints import CheckpointError, load_bundle, save_bundle
from dg_jax.data.frames import to_long_frame
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.data.schema import DataError, Dataset
from dg_jax.failures import BadInput
from dg_jax.retrain import retrain_attributes
from dg_jax.models.doppelganger import exact_span, keep_mask
from dg_jax.sampling import generate, generate_encoded, load_generator, parse_attribute_labels, restore_run
from dg_jax.shards import generate_to_shards
from dg_jax.train import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  c = tiny.get_config()
  c.num_devices = 1  # compiles in half the time of 8 devices; what is generated from it is tested on 1 and 8
  train_and_evaluate(c, workdir)
  return workdir


def test_generation_is_reproducible_with_valid_lengths(trained):
  model, params, _ = load_generator(trained)
  a = generate(model, params, 50, seed=3, chunk_size=16)
  b = generate(model, params, 50, seed=3, chunk_size=16)
  c = generate(model, params, 50, seed=4, chunk_size=16)
  assert a.features.shape == (50, 24, 2) and a.attributes.shape == (50, 2)
  np.testing.assert_array_equal(a.features, b.features)
  assert not np.array_equal(a.features, c.features)
  a.validate()  # lengths in [1, T], zeros after each end, codes within categories
  valid = np.arange(24)[None] < a.lengths[:, None]
  assert (a.features[..., 0][valid] > 0).all()  # log1p traffic decodes to positive bytes
  # BatchNorm (on by default) uses its running averages when generating: a sample does not depend on its batch
  assert model.cfg.metadata_batch_norm
  assert not np.allclose(params["batch_stats"]["attribute_mlp"]["BatchNorm_0"]["mean"], 0)  # trained
  np.testing.assert_array_equal(generate(model, params, 1, seed=3).attributes, a.attributes[:1])


def test_samples_do_not_depend_on_the_device_count_or_the_shards(trained, tmp_path, cli):
  """Series j is the same in memory on 8 devices, in Parquet shards of 16 written on 1 device (pandas
  reads the folder whole) and in npz shards of 20: its noise depends on (seed, j) alone. An interrupted
  sharded generation resumes by writing only its missing shards; another one into the same place is refused."""
  model, params, config = load_generator(trained)
  assert jax.device_count() == 8
  eight = generate(model, params, 45, seed=5)  # one chunk of 500 series, padded to 504 for 8 devices
  folder = tmp_path / "one.parquet"
  cli("--mode=generate", f"--workdir={trained}", "--num_samples=45", f"--output={folder}", "--shard_size=16",
      "--seed=5")
  assert sorted(os.listdir(folder)) == ["_generation.json"] + [f"part-0000{i}.parquet" for i in range(3)]
  one = pd.read_parquet(folder)  # 1 device
  expected = to_long_frame(eight)
  pd.testing.assert_frame_equal(one[["id", "step", "service", "region"]], expected[["id", "step", "service", "region"]])
  np.testing.assert_allclose(one[["traffic_bytes", "latency_ms"]], expected[["traffic_bytes", "latency_ms"]],
                             rtol=1e-4, atol=1e-6)  # as in tests/test_multiprocess.py
  pattern, what = str(tmp_path / "s-{shard}.npz"), dict(source=trained)
  assert generate_to_shards(model, params, 45, 5, pattern, what, shard_size=20) == 3
  parts = [load_npz(str(tmp_path / f"s-0000{i}.npz")) for i in range(3)]
  np.testing.assert_array_equal(np.concatenate([p.lengths for p in parts]), eight.lengths)
  np.testing.assert_allclose(np.concatenate([p.features for p in parts]), eight.features, rtol=1e-4, atol=1e-6)
  (tmp_path / "s-00001.npz").unlink()  # as if killed before its write
  assert generate_to_shards(model, params, 45, 5, pattern, what, shard_size=20) == 1
  np.testing.assert_array_equal(load_npz(str(tmp_path / "s-00001.npz")).features, parts[1].features)
  with pytest.raises(BadInput, match=r"holds another generation .* differs in \['seed'\]"):
    generate_to_shards(model, params, 45, 6, pattern, what, shard_size=20)


def test_generation_reads_the_generators_alone(trained, monkeypatch, request):
  """Another optimiser state layout (as after an optax upgrade) makes the full state unreadable, not
  the generators: generation restores nothing else."""
  before = generate(*load_generator(trained)[:2], 5, seed=1)
  monkeypatch.setattr(train_step, "optimizer", lambda tc: optax.chain(optax.clip(1.0), optax.adamw(1e-3)))
  jax.clear_caches()  # the programs traced with Adam's layout (train_step.program_config), then this one's
  request.addfinalizer(jax.clear_caches)
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    restore_run(trained)
  model, params, _ = load_generator(trained)
  np.testing.assert_array_equal(generate(model, params, 5, seed=1).features, before.features)


def test_forced_length_beyond_training_length(trained):
  model, params, _ = load_generator(trained)
  out = generate(model, params, 5, seed=0, length=40)
  assert out.features.shape == (5, 40, 2) and (out.lengths == 40).all()
  assert np.isfinite(out.features).all() and (out.features[..., 0] > 0).all()


def test_conditional_generation(trained):
  model, params, _ = load_generator(trained)
  rows = parse_attribute_labels(["service=backup", "region=south"], model.schema, 7)
  out = generate(model, params, 0, seed=0, attributes=rows)
  assert out.num_samples == 7 and (out.attributes == [2, 1]).all()
  with pytest.raises(DataError, match="service='tape': unknown category"):
    parse_attribute_labels(["service=tape", "region=south"], model.schema, 1)
  with pytest.raises(DataError, match=r"missing \['region'\]"):
    parse_attribute_labels(["service=web"], model.schema, 1)


def mean_log_level(data: Dataset) -> np.ndarray:
  valid = np.arange(data.max_length)[None] < data.lengths[:, None]
  return np.array([np.log(data.features[i, valid[i], 0]).mean() for i in range(data.num_samples)])


def test_conditional_generation_follows_the_condition(tmp_path_factory):
  """In the demo data the service sets the traffic level (video > web > backup, about 4.5 log units
  apart). After a short training, series generated for each service order the same way, by a margin."""
  from dg_jax.api import DoppelGANgerModel
  from dg_jax.data.loaders import load_dataset
  workdir = str(tmp_path_factory.mktemp("conditional"))
  c = tiny.get_config()
  # the same training in 15 dispatches, not 300: tiny steps cost little more than their round trips
  c.train.update(num_steps=1500, checkpoint_every=1500, log_every=1500, steps_per_dispatch=100)
  c.num_devices = 1  # trains faster than the tests' 8 virtual devices on 2 cores
  train_and_evaluate(c, workdir)
  real = load_dataset(c.data)
  real_levels = [mean_log_level(real)[real.attributes[:, 0] == k].mean() for k in range(3)]
  model = DoppelGANgerModel.load(workdir)
  levels = []
  for service in ("video", "web", "backup"):
    rows = parse_attribute_labels([f"service={service}", "region=north"], model.schema, 100)
    levels.append(mean_log_level(model.generate(0, seed=0, attributes=rows)).mean())
  assert real_levels[0] > real_levels[1] > real_levels[2]
  assert levels[0] > levels[1] + 1 and levels[1] > levels[2] + 1, (levels, real_levels)


def test_metadata_retraining_moves_only_the_attribute_mix(trained):
  model, params, _ = load_generator(trained)
  target = np.tile([[2, 1]], (64, 1)).astype(float)  # everything becomes backup / south
  new = retrain_attributes(model, params, target, num_steps=300, seed=0, batch_size=32)
  before = generate(model, params, 200, seed=1)
  after = generate(model, new, 200, seed=1)
  share = lambda d: np.mean((d.attributes[:, 0] == 2) & (d.attributes[:, 1] == 1))
  assert share(after) > 0.8 and share(after) > share(before) + 0.3, (share(after), share(before))
  for name in ("additional_mlp", "lstm", "heads"):  # frozen parts are untouched
    jax.tree.map(np.testing.assert_array_equal, params["params"][name], new["params"][name])
  # the attribute MLP's BatchNorm running averages follow its retraining (generation uses them)
  stats, new_stats = params["batch_stats"], new["batch_stats"]
  jax.tree.map(np.testing.assert_array_equal, stats["additional_mlp"], new_stats["additional_mlp"])
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), stats["attribute_mlp"], new_stats["attribute_mlp"])
  assert all(jax.tree.leaves(moved))


def test_bundle_round_trip_and_interrupted_exports(trained, tmp_path, monkeypatch):
  model, params, config = load_generator(trained)
  bundle = str(tmp_path / "b")
  save_bundle(bundle, params, model.schema, config.to_json())
  p2, schema, _ = load_bundle(bundle)
  assert schema == model.schema
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), p2)
  with pytest.raises(BadInput, match="not a complete generator bundle"):
    load_bundle(str(tmp_path / "nope"))

  # a re-export killed after it moved the new parameters in, before the new schema: refused, not decoded wrong
  replace, moved = os.replace, []

  def killed_after_one_file(src, dst):
    if os.path.basename(dst) in ("schema.json", "manifest.json"):
      raise KeyboardInterrupt("killed mid-export")
    moved.append(dst)
    replace(src, dst)
  monkeypatch.setattr(os, "replace", killed_after_one_file)
  other = jax.tree.map(lambda x: x + 1, jax.device_get(params))
  with pytest.raises(KeyboardInterrupt):
    save_bundle(bundle, other, model.schema, config.to_json())
  monkeypatch.setattr(os, "replace", replace)
  assert moved[-1].endswith("generator.msgpack")  # the new parameters, beside the old schema
  with pytest.raises(BadInput, match="export into this bundle was interrupted"):
    load_bundle(bundle)
  save_bundle(bundle, other, model.schema, config.to_json())  # exporting again repairs it
  jax.tree.map(np.testing.assert_array_equal, load_bundle(bundle)[0], other)
  (tmp_path / "b" / "schema.json").write_text(model.schema.to_json() + " ")  # damaged after the export
  with pytest.raises(BadInput, match=r"\['schema.json'\] do not match the bundle's manifest.json"):
    load_bundle(bundle)


def test_exact_span_at_generation_chosen_when_generating(trained, tmp_path, cli):
  """The default (auto) on the demo, whose levels do not move together: the generator's own series, each
  continuous one rescaled to its exact span (doppelganger.exact_span, tests/test_model.py).
  --exact_span_at_generation=false exports the series as generated; the bundle keeps the choice, and a load
  can override it back, with True or with the default's rule (auto)."""
  auto, params, _ = load_generator(trained)
  assert auto.cfg.exact_span_at_generation == "auto" and not auto.schema.min_max_view
  plain = load_generator(trained, exact_span_at_generation=False)[0]
  a = generate_encoded(plain, params, 40, seed=1)
  features = jax.numpy.asarray(a.features)
  mask = keep_mask(features[..., -2:])
  expected = exact_span(features, a.additional_attributes, mask, plain.schema) * mask[..., None]
  spanned = generate_encoded(auto, params, 40, seed=1)
  np.testing.assert_array_equal(spanned.additional_attributes, a.additional_attributes)
  np.testing.assert_allclose(spanned.features, expected, atol=1e-6)
  assert np.abs(spanned.features - a.features).max() > 0.01
  cli("--mode=export", f"--workdir={trained}", f"--bundle={tmp_path / 'b'}", "--exact_span_at_generation=false")
  bundle = DoppelGANgerModel.load(str(tmp_path / "b"))
  assert load_bundle(str(tmp_path / "b"))[2]["model"]["exact_span_at_generation"] is False
  np.testing.assert_array_equal(generate_encoded(bundle.model, bundle.params, 40, seed=1).features, a.features)
  for span in (True, "auto"):
    back = DoppelGANgerModel.load(str(tmp_path / "b"), exact_span_at_generation=span)
    np.testing.assert_allclose(generate_encoded(back.model, back.params, 40, seed=1).features, expected, atol=1e-6)
  config = load_bundle(str(tmp_path / "b"))[2]
  config["model"]["exact_span"] = True  # trained with the rescale: it cannot be turned off when generating
  save_bundle(str(tmp_path / "always"), params, plain.schema, json.dumps(config))
  with pytest.raises(BadInput, match="trained with model.exact_span=True"):
    load_generator(bundle=str(tmp_path / "always"), exact_span_at_generation=False)


def test_cli_end_to_end_on_eight_devices(tmp_path, cli):
  """Train on 8 devices, generate conditionally, retrain the metadata into a bundle, generate from it
  (--mode=export: tests/test_seeds.py)."""
  w, out = str(tmp_path / "w"), str(tmp_path / "gen.npz")
  log = cli("--config=configs/tiny.py", f"--workdir={w}", "--config.train.num_steps=10", devices=8)
  assert "8 device(s)" in log and "step 10/10" in log and "steps/s" in log and "ETA" in log
  cli("--mode=generate", f"--workdir={w}", "--num_samples=4", f"--output={out}", f"--csv_output={out}.csv",
      "--attribute=service=video", "--attribute=region=north", "--length=30")
  data = load_npz(out)
  assert data.features.shape == (4, 30, 2) and (data.attributes == 0).all()
  assert [v.name for v in data.attribute_vars] == ["service", "region"] and os.path.getsize(out + ".csv") > 0
  # metadata retraining from the CLI, then generation from the new bundle follows the new mix
  rows = Dataset(np.zeros((20, 1, 2), np.float32), np.ones(20, int), np.tile([[1.0, 1.0]], (20, 1)),
                 data.feature_vars, data.attribute_vars)
  save_npz(rows, str(tmp_path / "mix.npz"))
  cli("--mode=retrain_attributes", f"--workdir={w}", f"--attributes_file={tmp_path / 'mix.npz'}",
      f"--bundle={tmp_path / 'r'}", "--retrain_steps=200")
  assert sorted(os.listdir(tmp_path / "r")) == ["config.json", "generator.msgpack", "manifest.json", "schema.json"]
  cli("--mode=generate", f"--bundle={tmp_path / 'r'}", "--num_samples=100", f"--output={out}")
  assert np.mean((load_npz(out).attributes == [1, 1]).all(axis=1)) > 0.8


def test_cli_errors(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, "launch.py", "--mode=generate", f"--workdir={tmp_path}", "--output=x.npz"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path}: not a training run (no checkpoints/ folder); check --workdir")
  assert list(tmp_path.iterdir()) == []  # a reader creates nothing
