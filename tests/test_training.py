"""The training step and loop: determinism, 1 vs 8 devices, exact resume, budgets, failures."""
import dataclasses
import itertools
import json
import logging
import os
import re
import signal
import time
import types

import jax
import numpy as np
import pytest

from configs import tiny
from dg_jax import sharding, train_step
from dg_jax import train as train_module
from dg_jax.checkpoints import Checkpointer
from dg_jax.data import encoding
from dg_jax.data.batching import BatchIterator
from dg_jax.data.demo import make_demo
from dg_jax.data.loaders import load_dataset
from dg_jax.data.npz_format import save_npz
from dg_jax.data.schema import continuous
from dg_jax.failures import Preempted
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.settings import model_config, train_config
from dg_jax.sampling import restore_run
from dg_jax.train import batch_dict, expected_end, fit_schema_from_config, train_and_evaluate
from dg_jax.train_step import init_replicas, init_state, learning_rate_scale, make_train_step, replica


def tiny_config(num_devices: int = 0, **train):
  c = tiny.get_config()
  c.train.update(train)
  c.num_devices = num_devices  # 0 = all 8 test devices
  return c


@pytest.fixture(scope="module")
def setup():
  """The tiny model without BatchNorm: several steps on 1 and 8 devices agree to rounding, but with
  pooled BatchNorm statistics (summed in another order) the rounding grows through Adam's normalisation
  past the tolerance in a few parameters by the third step; one BatchNorm step is compared tightly in
  test_metadata_batch_norm_pools_devices_and_keeps_running_averages."""
  c = tiny_config()
  c.model.metadata_batch_norm = False
  data = load_dataset(c.data)
  schema = fit_schema_from_config(data, c)
  enc = encoding.encode(data, schema)
  model = DoppelGANger(schema, model_config(c))
  batches = batch_dict(*BatchIterator([enc.features, enc.attributes, enc.additional_attributes], 16, 0).next(3))
  return model, train_config(c), batches


def run_steps(model, tc, batches, num_devices, seed=0, num_seeds=1):
  """Steps on `batches` ([steps, B, ...], or [steps, K, B, ...] with num_seeds=K); -> (state, metrics),
  those of replica 0 when K = 1."""
  mesh = sharding.make_mesh(num_devices, num_seeds)
  state, keys = init_replicas(model, tc, seed, num_seeds)
  if num_seeds == 1:
    batches = jax.tree.map(lambda x: x[:, None], batches)
  step = jax.jit(make_train_step(model, tc, mesh))
  state, metrics = step(sharding.place(state, sharding.by_replica(mesh)), sharding.shard_batches(batches, mesh),
                        sharding.place(keys, sharding.by_replica(mesh)))
  state, metrics = jax.device_get((state, metrics))
  if num_seeds == 1:
    return replica(state, 0), {k: v[:, 0] for k, v in metrics.items()}
  return state, metrics


def test_one_vs_eight_devices_and_determinism(setup):
  assert jax.device_count() == 8, "tests/conftest.py sets JAX_NUM_CPU_DEVICES=8"
  model, tc, batches = setup
  one, m1 = run_steps(model, tc, batches, 1)
  eight, m8 = run_steps(model, tc, batches, 8)
  again, _ = run_steps(model, tc, batches, 1)
  assert int(one["step"]) == 3
  jax.tree.map(np.testing.assert_array_equal, one, again)  # same seed, same run
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), one, eight)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-3, atol=1e-4)
  init, _ = init_state(model, tc, 0)
  moved = jax.tree_util.tree_map_with_path(lambda p, a, b: (jax.tree_util.keystr(p), not np.allclose(a, b)),
                                           init["params"], one["params"])
  frozen = [p for p, m in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)) if not m]
  # a critic's output bias cancels in E[D(real)] - E[D(fake)] and in its gradients: it never moves
  assert frozen == ["['aux_critic']['params']['MLP_0']['Dense_2']['bias']",
                    "['critic']['params']['MLP_0']['Dense_2']['bias']"], frozen


