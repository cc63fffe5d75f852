"""K seeds as one program (train.num_seeds), scoring while training, and choosing what to generate from."""
import dataclasses
import json
import logging
import re

import jax
import numpy as np
import pytest

from dg_jax import scoring
from dg_jax.checkpoints import load_bundle
from dg_jax.data import encoding
from dg_jax.data.loaders import load_dataset
from dg_jax.evaluation import memorisation, metrics
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.sampling import generate_encoded, load_generator, restore_run
from dg_jax.settings import model_config
from dg_jax.train import fit_schema_from_config, train_and_evaluate
from dg_jax.train_step import replica
from conftest import run_cli, start_cli
from test_training import run_steps, setup, tiny_config  # noqa: F401  (setup: a fixture)

close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)  # noqa: E731


@pytest.mark.parametrize("num_devices", [1, 4])
def test_replica_k_is_the_run_with_seed_plus_k(setup, num_devices):
  """Two replicas in one vmapped step (1 device: both on it; 4 devices: one per 2-device half of the
  mesh) compute what two separate runs with seeds 0 and 1 compute, each on as many devices as a replica
  has (the batch split the same way: another split sums in another order, rounding that Adam's
  normalisation can grow past the tolerance)."""
  model, tc, batches = setup
  from dg_jax.data.batching import BatchIterator
  enc = encoding.encode(load_dataset(tiny_config().data), model.schema)
  arrays = [enc.features, enc.attributes, enc.additional_attributes]
  per_seed = [dict(zip(batches, BatchIterator(arrays, 16, s).next(3))) for s in (0, 1)]
  stacked = jax.tree.map(lambda a, b: np.stack([a, b], 1), *per_seed)
  both, m_both = run_steps(model, tc, stacked, num_devices, seed=0, num_seeds=2)
  for k in (0, 1):
    alone, m_alone = run_steps(model, tc, per_seed[k], max(1, num_devices // 2), seed=k)
    jax.tree.map(close, replica(both, k), alone)
    for name in m_alone:
      np.testing.assert_allclose(m_both[name][:, k], m_alone[name], rtol=1e-3, atol=1e-4)
  assert not np.allclose(both["params"]["generator"]["params"]["heads"]["kernel"][0],
                         both["params"]["generator"]["params"]["heads"]["kernel"][1])


def test_replicas_with_their_own_hyperparameters_are_the_runs_with_those_settings(setup):
  """train.per_replica: replica 1 of a two-replica program with its own learning rate, beta1,
  gradient-penalty and auxiliary-critic weights computes what a one-seed run (seed 1) with those settings
  computes; replica 0 keeps the config's values."""
  model, tc, batches = setup
  from dg_jax.data.batching import BatchIterator
  enc = encoding.encode(load_dataset(tiny_config().data), model.schema)
  arrays = [enc.features, enc.attributes, enc.additional_attributes]
  per_seed = [dict(zip(batches, BatchIterator(arrays, 16, s).next(3))) for s in (0, 1)]
  stacked = jax.tree.map(lambda a, b: np.stack([a, b], 1), *per_seed)
  own = {"train.learning_rate": 3e-3, "train.beta1": 0.9, "train.gp_weight": 5.0, "model.aux_critic_weight": 0.25}
  per_replica = {field: [getattr(tc if field.startswith("train") else model.cfg, field.split(".")[1]), value]
                 for field, value in own.items()}
  grouped = dataclasses.replace(tc, num_seeds=2, per_replica=json.dumps(per_replica))
  both, _ = run_steps(model, grouped, stacked, 1, seed=0, num_seeds=2)
  alone_tc = dataclasses.replace(tc, learning_rate=3e-3, beta1=0.9, gp_weight=5.0)
  alone_model = DoppelGANger(model.schema, dataclasses.replace(model.cfg, aux_critic_weight=0.25))
  jax.tree.map(close, replica(both, 1), run_steps(alone_model, alone_tc, per_seed[1], 1, seed=1)[0])
  jax.tree.map(close, replica(both, 0), run_steps(model, tc, per_seed[0], 1, seed=0)[0])
  with pytest.raises(ValueError, match="train.per_replica: train.batch_size cannot differ"):
    dataclasses.replace(tc, num_seeds=2, per_replica='{"train.batch_size": [1, 2]}')
  with pytest.raises(ValueError, match="needs train.num_seeds=2 finite numbers"):
    dataclasses.replace(tc, num_seeds=2, per_replica='{"train.learning_rate": [1e-3]}')


def params_at(workdir, k):
  return replica(jax.device_get(restore_run(str(workdir))[1]), k)["params"]


def test_k_seeds_train_resume_and_match_single_runs(tmp_path):
  """The whole loop: K=2 over a ('seeds'=2, 'data'=2) mesh, resumed halfway, equals the straight run,
  and its replica 1 equals a one-seed run with seed 1 (its own batches, noise and initialisation) on as many
  devices as a replica has."""
  straight, split, single = tmp_path / "straight", tmp_path / "split", tmp_path / "single"
  out = train_and_evaluate(tiny_config(4, num_seeds=2), str(straight))
  assert isinstance(out["d_loss"], list) and len(out["d_loss"]) == 2
  train_and_evaluate(tiny_config(4, num_seeds=2, num_steps=10), str(split))
  train_and_evaluate(tiny_config(4, num_seeds=2), str(split))
  train_and_evaluate(tiny_config(2, seed=1), str(single))
  for k in (0, 1):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_at(split, k),
                 params_at(straight, k))
  jax.tree.map(close, params_at(straight, 1), params_at(single, 0))
  rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [10, 20] and len(rows[-1]["w_distance"]) == 2
  with pytest.raises(ValueError, match="train.num_seeds=2"):
    train_and_evaluate(tiny_config(4, num_seeds=3, num_steps=30), str(straight))


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
  """K=2, scored every 5 steps against a held-out slice of 20 of 200 series."""
  workdir = tmp_path_factory.mktemp("scored")
  c = tiny_config(1, num_seeds=2, eval_every=5, eval_samples=50, keep_checkpoints=4, checkpoint_every=5)
  c.data.demo.num_samples = 200
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger("dg_jax").addHandler(handler)
  try:
    train_and_evaluate(c, str(workdir))
  finally:
    logging.getLogger("dg_jax").removeHandler(handler)
  return workdir, c, [r.getMessage() for r in records]


def test_scores_are_logged_per_replica_and_the_best_generator_is_kept(scored_run):
  workdir, _, log = scored_run
  # a scoring alarm is logged when it starts, then not again until a line says it has ended
  state, alarm = {}, re.compile(r"scoring at step \d+: replica (\d+): (\w+)(?: is flat|: (within-series spread|"
                                 r"spread of second differences \(roughness\)|collapse) (off|within))")
  for line in log:
    m = alarm.match(line)
    if m:
      key, starts = (m[1], m[2], m[3] or "collapse"), m[4] != "within"
      assert state.get(key, False) != starts, line
      state[key] = starts
  assert state, "the tiny run raises no alarm to test with"
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  scored = [r for r in rows if "score/score" in r]
  assert [r["step"] for r in scored] == [5, 10, 15, 20]
  for name in ("score/autocorrelation_mse/traffic_bytes", "score/midrange_w1/latency_ms", "score/length_w1",
               "score/jsd/region", "score/memorisation_ratio"):
    assert all(len(r[name]) == 2 and all(np.isfinite(r[name])) for r in scored), name
  assert all(r["score/failed"] == [0.0, 0.0] for r in scored)
  # the rule: a screening score below the best's is confirmed on a larger fixed sample, and kept if that beats
  # the best's confirming score (replayed from the log: null = no confirmation was needed)
  best = [dict(screen=np.inf, score=np.inf, step=0) for _ in range(2)]
  for r in scored:
    for k in range(2):
      confirmed = r["score/confirmed"][k]
      if r["score/score"][k] < best[k]["screen"]:
        assert confirmed is not None
        if confirmed < best[k]["score"]:
          best[k] = dict(screen=r["score/score"][k], score=confirmed, step=r["step"])
  state = jax.device_get(restore_run(str(workdir))[1])
  for name in ("screen", "score", "step"):
    np.testing.assert_allclose(state["best"][name], [b[name] for b in best], rtol=1e-6)
  # the best generator of replica k is the one it had at its best step: that checkpoint's generator
  for k in (0, 1):
    at_best = replica(jax.device_get(restore_run(str(workdir), int(state["best"]["step"][k]))[1]), k)
    jax.tree.map(np.testing.assert_array_equal, replica(state["best"]["generator"], k),
                 at_best["params"]["generator"])


def test_generate_from_the_best_replica_or_the_one_asked_for(scored_run, tmp_path):
  workdir = scored_run[0]
  state = jax.device_get(restore_run(str(workdir))[1])
  best_k = int(np.argmin(state["best"]["score"]))
  _, params, config = load_generator(str(workdir))
  assert config.generated_from.to_dict() == dict(replica=best_k, checkpoint="best",
                                                 step=int(state["best"]["step"][best_k]),
                                                 best_score=pytest.approx(float(state["best"]["score"][best_k])))
  jax.tree.map(np.testing.assert_array_equal, params, replica(state["best"]["generator"], best_k))
  _, params, config = load_generator(str(workdir), seed_index=1 - best_k, checkpoint="latest")
  assert config.generated_from.replica == 1 - best_k and config.generated_from.step == 20
  jax.tree.map(np.testing.assert_array_equal, params, replica(state["params"]["generator"], 1 - best_k))
  _, params, config = load_generator(str(workdir), seed_index=0, checkpoint="10")
  assert config.generated_from.checkpoint == "step" and config.generated_from.step == 10
  with pytest.raises(ValueError, match="2 replica"):
    load_generator(str(workdir), seed_index=2)
  with pytest.raises(ValueError, match="no checkpoint of step 7"):
    load_generator(str(workdir), checkpoint="7")
  with pytest.raises(ValueError, match="expected one of"):
    load_generator(str(workdir), checkpoint="newest")


def test_export_records_the_chosen_replica_and_checkpoint(scored_run, tmp_path):
  workdir = scored_run[0]
  log = run_cli("--mode=export", f"--workdir={workdir}", f"--bundle={tmp_path / 'b'}", "--seed_index=1",
                "--checkpoint=latest")
  assert "replica 1 of 2, the latest generator (step 20)" in log
  params, _, config = load_bundle(str(tmp_path / "b"))
  assert config["generated_from"]["replica"] == 1 and config["generated_from"]["checkpoint"] == "latest"
  state = jax.device_get(restore_run(str(workdir))[1])
  jax.tree.map(np.testing.assert_array_equal, params, replica(state["params"]["generator"], 1))
  bad = start_cli("--mode=generate", f"--workdir={workdir}", f"--output={tmp_path / 'x.npz'}", "--seed_index=5")
  _, err = bad.communicate(timeout=300)
  assert bad.returncode != 0 and "--seed_index=5, but the run has 2 replica(s)" in err and "Traceback" not in err


def test_tensorboard_has_per_replica_scalars_and_sample_figures(scored_run):
  from test_training import tensorboard_scalars
  workdir = scored_run[0]
  tags = tensorboard_scalars(workdir / "tensorboard")
  for k in (0, 1):
    assert [s for s, _ in tags[f"train/score/score/replica_{k}"]] == [5, 10, 15, 20]
    assert [s for s, _ in tags[f"train/d_loss/replica_{k}"]] == [5, 10, 15, 20]
  events = b"".join(p.read_bytes() for p in (workdir / "tensorboard").iterdir())
  assert b"samples/replica_0" in events and b"samples/replica_1" in events and b"\x89PNG" in events


def test_on_device_metrics_agree_with_the_evaluation_module(scored_run):
  """The jitted scores of one replica's samples equal metrics.py's and memorisation.py's on the same
  samples decoded on the host."""
  workdir, c, _ = scored_run
  data = load_dataset(c.data)
  train, held_out = scoring.split_holdout(data, c.train.eval_holdout)
  assert held_out.num_samples == 20 and train.num_samples == 180
  model, params, _ = load_generator(str(workdir))
  enc = generate_encoded(model, params, 60, seed=3)
  sample = dict(features=enc.features, attributes=enc.attributes, additional_attributes=enc.additional_attributes)
  scorer = scoring.Scorer.build(model, 60, held_out, train, True)
  got = jax.device_get(jax.jit(lambda s, r: scorer.metrics(scoring.decode(s, model.schema), r))(
      sample, scorer.reference))
  synthetic = encoding.decode(enc, model.schema)
  want = metrics.evaluate(held_out, synthetic)
  for name in scorer.names():
    np.testing.assert_allclose(got[name], want[name], rtol=2e-3, atol=1e-6, err_msg=name)
  for j, var in enumerate(held_out.feature_vars):  # logged beside the score (zero-inflated series)
    if not var.is_categorical:
      share = metrics.at_min_share(synthetic, j, metrics.flat_tolerance(held_out, j))
      np.testing.assert_allclose(got[f"at_min/{var.name}"], share, atol=0.02, err_msg=var.name)
  memo = memorisation.memorisation_summary(train, synthetic, held_out)
  np.testing.assert_allclose(got["memorisation_ratio"], memo["memorisation/median_ratio"], rtol=1e-3)
  # decoded on device as on the host
  features, lengths, attributes = jax.device_get(scoring.decode(sample, model.schema))
  np.testing.assert_array_equal(lengths, synthetic.lengths)
  np.testing.assert_allclose(features, synthetic.features, rtol=1e-4, atol=1e-3 * np.abs(synthetic.features).max())
  np.testing.assert_array_equal(attributes, synthetic.attributes)


def test_categorical_feature_jsd_on_device():
  from dg_jax.data.schema import Dataset, categorical
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 9, 40)
  codes = rng.integers(0, 3, (40, 8, 1)).astype(np.float32) * (np.arange(8)[None, :, None] < lengths[:, None, None])
  data = Dataset(codes, lengths, np.zeros((40, 0)), (categorical("state", ["a", "b", "c"]),), ())
  schema = encoding.fit_schema(data)
  model = DoppelGANger(schema, model_config(tiny_config()))
  other = data.subset(np.arange(20))
  enc = encoding.encode(other, schema)
  scorer = scoring.Scorer.build(model, 20, data, data, False)
  got = jax.device_get(scorer.metrics(scoring.decode(dict(features=enc.features, attributes=enc.attributes,
                                                          additional_attributes=enc.additional_attributes),
                                                     schema), scorer.reference))
  hist = lambda d: np.bincount(d.features[:, :, 0][d.valid_steps].astype(int), minlength=3)  # noqa: E731
  np.testing.assert_allclose(got["jsd/state"], metrics.jensen_shannon(hist(data), hist(other)), rtol=1e-4)
  np.testing.assert_allclose(got["length_w1"], metrics.wasserstein1(data.lengths, other.lengths), rtol=1e-5)
  # with no held-out series, memorisation is measured leave-one-out: copies of training series score 0
  assert got["memorisation_ratio"] == 0 and np.isfinite(got["score"])


