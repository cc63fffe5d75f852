"""DP-SGD critics: exact per-example clipping, one noise draw per update, accounting, budgets, resume."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from dg_jax import privacy, sharding
from dg_jax.data import batching, encoding
from dg_jax.data.batching import BatchIterator
from dg_jax.data.loaders import load_dataset
from dg_jax.data.npz_format import save_npz
from dg_jax.data.schema import Dataset
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.checkpoints import save_bundle
from dg_jax.retrain import retrain_attributes_cli
from dg_jax.failures import BadInput
from dg_jax.sampling import choose_generator, load_generator, restore_run
from dg_jax.sweep import Variant, run_sweep
from dg_jax.settings import PrivacyConfig, model_config, privacy_config, train_config
from dg_jax.sharding import DATA
from dg_jax.train import batch_dict, fit_schema_from_config, train_and_evaluate
from dg_jax.train_step import guard, init_replicas, make_train_step, replica
from tests.test_training import _while_depths


def linear_loss(params, x):
  """A loss whose gradient is the example itself: per-example gradients are known exactly."""
  loss = sum(jnp.sum(p * v) for p, v in zip(jax.tree.leaves(params), jax.tree.leaves(x)))
  return loss, loss


def private_grad(examples, l2_clip, noise_multiplier, num_devices, seed=0, weights=None, batch=None, band=None):
  """privacy.private_grad of linear_loss over a mesh of num_devices, examples split over the devices
  (-> gradient, clipped count, and with band=(coefficients, history) the new history)."""
  mesh = sharding.make_mesh(num_devices)
  rows = jax.tree.leaves(examples)[0].shape[0]
  weights = np.ones(rows, np.float32) if weights is None else weights
  params = jax.tree.map(lambda v: jnp.zeros(v.shape[1:]), examples)
  history = None if band is None else band[1]
  fn = jax.shard_map(
      lambda p, x, w, k, h: privacy.private_grad(linear_loss, p, (x,), l2_clip, noise_multiplier, k, batch or rows,
                                                 DATA, w, None if band is None else (band[0], h)),
      mesh=mesh, in_specs=(P(), P(DATA), P(DATA), P(), P()), out_specs=(P(), P(DATA), P(), P()), check_vma=False)
  grad, _, clipped, history = jax.device_get(jax.jit(fn)(params, examples, weights, jax.random.key(seed), history))
  return (grad, clipped) if band is None else (grad, clipped, history)


def test_per_example_clipping_is_exact_and_noise_is_drawn_once():
  rng = np.random.default_rng(0)
  grads = dict(w=rng.normal(size=(8, 3, 2)).astype(np.float32), b=rng.normal(size=(8, 5)).astype(np.float32))
  huge = jax.tree.map(lambda g: g.copy(), grads)
  huge["w"][3] *= 1e6  # one example with an enormous gradient
  clip = 1.5
  flat = np.concatenate([huge["w"].reshape(8, -1), huge["b"]], axis=1)
  scale = np.minimum(1.0, clip / np.linalg.norm(flat, axis=1))
  want = {k: np.tensordot(scale, v, axes=1) / 8 for k, v in huge.items()}
  got, clipped = private_grad(huge, clip, 0.0, 8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
  assert clipped == int((scale < 1).sum()) and clipped >= 1
  # replacing example 3's gradient by a huge one moves the sum of clipped gradients by at most 2 * clip
  base, _ = private_grad(grads, clip, 0.0, 8)
  moved = np.sqrt(sum(np.sum((8 * (got[k] - base[k])) ** 2) for k in got))
  assert 0 < moved <= 2 * clip + 1e-5
  # noise: std noise_multiplier * clip on the sum, the same single draw whatever the device count
  zeros = dict(x=np.zeros((8, 20_000), np.float32))
  one, _ = private_grad(zeros, clip, 2.0, 1, seed=3)
  eight, _ = private_grad(zeros, clip, 2.0, 8, seed=3)
  np.testing.assert_allclose(one["x"], eight["x"], rtol=1e-6)
  assert abs(np.std(8 * one["x"]) / (2.0 * clip) - 1) < 0.03
  # a Poisson batch's padding rows (weight 0), however large, change nothing: neither sum nor noise nor count
  padded = jax.tree.map(lambda g: np.concatenate([g, 1e6 * np.ones_like(g)]), grads)
  weights = np.repeat(np.float32([1, 0]), 8)
  for devices in (1, 8):
    got, clipped = private_grad(padded, clip, 2.0, devices, seed=5, weights=weights, batch=8)
    want, want_clipped = private_grad(grads, clip, 2.0, devices, seed=5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    assert clipped == want_clipped


def test_band_noise_is_the_banded_strategy_inverted_on_independent_draws():
  """DP-BandMF's noise w solves C w = z for the banded Toeplitz C of the coefficients, z being what
  DP-SGD would add at the same steps; one draw on 1 or 8 devices."""
  coefficients = privacy.band_coefficients(50, 3)
  assert len(coefficients) == 3 and np.linalg.norm(coefficients) == pytest.approx(1, abs=1e-5)
  zeros = dict(x=np.zeros((8, 300), np.float32))
  z = np.stack([private_grad(zeros, 1.0, 2.0, 1, seed=s)[0]["x"] for s in range(6)])
  for devices in (1, 8):
    history, w = dict(x=np.zeros((2, 300), np.float32)), []
    for s in range(6):
      grad, _, history = private_grad(zeros, 1.0, 2.0, devices, seed=s, band=(coefficients, history))
      w.append(grad["x"])
    strategy = sum(c * np.eye(6, k=-j) for j, c in enumerate(coefficients))
    np.testing.assert_allclose(strategy @ np.stack(w), z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(history["x"], np.stack(w)[[5, 4]] * 8, rtol=1e-5)  # newest first, before / B
  # summed over the steps, much of the noise cancels: by the norm of 1^T C^-1 against sqrt(6)
  cancelled = np.linalg.norm(np.linalg.solve(strategy.T, np.ones(6))) / np.sqrt(6)
  assert cancelled < 0.8
  assert np.std(np.sum(w, axis=0)) / np.std(np.sum(z, axis=0)) == pytest.approx(cancelled, rel=0.15)


def test_a_rolled_back_replica_restarts_its_band_noise():
  """A replica rolled back (non-finite parameters) keeps its old state but zero DP-BandMF streams; the other keeps
  its new ones."""
  def state(params, band):
    return dict(params=dict(w=params), g_opt=dict(m=np.zeros((2, 1))), d_opt=dict(m=np.zeros((2, 1))),
                step=np.full(2, 5), health=dict(rollbacks=np.zeros(2, np.int32), frozen_at=np.full(2, -1, np.int32)),
                band_noise=dict(w=np.full((2, 1, 1, 3), band)))
  params = np.zeros((2, 3), np.float32)
  params[1, 0] = np.nan
  out = jax.device_get(guard(state(np.ones((2, 3)), 1.0), state(params, 2.0), {}, max_rollbacks=1))
  np.testing.assert_array_equal(out["params"]["w"], [[0, 0, 0], [1, 1, 1]])
  np.testing.assert_array_equal(out["band_noise"]["w"][:, 0, 0], [[2, 2, 2], [0, 0, 0]])
  np.testing.assert_array_equal(out["health"]["rollbacks"], [0, 1])


@pytest.fixture(scope="module")
def setup():
  c = tiny.get_config()
  data = load_dataset(c.data)
  schema = fit_schema_from_config(data, c)
  enc = encoding.encode(data, schema)
  model = DoppelGANger(schema, model_config(c))
  batches = batch_dict(*BatchIterator([enc.features, enc.attributes, enc.additional_attributes], 16, 0,
                                      sampling="independent").next(3))
  return model, train_config(c), batches


def run_steps(model, tc, batches, num_devices, pc=None):
  """3 training steps; -> (state, metrics, compiled HLO text)."""
  mesh = sharding.make_mesh(num_devices)
  state, keys = sharding.place(init_replicas(model, tc, 0, 1, pc), sharding.by_replica(mesh))
  args = (state, sharding.shard_batches(jax.tree.map(lambda x: x[:, None], batches), mesh), keys)
  compiled = jax.jit(make_train_step(model, tc, mesh, pc)).lower(*args).compile()
  state, metrics = jax.device_get(compiled(*args))
  return replica(state, 0), {k: v[:, 0] for k, v in metrics.items()}, compiled.as_text()


def test_dp_step_is_ordinary_training_without_noise_or_clipping_and_adds_one_noise_draw_on_1_or_8_devices(setup):
  model, tc, batches = setup
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)  # noqa: E731
  # no noise, a clip nothing reaches: ordinary training, on 1 device or 8
  plain, m_plain, _ = run_steps(model, tc, batches, 1)
  no_op, m_no_op, hlo = run_steps(model, tc, batches, 8, PrivacyConfig(enabled=True, l2_clip=1e9, noise_multiplier=0.0))
  jax.tree.map(close, plain, no_op)
  for name in m_plain:
    close(m_plain[name], m_no_op[name])
  np.testing.assert_array_equal(m_no_op["clipped_fraction"], 0.0)
  # per-example clipping happens before the one cross-device sum, and never inside the LSTM's loops
  with_reduce = {n: d for n, (d, text) in _while_depths(hlo).items() if "all-reduce" in text}
  assert with_reduce and max(with_reduce.values()) == 1, with_reduce
  # clipped and noisy: the same single draw of noise whatever the device count, every example clipped
  noisy = PrivacyConfig(enabled=True, l2_clip=1e-3, noise_multiplier=1.0)
  one, m_one, _ = run_steps(model, tc, batches, 1, noisy)
  eight, m_eight, _ = run_steps(model, tc, batches, 8, noisy)
  kernel = lambda s: s["params"]["critic"]["params"]["MLP_0"]["Dense_0"]["kernel"]  # noqa: E731
  assert not np.allclose(kernel(plain), kernel(one), atol=1e-5)
  jax.tree.map(close, one, eight)
  np.testing.assert_array_equal(m_one["clipped_fraction"], 1.0)
  np.testing.assert_array_equal(m_eight["clipped_fraction"], 1.0)


def rdp_epsilon(event, delta):
  acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  return acc.compose(event).get_epsilon(delta)


def test_each_critic_round_has_a_band_noise_stream_of_its_own(setup):
  """3 steps in one compiled call (lax.scan), 2 critic rounds: each round's history holds its last two draws
  (an in-place update of the rounds once left the last round a history of copies of its newest draw)."""
  model, tc, batches = setup
  pc = PrivacyConfig(enabled=True, noise_multiplier=1.0, sampling="poisson", capacity=16, bands=3,
                     band_coefficients=(0.8, 0.48, 0.36))
  state, _, _ = run_steps(model, dataclasses.replace(tc, d_rounds=2), batches, 1, pc)
  for h in jax.tree.leaves(state["band_noise"]):  # [rounds, lags, ...]
    assert h.shape[:2] == (2, 2) and np.abs(h[:, 0] - h[:, 1]).min() > 0 and np.abs(h[0] - h[1]).min() > 0


def test_accountant_matches_dp_accounting():
  n, b, sigma, steps, delta = 1000, 100, 1.5, 300, 1e-5
  acc = privacy.Accountant(n, b, sigma, delta, rounds=2)
  direct = dp_accounting.SelfComposedDpEvent(dp_accounting.SampledWithoutReplacementDpEvent(
      n, b, dp_accounting.GaussianDpEvent(sigma / 2 / np.sqrt(2))), steps)
  assert acc.epsilon(steps) == pytest.approx(rdp_epsilon(direct, delta), rel=1e-6)
  assert acc.epsilon(0) == 0 and acc.epsilon(steps // 2) < acc.epsilon(steps)
  # full batches (no subsampling): T steps of a Gaussian of std sigma*clip on a sum whose
  # replace-one sensitivity is 2*clip = one Gaussian of noise multiplier sigma / (2 sqrt(T))
  sigma, steps = 8.0, 4
  full = privacy.Accountant(n, n, sigma, delta)
  gaussian = dp_accounting.GaussianDpEvent(sigma / 2 / np.sqrt(steps))
  assert full.epsilon(steps) == pytest.approx(rdp_epsilon(gaussian, delta), rel=1e-6)
  # RDP bounds the exact Gaussian epsilon (about 2 here) from above, not by much;
  # sampling 1 in 10 amplifies privacy
  exact = dp_accounting.get_epsilon_gaussian(sigma / 2 / np.sqrt(steps), delta)
  assert 1.9 < exact <= full.epsilon(steps) <= 1.15 * exact
  assert privacy.Accountant(n, b, sigma, delta).epsilon(steps) < full.epsilon(steps) / 3
  # releasing several runs on the same data: dp_accounting's composition of their events
  both = dp_accounting.ComposedDpEvent([acc.event(steps), full.event(3)])
  assert privacy.composed([(acc, steps), (full, 3)], delta)[0] == pytest.approx(rdp_epsilon(both, delta))
  assert privacy.composed([(acc, steps)] * 2, delta)[0] == pytest.approx(acc.epsilon(2 * steps))


def test_noise_calibration_and_budget_steps():
  n, b, steps, target = 500, 50, 200, 4.0
  pc = privacy.resolve(PrivacyConfig(enabled=True, target_epsilon=target), n, b, 1, steps)
  sigma, delta = pc.noise_multiplier, pc.delta
  assert delta == privacy.default_delta(n) == 1 / (10 * n)
  acc = privacy.Accountant(n, b, sigma, delta)
  assert 0.98 * target <= acc.epsilon(steps) <= target  # calibrated: spends the budget, not more
  assert privacy.Accountant(n, b, sigma - 0.01, delta).epsilon(steps) > target
  half = acc.epsilon(steps // 2)
  assert acc.max_steps(half, steps) == steps // 2  # the last step within a budget, exactly
  assert acc.max_steps(target, steps) == steps and acc.max_steps(1e-9, steps) == 0
  with pytest.raises(ValueError, match="allows almost no noise"):
    privacy.calibrate_noise(n, b, 1, steps, 1e9, delta)


def test_poisson_accounting_and_capacity():
  n, b, sigma, steps, delta = 1000, 100, 1.5, 300, 1e-5
  untruncated = privacy.Accountant(n, b, sigma, delta, rounds=2, sampling="poisson", capacity=n + 1)
  direct = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
      b / n, dp_accounting.GaussianDpEvent(sigma / np.sqrt(2))), steps)
  add_or_remove = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE).compose(direct)
  rdp_delta = (1 - privacy.TRUNCATION_SHARE) * delta
  assert untruncated.epsilon(steps) == pytest.approx(add_or_remove.get_epsilon(rdp_delta), rel=1e-6)
  assert untruncated.spent_delta(steps) == pytest.approx(rdp_delta)  # n + 1 rows: never truncated
  # add-or-remove neighbours at the same noise: less than replace-one's epsilon
  assert untruncated.epsilon(steps) < privacy.Accountant(n, b, sigma, delta, rounds=2).epsilon(steps)

  # the chosen capacity: the smallest multiple of 8 whose truncation adds at most 1% of delta over
  # the steps of all replicas (3 here); a smaller one set by hand is accounted, over delta
  pc = privacy.resolve(PrivacyConfig(enabled=True, noise_multiplier=sigma, delta=delta, sampling="poisson"),
                       n, b, 2, steps, 3)
  acc = privacy.accountant(pc, n, b, 2)
  assert pc.capacity % 8 == 0 and b < pc.capacity <= 2 * b and acc.epsilon(steps) == untruncated.epsilon(steps)
  assert rdp_delta < acc.spent_delta(3 * steps) <= delta
  tighter = dataclasses.replace(acc, capacity=pc.capacity - 8)
  assert tighter.spent_delta(3 * steps) > delta and tighter.spent_delta(steps) > acc.spent_delta(steps)
  record = privacy.spent_record(acc, steps, 3)
  assert record["neighbouring"] == "add-or-remove" and record["capacity"] == pc.capacity
  assert record["delta"] <= record["delta_all_replicas"] <= delta
  with pytest.raises(ValueError, match="different neighbouring relations"):
    privacy.composed([(acc, steps), (privacy.Accountant(n, b, sigma, delta), steps)], delta)
  # calibrated to a target: spends it (at the RDP part's delta), not more
  target = privacy.resolve(PrivacyConfig(enabled=True, target_epsilon=4.0, sampling="poisson"), n, b, 1, steps)
  assert 0.98 * 4.0 <= privacy.accountant(target, n, b, 1).epsilon(steps) <= 4.0


def test_band_mf_accounting_is_jax_privacy_s():
  """DP-BandMF with b bands: DP-SGD at rate b B/n for ceil(T/b) steps, as jax-privacy's accountant says."""
  from jax_privacy.accounting import accountants, analysis
  n, b, sigma, steps, delta = 1000, 50, 1.2, 30, 1e-5
  ours = lambda bands, runs=1: privacy.Accountant(  # noqa: E731 (delta: the RDP part's is then `delta`)
      n, b, sigma, delta / (1 - privacy.TRUNCATION_SHARE), sampling="poisson", capacity=n + 1,
      bands=bands).epsilon(steps, runs)
  theirs = analysis.DpsgdTrainingAccountant(accountants.RdpAccountantConfig(
      orders=dp_accounting.rdp.RdpAccountant().orders))
  for bands in (1, 4):
    params = analysis.DpParams(noise_multipliers=sigma, num_samples=n, delta=delta, batch_size=b, cycle_length=bands)
    assert ours(bands) == pytest.approx(theirs.compute_epsilon(steps, params), rel=1e-6)
  assert ours(4, runs=2) > ours(4)  # replicas: 2 * ceil(30 / 4) participations, not ceil(60 / 4)
  pc = privacy.resolve(PrivacyConfig(enabled=True, target_epsilon=4.0, sampling="poisson", bands=4), n, b, 1, steps)
  assert len(pc.band_coefficients) == 4 and 0.98 * 4.0 <= privacy.accountant(pc, n, b, 1).epsilon(steps) <= 4.0
  assert privacy.spent_record(privacy.accountant(pc, n, b, 1), steps, 1)["mechanism"].startswith("DP-BandMF, 4 bands")
  with pytest.raises(ValueError, match="privacy.bands=25 times train.batch_size=50 exceeds the 1000"):
    privacy.resolve(dataclasses.replace(pc, bands=25, band_coefficients=()), n, b, 1, steps)