def _while_depths(hlo: str) -> dict:
  """HLO computation name -> how many while loops enclose it (ENTRY = 0)."""
  comps, name = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m:
      name = m.group(2)
      comps[name] = dict(entry=bool(m.group(1)), text=[])
    elif name:
      comps[name]["text"].append(line)
  depth = {n: 0 for n, c in comps.items() if c["entry"]}
  todo = list(depth)
  while todo:
    n = todo.pop()
    for kind, callee in re.findall(r"(body|condition|calls|to_apply)=%?([\w.\-]+)", "\n".join(comps[n]["text"])):
      d = depth[n] + (kind == "body")
      if callee in comps and depth.get(callee, -1) < d:
        depth[callee] = d
        todo.append(callee)
  return {n: (depth.get(n, 0), "\n".join(c["text"])) for n, c in comps.items()}


def test_gradients_cross_devices_outside_the_lstm_loops(setup):
  model, tc, batches = setup
  mesh = sharding.make_mesh(8)
  state, keys = sharding.place(init_replicas(model, tc, 0, 1), sharding.by_replica(mesh))
  hlo = jax.jit(make_train_step(model, tc, mesh)).lower(
      state, sharding.shard_batches(jax.tree.map(lambda x: x[:, None], batches), mesh), keys).compile().as_text()
  with_reduce = {n: d for n, (d, text) in _while_depths(hlo).items() if "all-reduce" in text}
  assert with_reduce, "the 8-device step must average gradients"
  # depth 1 = the loop over fused training steps; the LSTM rollouts and their backward passes are deeper
  assert max(with_reduce.values()) == 1, with_reduce


def checkpoint_params(workdir):
  return replica(jax.device_get(restore_run(workdir)[1]), 0)


def test_learning_rates_decay_linearly_to_zero_at_the_last_step(setup):
  """train.lr_decay_start=0.5 of 40 steps: from the same fresh state, Adam's first step moves a parameter by
  the learning rate (|m / sqrt(v)| = 1), so the largest move of each weight array is 1e-3 at step 0, half
  of that at step 30 and a twentieth at step 39; at lr_decay_start=1 no decay. With the run's end
  (`horizon`) at 60 instead, 0.7 of it at step 39."""
  model, tc, batches = setup
  tc = dataclasses.replace(tc, num_steps=40, lr_decay_start=0.5)
  np.testing.assert_allclose([learning_rate_scale(s, 40, 0.5) for s in (0, 20, 30, 39, 40)], [1, 1, 0.5, 0.05, 0])
  assert learning_rate_scale(39, 40, 1.0) == 1.0
  mesh = sharding.make_mesh(1)
  start, keys = sharding.place(init_replicas(model, tc, 0, 1), sharding.by_replica(mesh))
  one_step = sharding.shard_batches(jax.tree.map(lambda x: x[:1, None], batches), mesh)
  step = jax.jit(make_train_step(model, tc, mesh))
  moves = {}
  for at, horizon in ((0, 40), (30, 40), (39, 40), (39, 60)):
    state, metrics = step(dict(start, step=start["step"] + at), one_step, keys, np.float32(horizon))
    moves[at, horizon] = np.array(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), state["params"],
                                                               start["params"])))
  assert np.mean(np.isclose(moves[0, 40], tc.learning_rate, rtol=1e-4)) > 0.9  # (a critic's output bias: no gradient)
  for at, horizon, factor in ((30, 40, 0.5), (39, 40, 0.05), (39, 60, 0.7)):
    np.testing.assert_allclose(moves[at, horizon], factor * moves[0, 40], rtol=1e-3)
  np.testing.assert_allclose(metrics["lr_scale"], [[0.7]], rtol=1e-6)  # logged