def test_composite_score_penalises_memorisation():
  """A replica that copies training series (ratio 0) scores worse than one that sits as far from the
  training data as unseen series do (ratio 1), all else equal."""
  c = tiny_config()
  data = load_dataset(c.data)
  model = DoppelGANger(fit_schema_from_config(data, c), model_config(c))
  scorer = scoring.Scorer.build(model, 10, data, data, False)
  base = {name: 0.01 for name in scorer.names()}
  ref = scorer.reference
  fair = float(scorer.composite(dict(base, memorisation_ratio=1.0), ref))
  copying = float(scorer.composite(dict(base, memorisation_ratio=0.0), ref))
  assert copying == pytest.approx(fair + 1.0)
  assert float(scorer.composite(dict(base, memorisation_ratio=2.0), ref)) == pytest.approx(fair)


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_the_step_compiles_once_and_gathers_on_device_what_the_host_would_feed(setup, num_seeds):
  """The output state is laid out as the input (P('seeds') even on a one-device seeds axis), so the
  second dispatch reuses the first one's executable; with the data on device (train.data_placement)
  the step gathers the batches the host path copies in, and computes the same."""
  from dg_jax import sharding
  from dg_jax.data.batching import ReplicaBatches
  from dg_jax.data.feed import Feed
  from dg_jax.train import batch_dict
  from dg_jax.train_step import init_replicas, jit_train_step
  model, tc, _ = setup
  enc = encoding.encode(load_dataset(tiny_config().data), model.schema)
  mesh = sharding.make_mesh(2, num_seeds)
  states = {}
  for placement in ("host", "device"):
    feed = Feed(batch_dict(enc.features, enc.attributes, enc.additional_attributes),
                ReplicaBatches([enc.features], tc.batch_size, 0, num_seeds), mesh, placement)
    state, keys = sharding.place(init_replicas(model, tc, 0, num_seeds), sharding.by_replica(mesh))
    step = jit_train_step(model, tc, mesh, gather=feed.gather)
    for _ in range(2):
      state, _, health = step(state, *feed.next(3), keys)
    assert step._cache_size() == 1 and feed.on_device == (placement == "device")
    np.testing.assert_array_equal(jax.device_get(health["frozen_at"]), [-1] * num_seeds)
    states[placement] = jax.device_get(state)
  jax.tree.map(close, states["host"], states["device"])