def test_config_errors():
  c = tiny.get_config()
  assert privacy_config(c) == PrivacyConfig()
  c.privacy.enabled = True
  with pytest.raises(ValueError, match="noise_multiplier > 0 or privacy.target_epsilon > 0"):
    privacy_config(c)
  c.privacy.noise_multiplier = 1.0
  c.model.pack = 2
  with pytest.raises(ValueError, match="model.pack=1"):
    privacy_config(c)
  with pytest.raises(ValueError, match="privacy.l2_clip must be finite and > 0"):
    PrivacyConfig(l2_clip=0.0)
  with pytest.raises(ValueError, match="privacy.l2_clip must be finite and > 0"):
    PrivacyConfig(l2_clip=float("inf"))
  with pytest.raises(ValueError, match="privacy.delta must be in"):
    PrivacyConfig(delta=1.0)
  with pytest.raises(ValueError, match="privacy.sampling must be 'fixed' or 'poisson'"):
    PrivacyConfig(sampling="uniform")
  with pytest.raises(ValueError, match="only with privacy.sampling='poisson'"):
    PrivacyConfig(capacity=64)
  with pytest.raises(ValueError, match="DP-BandMF \\(bands > 1\\) needs privacy.sampling='poisson'"):
    PrivacyConfig(bands=4)
  with pytest.raises(ValueError, match="L2 norm at most 1"):
    PrivacyConfig(sampling="poisson", bands=2, band_coefficients=(0.9, 0.6))
  pc = PrivacyConfig(enabled=True, noise_multiplier=1.0)
  with pytest.raises(ValueError, match="not below 1/n"):
    privacy.resolve(dataclasses.replace(pc, delta=0.01), 100, 10, 1, 10)
  with pytest.raises(ValueError, match="batch_size=200 exceeds the 100"):
    privacy.resolve(pc, 100, 200, 1, 10)


