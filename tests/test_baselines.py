"""The four baselines: interface, lengths and padding, seeds, save/load, workdir runs, training."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from configs import baselines as baseline_configs
from dg_jax.baselines import BASELINES, is_baseline_run, load_baseline, train_baseline
from dg_jax.baselines.common import prepare
from dg_jax.baselines.hmm import _draw
from dg_jax.baselines.naive_gan import NaiveGANBaseline, flatten
from dg_jax.baselines.next_record import _rollout, fit_first_record, sample_record, shift_right
from dg_jax.baselines.rnn import RNNBaseline
from dg_jax.data import encoding
from dg_jax.data.loaders import load_dataset

NAMES = tuple(BASELINES)
N = 1000  # samples per generate call: one compilation per model shape


def small_config(name, **train):
  c = baseline_configs.get_config(name)
  c.data.demo.update(num_samples=48, length=12, variable_lengths=True)
  c.train.update(dict(num_steps=150, batch_size=48, log_every=10, steps_per_dispatch=10), **train)  # batch: all 48
  c.baseline.hmm.update(num_states=4, n_iter=10)
  c.baseline.ar.update(num_layers=2, num_units=32)
  c.baseline.rnn.num_units = 16
  c.baseline.naive_gan.update(noise_dim=8, generator_num_layers=2, generator_num_units=32,
                              critic_num_layers=2, critic_num_units=32)
  return c


@pytest.fixture(scope="module", params=NAMES)
def run(request, tmp_path_factory):
  """(name, config, training data, workdir, model) of one baseline trained through a workdir."""
  config = small_config(request.param)
  workdir = str(tmp_path_factory.mktemp(request.param))
  return request.param, config, load_dataset(config.data), workdir, train_baseline(config, workdir)


def test_generate_honours_the_schema_lengths_and_seed(run):
  _, _, data, _, model = run
  out = model.generate(N, seed=3)
  assert out.features.shape == (N,) + data.features.shape[1:]
  def described(variables):
    return [(v.name, v.kind, v.categories, v.log1p) for v in variables]
  assert described(out.feature_vars) == described(data.feature_vars)
  assert described(out.attribute_vars) == described(data.attribute_vars)
  t = data.max_length
  assert out.lengths.min() >= 1 and out.lengths.max() <= t
  after = np.arange(t)[None, :] >= out.lengths[:, None]
  assert np.all(out.features[after] == 0) and np.all(out.features[~after][:, 0] > 0)  # traffic > 0
  for j, var in enumerate(out.attribute_vars):
    codes = out.attributes[:, j]
    assert np.all((codes == np.round(codes)) & (codes >= 0) & (codes < len(var.categories)))
  again = model.generate(N, seed=3)
  np.testing.assert_array_equal(again.features, out.features)
  np.testing.assert_array_equal(again.attributes, out.attributes)
  assert not np.array_equal(model.generate(N, seed=4).features, out.features)
  with pytest.raises(ValueError, match="num_samples"):
    model.generate(0)


def test_save_load_and_workdir_round_trips(run, tmp_path):
  name, config, _, workdir, model = run
  want = model.generate(N, seed=1)
  folder = str(tmp_path / "saved")
  model.save(folder)
  model.save(folder)  # over an existing folder: replaced, no temporary folders left behind
  assert os.listdir(tmp_path) == ["saved"]
  for loaded in (type(model).load(folder), load_baseline(workdir), load_baseline(folder)):
    assert type(loaded) is type(model) and loaded.schema == model.schema
    got = loaded.generate(N, seed=1)
    np.testing.assert_array_equal(got.features, want.features)
    np.testing.assert_array_equal(got.attributes, want.attributes)
  assert is_baseline_run(workdir) and not is_baseline_run(str(tmp_path))
  with open(os.path.join(workdir, "config.json")) as fh:
    assert json.load(fh)["baseline"]["name"] == name
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl")) == (name != "hmm")
  assert train_baseline(config, workdir).schema == model.schema  # a finished run is returned as is
  other = small_config(name, seed=7)
  with pytest.raises(ValueError, match="different baseline run"):
    train_baseline(other, workdir)
  wrong = BASELINES["ar" if name != "ar" else "hmm"]
  with pytest.raises(ValueError, match=f"holds a '{name}' baseline"):
    wrong.load(folder)


@pytest.mark.parametrize("run", ["hmm", "ar", "rnn"], indirect=True)  # the naive GAN generates its own
def test_attributes_follow_the_training_rows(run):
  name, _, data, _, model = run
  out = model.generate(N, seed=0)
  if name == "hmm":
    assert set(out.lengths) <= set(data.lengths)  # the empirical length distribution
  train_rows = {tuple(r) for r in data.attributes}
  assert all(tuple(r) in train_rows for r in out.attributes)
  for j, var in enumerate(data.attribute_vars):
    want = np.bincount(data.attributes[:, j].astype(int), minlength=len(var.categories)) / data.num_samples
    got = np.bincount(out.attributes[:, j].astype(int), minlength=len(var.categories)) / out.num_samples
    np.testing.assert_allclose(got, want, atol=0.05)


@pytest.mark.parametrize("run", ["ar", "rnn", "naive_gan"], indirect=True)  # the HMM fits by EM, no loop
def test_training_makes_progress(run):
  """AR/RNN: the teacher-forced loss falls. Naive GAN: the distance between the mean generated and
  the mean real sample (model space) shrinks compared with the untrained generator."""
  name, config, data, _, model = run
  if name != "naive_gan":
    losses = [row["loss"] for row in model.history]
    assert len(losses) == 15 and losses[-1] < 0.7 * losses[0]
    return
  real_mean = flatten(prepare(data, config)[1]).mean(0)

  def distance(model):
    return np.linalg.norm(flatten(model._sample(N, seed=0)[0]).mean(0) - real_mean)

  untrained = NaiveGANBaseline.fit(data, small_config(name, num_steps=0))
  assert distance(model) < 0.75 * distance(untrained)


@pytest.mark.parametrize("name", ["hmm", "ar"])
def test_same_seed_same_fit(name):
  config = small_config(name, num_steps=20)
  data = load_dataset(config.data)
  a, b = (BASELINES[name].fit(data, config).generate(N, seed=0) for _ in range(2))
  np.testing.assert_array_equal(a.features, b.features)


@pytest.mark.parametrize("run", ["ar", "rnn"], indirect=True)
def test_generation_feeds_the_network_what_teacher_forcing_did(run):
  """Without noise and with argmax draws, each generated record R_t (t >= 1) is exactly what the
  teacher-forced network predicts from the generated R_0..R_{t-1}: generation sees training's inputs."""
  _, _, _, _, model = run
  hp = dataclasses.replace(model.hp, noise_scale=0.0, sample_discrete=False)
  meta, schema = model.arrays["meta_rows"][:16], model.schema
  arrays = [model.arrays[k] for k in ("first_mean", "first_scale", "residual_std")]
  records = _rollout(type(model), hp, schema)(model.params, meta, jax.random.key(0), *arrays)
  net = type(model)._net(hp, schema.feature_dim)
  logits = net.apply(model.params, meta, shift_right(records), method="teacher_forced")
  want = sample_record(jax.random.key(1), logits, schema.feature_heads, arrays[2], 0.0, False,
                       *encoding.value_range(schema.normalization))
  np.testing.assert_allclose(records[:, 1:], want[:, 1:], atol=1e-5)


def test_first_record_gaussian_and_inverse_cdf_draws():
  rng = np.random.default_rng(0)
  cov = np.array([[1.0, 0.6], [0.6, 2.0]])
  mean, scale = fit_first_record(rng.multivariate_normal([1.0, -2.0], cov, 20000))
  np.testing.assert_allclose(mean, [1.0, -2.0], atol=0.05)
  np.testing.assert_allclose(scale @ scale.T, cov, atol=0.06)
  cdf = np.array([[0.2, 0.5, 1.0], [0.0, 1.0, 1.0]])
  np.testing.assert_array_equal(_draw(cdf[[0, 0, 0, 1]], np.array([0.1, 0.3, 0.99, 0.5])), [0, 1, 2, 1])


def test_config_errors():
  with pytest.raises(ValueError, match="unknown baseline"):
    baseline_configs.get_config("lstm")
  config = small_config("rnn")
  config.baseline.rnn.num_units = 0
  with pytest.raises(ValueError, match="baseline.rnn"):
    RNNBaseline.fit(load_dataset(config.data), config)