def test_resume_is_exact(tmp_path):
  """With every critic on: the tiny demo and a smooth wave beside its rough features (model.step_critic_weight:
  the step critic judges the wave alone, its scale fitted once, kept in the schema)."""
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  demo = make_demo(64, 24, seed=0, variable_lengths=True)
  t = np.arange(24)
  wave = (1 + np.sin(t / 4 + np.linspace(0, 6, 64)[:, None])) * (t < demo.lengths[:, None])
  save_npz(dataclasses.replace(demo, features=np.concatenate([demo.features, wave[..., None]], -1),
                               feature_vars=demo.feature_vars + (continuous("wave"),)), str(tmp_path / "data.npz"))

  def config(num_steps):
    c = tiny_config(num_steps=num_steps)
    c.data.path = str(tmp_path / "data.npz")
    c.model.step_critic_weight = 1.0
    return c
  before = train_step._jit_train_step.cache_info()
  train_and_evaluate(config(20), straight)
  train_and_evaluate(config(10), split)
  assert Checkpointer(split).latest_step() == 10
  train_and_evaluate(config(20), split)
  after = train_step._jit_train_step.cache_info()  # one step program for the three (train_step.program_config)
  assert after.misses - before.misses <= 1 and after.hits - before.hits >= 2
  a, b = checkpoint_params(straight), checkpoint_params(split)
  assert int(a["step"]) == int(b["step"]) == 20 and {"critic", "aux_critic", "step_critic"} <= set(a["params"])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
  rows = [json.loads(line) for line in open(os.path.join(split, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [10, 20]
  assert {"d_loss", "g_loss", "w_distance", "aux_w_distance", "step_w_distance", "steps_per_s"} <= set(rows[-1])
  scale = Checkpointer(split).read_metadata(20)[1].step_scale
  assert np.isfinite(rows[-1]["step_w_distance"]) and scale[:2] == (0, 0) and scale[2] > 0


def test_interrupted_save_keeps_the_last_good_checkpoint(tmp_path):
  train_and_evaluate(tiny_config(num_steps=10), str(tmp_path))
  # a save killed half-way leaves Orbax's temporary folder, never a step folder
  partial = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "junk").write_bytes(b"half a file")
  assert Checkpointer(str(tmp_path)).latest_step() == 10
  out = train_and_evaluate(tiny_config(num_steps=20), str(tmp_path))
  assert out["step"] == 20 and Checkpointer(str(tmp_path)).latest_step() == 20


def test_resume_refuses_a_different_model(tmp_path):
  train_and_evaluate(tiny_config(num_steps=5, checkpoint_every=5), str(tmp_path))
  c = tiny_config(num_steps=10)
  c.model.feature_num_units = 12
  c.model.exact_span_at_generation = "false"  # generation only (train.GENERATION_ONLY): not a difference
  with pytest.raises(ValueError, match=r"different config.model \(feature_num_units=16, not 12\)"):
    train_and_evaluate(c, str(tmp_path))


def test_resume_of_a_run_saved_before_a_model_field_existed(tmp_path, monkeypatch):
  """A model field added since a run began (e.g. model.metadata_batch_norm) takes the dataclass default,
  which reproduces the old model: resuming with that value works, another value is refused by name."""
  c = tiny_config(num_devices=1, num_steps=5, checkpoint_every=5)
  c.model.metadata_batch_norm = False
  train_and_evaluate(c, str(tmp_path))
  read = Checkpointer.read_metadata

  def saved_without_the_field(self, step=None):
    config, schema = read(self, step)
    config["model"].pop("metadata_batch_norm", None)
    return config, schema
  monkeypatch.setattr(Checkpointer, "read_metadata", saved_without_the_field)
  c.train.num_steps = 10
  train_and_evaluate(c, str(tmp_path))
  assert Checkpointer(str(tmp_path)).latest_step() == 10
  without = c.copy_and_resolve_references()  # a user's config file that does not name the field either
  del without.model["metadata_batch_norm"]
  without.train.num_steps = 15
  train_and_evaluate(without, str(tmp_path))
  assert Checkpointer(str(tmp_path)).latest_step() == 15
  c.model.metadata_batch_norm = True
  with pytest.raises(ValueError, match=r"\(metadata_batch_norm=False, not True\)"):
    train_and_evaluate(c, str(tmp_path))


def test_wall_clock_budget_anneals_over_launches(tmp_path, monkeypatch, caplog):
  """train.max_minutes far short of num_steps: the learning rates' decay aims at the step the budget is
  expected to stop the run at (expected_end: the rate since the first dispatch was read, compilation
  excluded). The budget counts over all of a run's launches: preempted at three quarters of it, the run
  resumes with the quarter left and its decay goes on where it stopped; once spent, a launch trains
  nothing. The training loop's clock ticks 10 ms per reading (0.6 s of budget: about 40 dispatches), so
  that compilation under load cannot spend the budget."""
  assert expected_end(1000, None, (10, 100.0), 110, 110.0, 700) == 1000  # no budget
  assert expected_end(1000, 150.0, (10, 100.0), 10, 100.0, 700) == 700  # no rate yet: the previous estimate
  assert expected_end(1000, 150.0, (10, 100.0), 110, 110.0, 700) == 510  # 10 steps/s, 40 s left
  assert expected_end(300, 150.0, (10, 100.0), 110, 110.0, 700) == 300
  assert expected_end(1000, 150.0, (10, 100.0), 600, 160.0, 700) == 600  # past the deadline

  def clock(preempt_at=None):
    readings = itertools.count()
    def now():
      i = next(readings)
      if i == preempt_at:  # the scheduler's SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)
      return 1e9 + 0.01 * i
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(time=now, strftime=time.strftime,
                                                                    gmtime=time.gmtime))

  def rows():
    with open(tmp_path / "metrics.jsonl") as fh:
      return [json.loads(line) for line in fh]

  config = tiny_config(num_steps=1_000_000, max_minutes=0.01, lr_decay_start=0.5, log_every=10)
  clock(preempt_at=45)
  with pytest.raises(Preempted) as stopped:
    train_and_evaluate(config, str(tmp_path))
  before = rows()
  assert before[0]["lr_scale"] == 1 and 0.2 < before[-1]["lr_scale"] < 0.9, before
  clock()
  out = train_and_evaluate(config, str(tmp_path))  # the same command, as a scheduler would relaunch it
  after = rows()[len(before):]
  assert stopped.value.step < out["step"] < 2 * stopped.value.step  # the quarter left, not a new budget
  assert Checkpointer(str(tmp_path)).latest_step() == out["step"]
  assert after[0]["lr_scale"] < before[-1]["lr_scale"] + 0.1 and out["lr_scale"] < 0.25, (before[-1], after)
  assert after[0]["seconds"] > before[-1]["seconds"]  # training time over all launches
  clock()
  with caplog.at_level(logging.WARNING):
    assert train_and_evaluate(config, str(tmp_path))["step"] == out["step"]
  assert "train.max_minutes is spent: nothing to train" in caplog.text
  assert Checkpointer(str(tmp_path)).latest_step() == out["step"]


def test_batch_must_divide_over_devices(tmp_path):
  with pytest.raises(ValueError, match="batch_size=12 must be a multiple of the 8 devices"):
    train_and_evaluate(tiny_config(batch_size=12), str(tmp_path))


def test_options_pack_no_aux_rounds_zero_state_exact_span(setup):
  """(exact_span trains here, finite; what it generates: tests/test_model.py)"""
  base, _, batches = setup
  import dataclasses
  from dg_jax.models.doppelganger import sample_noise
  cfg = dataclasses.replace(base.cfg, pack=2, aux_critic=False, initial_state="zero", exact_span=True)
  model = DoppelGANger(base.schema, cfg)
  tc = dataclasses.replace(train_config(tiny_config()), d_rounds=2, g_rounds=3)
  state, metrics = run_steps(model, tc, batches, 8)
  # no auxiliary critic: no parameters, no loss term
  assert "aux_critic" not in state["params"] and "aux_w_distance" not in metrics
  # PacGAN: the critic's first layer reads 2 flattened examples per row
  flat = model.flatten(jax.tree.map(lambda x: x[0], batches)).shape[1]
  assert state["params"]["critic"]["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0] == 2 * flat
  # rounds: 3 steps of 2 critic and 3 generator updates each
  assert int(state["step"]) == 3
  assert int(state["d_opt"][0].count) == 6 and int(state["g_opt"][0].count) == 9
  # zero initial LSTM state: no initial-state noise at all
  noise = sample_noise(jax.random.key(0), 4, model.schema, cfg)
  assert not np.asarray(noise["initial_h"]).any() and not np.asarray(noise["initial_c"]).any()
  assert np.asarray(sample_noise(jax.random.key(0), 4, model.schema, base.cfg)["initial_h"]).std() > 0.5
  assert all(np.isfinite(v).all() for v in metrics.values())
  with pytest.raises(ValueError, match="must be a multiple of model.pack=3"):
    sharding.check_batch_size(16, sharding.make_mesh(8), pack=3)


def test_alpha_weights_only_the_generator_loss(setup):
  """As in the original: each critic trains on its own loss; alpha scales the auxiliary term of the
  generator's loss."""
  import dataclasses
  from dg_jax import losses
  from dg_jax.train_step import critic_params, d_loss_fn, g_loss_fn
  base, tc, batches = setup
  model = DoppelGANger(base.schema, dataclasses.replace(base.cfg, aux_critic_weight=3.0))
  params = model.init(jax.random.key(0))
  from dg_jax.models.doppelganger import sample_noise
  fake = model.flatten(model.generator.apply(params["generator"], sample_noise(jax.random.key(1), 16, model.schema,
                                                                               model.cfg)))
  real = model.flatten(jax.tree.map(lambda x: x[0], batches))
  t = jax.random.uniform(jax.random.key(2), (16,))
  d_params = critic_params(params)
  main = lambda x: model.critic.apply(d_params["critic"], x)  # noqa: E731
  aux = lambda x: model.critic.apply(d_params["aux_critic"], x[:, x.shape[1] - model.meta_dim:])  # noqa: E731
  d_main, _ = losses.critic_loss(main, real, fake, t, tc.gp_weight)
  d_aux, _ = losses.critic_loss(aux, real, fake, t, tc.gp_weight)
  d_total, _ = d_loss_fn(model, tc.gp_weight, d_params, real, fake, t)
  np.testing.assert_allclose(d_total, d_main + d_aux, rtol=1e-5)
  want = losses.generator_loss(main, fake) + 3.0 * losses.generator_loss(aux, fake)
  np.testing.assert_allclose(g_loss_fn(model, d_params, fake), want, rtol=1e-5)


def test_metadata_batch_norm_pools_devices_and_keeps_running_averages(setup):
  """model.metadata_batch_norm: a BatchNorm after each hidden ReLU of both metadata MLPs, as the original.
  Its statistics are pooled over the devices that split a batch (one step on 8 devices gives the 1-device
  gradients and running averages), its running averages (decay 0.9) are updated by every training forward
  and not by the optimiser, and generation uses them, so a sample does not depend on its batch."""
  import dataclasses
  from dg_jax.models.doppelganger import STATS, sample_noise
  base, tc, batches = setup
  model = DoppelGANger(base.schema, dataclasses.replace(base.cfg, metadata_batch_norm=True))
  first = jax.tree.map(lambda x: x[:1], batches)
  one, _ = run_steps(model, tc, first, 1)
  eight, _ = run_steps(model, tc, first, 8)
  assert sorted(one["params"]["generator"][STATS]) == ["additional_mlp", "attribute_mlp"]
  assert STATS not in one["g_opt"][0].mu  # not trained: Adam has no state for them
  grads_and_stats = lambda s: (s["g_opt"][0].mu, s["d_opt"][0].mu, s["params"]["generator"][STATS])  # noqa: E731
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max()),
               grads_and_stats(one), grads_and_stats(eight))

  # the running averages: 0.9 * initial + 0.1 * the batch's statistics of the hidden layer after its ReLU
  variables = model.init(jax.random.key(0))["generator"]
  noise = sample_noise(jax.random.key(1), 32, model.schema, model.cfg)
  _, updated = model.generator.apply(variables, noise, train=True, mutable=[STATS])
  dense = variables["params"]["attribute_mlp"]["Dense_0"]
  hidden = jax.nn.relu(noise["attribute"] @ dense["kernel"] + dense["bias"])
  got = updated[STATS]["attribute_mlp"]["BatchNorm_0"]
  np.testing.assert_allclose(got["mean"], 0.1 * hidden.mean(0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got["var"], 0.9 + 0.1 * hidden.var(0), rtol=1e-5)
  # generating uses the running averages: sample 0 alone equals sample 0 of the batch; training does not
  trained = one["params"]["generator"]
  alone = model.generator.apply(trained, jax.tree.map(lambda x: x[..., :1, :], noise))["attributes"]
  np.testing.assert_allclose(alone[0], model.generator.apply(trained, noise)["attributes"][0], rtol=1e-5, atol=1e-6)
  in_batch, _ = model.generator.apply(trained, noise, train=True, mutable=[STATS])
  assert not np.allclose(in_batch["attributes"][0], alone[0], atol=1e-3)


@pytest.mark.parametrize("field, value", [("seed", 1), ("learning_rate", 5e-4), ("batch_size", 8)])
def test_resume_refuses_a_train_change_that_alters_the_run(tmp_path, field, value):
  train_and_evaluate(tiny_config(num_steps=5, checkpoint_every=5), str(tmp_path))
  with pytest.raises(ValueError, match=f"train.{field}="):
    train_and_evaluate(tiny_config(num_steps=10, **{field: value}), str(tmp_path))


def test_resume_allows_new_budgets_and_keeps_each_launch_config(tmp_path):
  train_and_evaluate(tiny_config(num_steps=5, checkpoint_every=5), str(tmp_path))
  out = train_and_evaluate(tiny_config(num_steps=10, checkpoint_every=5, log_every=5), str(tmp_path))
  assert out["step"] == 10
  history = sorted((tmp_path / "config_history").iterdir())
  assert [p.name.split("_")[-1] for p in history] == ["step0.json", "step5.json"]
  assert [json.loads(p.read_text())["train"]["num_steps"] for p in history] == [5, 10]
  assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 10


def test_checkpoints_round_trip_under_the_rbg_prng(tmp_path):
  previous = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  try:
    c = tiny_config()
    data = load_dataset(c.data)
    schema = fit_schema_from_config(data, c)
    model = DoppelGANger(schema, model_config(c))
    state, key = init_replicas(model, train_config(c), 0, 2)
    assert jax.random.key_data(key).shape == (2, 4)  # rbg keys are 4 words, threefry's 2
    ckpt = Checkpointer(str(tmp_path), writer=True)
    ckpt.save(3, state, key, c.to_json(), schema)
    ckpt.wait()
    state2, key2 = ckpt.restore_arrays(3, jax.eval_shape(lambda: (state, key)))
    ckpt.close()
    assert jax.random.key_impl(key2) == jax.random.key_impl(key)
    np.testing.assert_array_equal(jax.random.key_data(key2), jax.random.key_data(key))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state2), jax.device_get(state))
  finally:
    jax.config.update("jax_default_prng_impl", previous)


def tensorboard_scalars(folder) -> dict:
  """tag -> [(step, value)] from TensorBoard event files (TFRecords of Event protos)."""
  import struct
  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])  # length, its CRC, the record, its CRC
      i += 16 + n
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


def test_tensorboard_scalars_and_profiler_trace(tmp_path):
  train_and_evaluate(tiny_config(num_devices=1, num_steps=10, profile_steps="3,7"), str(tmp_path))
  train_and_evaluate(tiny_config(num_devices=1, num_steps=20), str(tmp_path))  # resumed: the same events grow
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  scalars = tensorboard_scalars(tmp_path / "tensorboard")
  for name in ("d_loss", "g_loss", "w_distance", "aux_w_distance", "steps_per_s"):
    assert [s for s, _ in scalars[f"train/{name}"]] == [10, 20]
    np.testing.assert_allclose([v for _, v in scalars[f"train/{name}"]], [r[name] for r in rows], rtol=1e-6)
  traces = list((tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 1000
  with pytest.raises(ValueError, match="profile_steps='7,3'"):
    train_and_evaluate(tiny_config(num_steps=30, profile_steps="7,3"), str(tmp_path))