def test_independent_sampling():
  x = np.arange(20)
  it = BatchIterator([x, -x], batch_size=5, seed=1, sampling="independent")
  batches = [it.next() for _ in range(400)]
  assert all(len(set(b[0])) == 5 and (b[1] == -b[0]).all() for b in batches)  # without replacement
  resumed = BatchIterator([x], 5, seed=1, start_step=7, sampling="independent").next(2)[0]
  np.testing.assert_array_equal(resumed, [batches[7][0], batches[8][0]])
  # every row is in a batch with probability B/n = 1/4, whatever earlier batches held
  counts = np.bincount(np.concatenate([b[0] for b in batches]), minlength=20)
  assert np.all(np.abs(counts / 400 - 0.25) < 0.1)
  first_epoch = np.concatenate([b[0] for b in batches[:4]])
  assert len(set(first_epoch)) < 20  # not an epoch-wise shuffle
  with pytest.raises(ValueError, match="batch_size=30 distinct rows, but the dataset has only 20"):
    BatchIterator([x], 30, 0, sampling="independent")
  with pytest.raises(ValueError, match="sampling must be one of"):
    BatchIterator([x], 3, 0, sampling="shuffled")


def test_poisson_sampling():
  x = np.arange(200)
  it = BatchIterator([x], batch_size=20, seed=1, sampling="poisson", capacity=40)
  batches = it.next_indices(300)
  assert batches.shape == (300, 40)
  sizes = (batches != batching.PADDING).sum(1)
  for b, size in zip(batches, sizes):  # distinct rows, then padding
    assert len(set(b[:size])) == size and (b[size:] == batching.PADDING).all()
  np.testing.assert_array_equal(batching.mask(batches), batches != batching.PADDING)
  # each row joins each batch with probability B/n = 0.1, independently: Binomial(200, 0.1) sizes
  assert abs(sizes.mean() - 20) < 1.5 and 10 < sizes.var() < 30
  counts = np.bincount(batches[batches >= 0], minlength=200)
  assert abs(counts.mean() / 300 - 0.1) < 0.01 and counts.min() > 10
  resumed = BatchIterator([x], 20, seed=1, start_step=7, sampling="poisson", capacity=40).next_indices(2)
  np.testing.assert_array_equal(resumed, batches[7:9])
  # more sampled rows than the capacity: truncated to it
  small = BatchIterator([x], 20, seed=1, sampling="poisson", capacity=16).next_indices(50)
  assert (small >= 0).sum(1).max() == 16 and small.shape == (50, 16)
  with pytest.raises(ValueError, match="needs a capacity >= 1"):
    BatchIterator([x], 3, 0, sampling="poisson")
  # DP-BandMF's cyclic Poisson sampling: each row in one of 4 groups, joining only steps of its group,
  # at rate 4 B / n there (still B rows per step on average)
  cyclic = BatchIterator([x], 20, seed=1, sampling="poisson", capacity=60, bands=4).next_indices(400)
  rows = cyclic[cyclic >= 0]
  steps_of = [np.flatnonzero((cyclic == row).any(1)) % 4 for row in range(200)]
  assert all(len(set(s)) <= 1 for s in steps_of) and 40 <= sum(len(s) > 0 for s in steps_of[:50])
  assert abs(len(rows) / 400 - 20) < 1.5
  assert abs(np.mean([len(s) for s in steps_of]) / 100 - 0.4) < 0.04  # 100 steps of its group each
  with pytest.raises(ValueError, match="bands=11 needs poisson sampling and bands \\* batch_size <= 200"):
    BatchIterator([x], 20, seed=1, sampling="poisson", capacity=60, bands=11)


def private_config(num_steps, noise=1.0, target=0.0, secret_seed=False):
  """Reproducible (train.seed used as given) unless secret_seed."""
  c = tiny.get_config()
  c.num_devices = 1
  c.train.update(num_steps=num_steps, steps_per_dispatch=5, log_every=5, checkpoint_every=5)
  c.privacy.update(enabled=True, noise_multiplier=noise, target_epsilon=target, secret_seed=secret_seed)
  return c


def test_secret_seed_is_drawn_kept_on_resume_and_left_out_of_bundles(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="dg_jax.train")

  def log_coded_config(num_steps):  # with the log half-range code, whose span a private run does not fit
    c = private_config(num_steps, secret_seed=True)
    c.data.log_half_range = "True"
    c.model.step_critic_weight = 1.0  # whose scale would be fitted on the private series too
    return c
  seeds = []
  for name in ("a", "b"):
    out = train_and_evaluate(log_coded_config(5), str(tmp_path / name))
    seeds.append(json.load(open(tmp_path / name / "config.json"))["train"]["seed"])
  assert seeds[0] != seeds[1] and 0 not in seeds  # drawn, not tiny.py's train.seed=0 (odds 2^-30)
  with caplog.at_level(logging.INFO, logger="dg_jax.train"):
    again = train_and_evaluate(log_coded_config(10), str(tmp_path / "a"))  # resumed
  assert "DP-SGD critics" in caplog.text and "-differentially private after 10 steps" in caplog.text
  # the critics' min/max and level views (model.whiten_levels, aux_critic_levels), the log code's span, the
  # step critic's scale and the floor flags' features would be fitted on the private series: none is
  assert "whiten_levels: off with privacy on" in caplog.text and "aux_critic_levels: off with privacy on" in caplog.text
  assert "log code spans its fixed bounds with privacy on" in caplog.text
  assert "no step critic with privacy on" in caplog.text and "no floor flags with privacy on" in caplog.text
  schema = json.load(open(tmp_path / "a" / "schema.json"))
  assert schema["log_half_bounds"] == [] and schema["step_scale"] == [] == schema["unit_step_scale"]
  assert schema["floored"] == []
  config = json.load(open(tmp_path / "a" / "config.json"))
  assert config["train"]["seed"] == seeds[0] and config["privacy"]["delta"] == pytest.approx(1 / 640)  # 1/(10 n)
  rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [5, 10] and rows[-1]["epsilon"] == pytest.approx(again["epsilon"])
  assert again["epsilon"] > out["epsilon"]
  model, params, config = load_generator(str(tmp_path / "a"))
  assert config.privacy_spent.epsilon == pytest.approx(again["epsilon"]) and config.privacy_spent.steps == 10
  save_bundle(str(tmp_path / "bundle"), params, model.schema, config.to_json())
  shared = json.load(open(tmp_path / "bundle" / "config.json"))
  assert "seed" not in shared["train"] and shared["privacy_spent"]["epsilon"] == pytest.approx(again["epsilon"])

  # metadata-only retraining from the bundle (what a data user holds): the claim says what it covers
  demo = load_dataset(tiny.get_config().data)
  rows = Dataset(np.zeros((20, 1, 2), np.float32), np.ones(20, int), np.tile([[1.0, 1.0]], (20, 1)),
                 demo.feature_vars, demo.attribute_vars)
  save_npz(rows, str(tmp_path / "mix.npz"))
  retrain_attributes_cli(str(tmp_path / "bundle"), str(tmp_path / "mix.npz"), str(tmp_path / "r"), 20, 0)
  claim = json.load(open(tmp_path / "r" / "config.json"))["privacy_spent"]
  assert claim["epsilon"] == pytest.approx(again["epsilon"]) and "original training series" in claim["covers"]
  assert "mix.npz" in claim["not_covered"]


def test_resume_keeps_the_spent_budget_and_stops_within_it(tmp_path, monkeypatch):
  samplings = []

  class RecordingIterator(BatchIterator):
    def __init__(self, *args, **kwargs):
      samplings.append(kwargs.get("sampling"))
      super().__init__(*args, **kwargs)

  monkeypatch.setattr(batching, "BatchIterator", RecordingIterator)  # what train.py's ReplicaBatches builds
  n, b = 64, 16  # configs/tiny.py
  budget = privacy.Accountant(n, b, 1.0, privacy.default_delta(n)).epsilon(10)
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  a = train_and_evaluate(private_config(10, target=budget), straight)
  first = train_and_evaluate(private_config(5, target=budget), split)
  assert first["step"] == 5 and first["epsilon"] < budget
  # asked for 15 steps, it stops at 10: the 11th would spend more than the budget
  b_out = train_and_evaluate(private_config(15, target=budget), split)
  assert a["step"] == b_out["step"] == 10
  assert a["epsilon"] == b_out["epsilon"] == pytest.approx(budget)
  pa, pb = (replica(jax.device_get(restore_run(w)[1]), 0) for w in (straight, split))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa, pb)
  rows = [json.loads(line) for line in open(os.path.join(split, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [5, 10] and rows[-1]["epsilon"] == pytest.approx(budget)
  assert 0 <= rows[-1]["clipped_fraction"] <= 1
  assert samplings == ["independent"] * 3  # what the accountant assumes
  saved = json.load(open(os.path.join(split, "config.json")))["privacy"]
  assert saved["delta"] == privacy.default_delta(n) and saved["noise_multiplier"] == 1.0
  # the accounting assumes fixed settings: a resume that changes them, or drops privacy, is refused
  with pytest.raises(ValueError, match="trained with privacy settings"):
    train_and_evaluate(private_config(15, noise=2.0, target=budget), split)
  plain = private_config(15)
  plain.privacy.enabled = False
  with pytest.raises(ValueError, match="trained with privacy settings"):
    train_and_evaluate(plain, split)
  bigger = private_config(15, target=budget)
  bigger.train.batch_size = 32
  with pytest.raises(ValueError, match="holds a run with train.batch_size=16"):
    train_and_evaluate(bigger, split)


def test_band_mf_run_is_the_same_on_any_placement_and_device_count_and_resumes_exactly(tmp_path):
  """Poisson sampling with DP-BandMF (3 bands; plain Poisson: experiments/dp_pretrain.py's test). The
  coefficients are given: optimised ones depend on the first launch's train.num_steps."""
  def poisson(steps, **overrides):
    c = private_config(steps)
    c.privacy.update(sampling="poisson", bands=3, band_coefficients=(0.8, 0.48, 0.36))
    c.update(overrides)
    return c
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  a = train_and_evaluate(poisson(10), straight)  # batches gathered on the device, 1 device
  first = poisson(5, num_devices=2)
  first.train.data_placement = "host"  # batches (and their masks) built on the host, 2 devices
  train_and_evaluate(first, split)
  b = train_and_evaluate(poisson(10), split)
  assert a["epsilon"] == pytest.approx(b["epsilon"])
  pa, pb = (replica(jax.device_get(restore_run(w)[1]), 0) for w in (straight, split))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5), pa, pb)  # band_noise too
  for h in jax.tree.leaves(pb["band_noise"]):  # [rounds, 2 lags, ...]: two different draws, not one copied
    assert np.abs(h).max() > 0 and np.abs(h[:, 0] - h[:, 1]).min() > 0
  saved = json.load(open(os.path.join(split, "config.json")))["privacy"]
  assert saved["capacity"] % 8 == 0 and 16 < saved["capacity"] <= 64  # tiny: n = 64, B = 16
  assert saved["band_coefficients"] == [0.8, 0.48, 0.36]
  _, _, config = load_generator(split)
  spent = config.privacy_spent
  assert spent.neighbouring == "add-or-remove" and spent.sampling == "poisson" and spent.steps == 10
  assert spent.mechanism.startswith("DP-BandMF, 3 bands")
  assert spent.delta <= privacy.default_delta(64) and spent.epsilon == pytest.approx(b["epsilon"])
  assert all(0 <= json.loads(line)["clipped_fraction"] <= 1 for line in open(os.path.join(split, "metrics.jsonl")))
  uneven = poisson(5, num_devices=8)
  uneven.privacy.capacity = 20
  with pytest.raises(BadInput, match="privacy.capacity=20 must be a multiple of the 8 devices"):
    train_and_evaluate(uneven, str(tmp_path / "uneven"))


def test_k_replicas_are_k_private_runs_with_the_same_accounting(tmp_path):
  """Each replica of a private K=2 run is the private run with its seed (own batches and DP noise), and
  spends what one run spends; scoring (which reads training data outside DP-SGD) is refused."""
  both = private_config(5)
  both.train.num_seeds = 2
  out = train_and_evaluate(both, str(tmp_path / "both"))
  alone = private_config(5)
  alone.train.seed = 1
  single = train_and_evaluate(alone, str(tmp_path / "alone"))
  assert out["epsilon"] == pytest.approx(single["epsilon"])
  pb, pa = (jax.device_get(restore_run(str(tmp_path / w))[1]) for w in ("both", "alone"))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5), replica(pb, 1)["params"],
               replica(pa, 0)["params"])
  scored = private_config(5)
  scored.train.eval_every = 5
  with pytest.raises(ValueError, match="void the guarantee"):
    train_and_evaluate(scored, str(tmp_path / "scored"))

  # the claim: one replica fixed in advance, or all K (any choice made by comparing them)
  accountant = privacy.Accountant(64, 16, 1.0, privacy.default_delta(64))
  _, _, config = load_generator(str(tmp_path / "both"))
  assert config.generated_from.replica == 0 and config.privacy_spent.replicas == 2
  assert config.privacy_spent.epsilon_all_replicas == pytest.approx(accountant.epsilon(10))
  assert accountant.epsilon(10) > out["epsilon"]
  assert "epsilon_all_replicas" in config.privacy_spent.covers
  pb["health"]["frozen_at"] = np.array([3, -1])  # replica 0 diverged: no silent switch to replica 1
  assert choose_generator(pb)[1]["replica"] == 1
  with pytest.raises(BadInput, match="replica 0 diverged.*--seed_index"):
    choose_generator(pb, private=True)
  assert choose_generator(pb, seed_index=1, private=True)[1]["replica"] == 1

  # a sweep over private runs: refused against the training data; else the claim composes every run
  with pytest.raises(BadInput, match="outside DP-SGD"):
    run_sweep(both, str(tmp_path), [Variant("both")])
  save_npz(load_dataset(tiny.get_config().data), str(tmp_path / "public.npz"))
  result = run_sweep(both, str(tmp_path), [Variant("both")], num_samples=16, real_test=str(tmp_path / "public.npz"))
  assert result["privacy"]["epsilon_all_runs"] == pytest.approx(accountant.epsilon(10))
  assert "every private run composed" in (tmp_path / "sweep.md").read_text()
