"""The training-time score cannot be fooled: failed generators score worst, scores are comparable
between scorings, and copies of any training series are seen."""
import dataclasses

import jax
import numpy as np
import pytest

from dg_jax import scoring
from dg_jax.data import encoding
from dg_jax.data.demo import make_demo
from dg_jax.data.schema import Dataset, continuous
from dg_jax.evaluation import metrics
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.settings import model_config, train_config
from dg_jax.train_step import init_replicas
from test_training import tiny_config


@pytest.fixture(scope="module")
def demo_scorer():
  c = tiny_config()
  data = make_demo(60, 24, seed=1)
  model = DoppelGANger(encoding.fit_schema(data), model_config(c))
  reference, train = data.subset(np.arange(20)), data.subset(np.arange(20, 60))
  scorer = scoring.Scorer.build(model, 40, reference, train, True)
  return scorer, make_demo(40, 24, seed=2), jax.jit(scorer.metrics)


def scored(demo_scorer, features=None, attributes=None):
  scorer, sample, metrics = demo_scorer
  decoded = (sample.features if features is None else features, sample.lengths,
             sample.attributes if attributes is None else attributes)
  return jax.device_get(metrics(tuple(np.asarray(x, np.float32) for x in decoded), scorer.reference))


def test_failed_generators_score_worst(demo_scorer):
  """An honest sample (fresh demo series) scores finite; a constant one, a NaN one and one with a single
  category where the data has several fail and score inf, so none can become the best."""
  _, sample, _ = demo_scorer
  honest = scored(demo_scorer)
  assert honest["failed"] == 0 and np.isfinite(honest["score"])
  constant = np.where(sample.valid_steps[..., None], 5.0, 0.0) * np.ones_like(sample.features)
  nan = np.full_like(sample.features, np.nan)
  one_category = sample.attributes.copy()
  one_category[:, 0] = 0
  for bad in (scored(demo_scorer, features=constant), scored(demo_scorer, features=nan),
              scored(demo_scorer, attributes=one_category)):
    assert bad["failed"] == 1 and bad["score"] == np.inf
  # the constant sample is flat in every series; the honest one in none
  assert scored(demo_scorer, features=constant)["flat_share/latency_ms"] == 1 and honest["flat_share/latency_ms"] == 0


def test_the_share_of_records_at_the_minimum_is_logged(demo_scorer):
  """at_min/<f>: as metrics.at_min_share; a series at 0 but for a spike of 3 records has all the others there,
  and the log names the feature."""
  scorer, sample, _ = demo_scorer
  spikes = np.zeros_like(sample.features)
  spikes[:, 5:8, 0] = 1e6
  spikes[:, :, 1] = sample.features[:, :, 1]
  got = scored(demo_scorer, features=spikes)
  moving = sample.lengths > 5  # the spike within the series
  assert got["at_min/traffic_bytes"] == pytest.approx(np.median(1 - np.minimum(sample.lengths[moving] - 5, 3)
                                                                / sample.lengths[moving]))
  assert got["at_min/traffic_bytes"] == pytest.approx(metrics.at_min_share(
      dataclasses.replace(sample, features=spikes), 0, float(scorer.reference["flat_tolerance"][0])))
  honest = scored(demo_scorer)  # a real series of the demo moves: one record at its minimum
  raised = scorer.alarms({k: np.array([honest[k], got[k]]) for k in honest})
  assert [key for key in raised if key[2] == "at the minimum" or key[0] == 0] == [(1, "traffic_bytes", "at the minimum")]
  assert raised[1, "traffic_bytes", "at the minimum"].startswith(
      "replica 1: traffic_bytes: its varying generated series sit at their minimum for 8")


def test_the_log_names_a_collapsing_or_jittery_feature(demo_scorer):
  """Replica 0 honest, replica 1 with a flat latency_ms, replica 2 with jitter on traffic_bytes: the alarms
  name exactly those, and the jitter raises the score's roughness term."""
  scorer, sample, _ = demo_scorer
  honest = scored(demo_scorer)
  flat, jitter = sample.features.copy(), sample.features.copy()
  flat[..., 1] = np.where(sample.valid_steps, sample.features[..., 1].mean(1, keepdims=True), 0)
  rng = np.random.default_rng(0)
  jitter[..., 0] *= np.exp(rng.normal(0, 1.0, jitter.shape[:2]))
  runs = [honest, scored(demo_scorer, features=flat), scored(demo_scorer, features=jitter)]
  raised = scorer.alarms({k: np.array([r[k] for r in runs]) for k in honest})
  assert (1, "latency_ms", "collapse") in raised and not [key for key in raised if key[0] == 0]
  alarms = list(raised.values())
  assert not [a for a in alarms if a.startswith("replica 0")]
  assert any(a.startswith("replica 1: latency_ms is flat in 100% of the generated series (0% of the reference's): "
                          "the feature is collapsing") for a in alarms)
  assert any(a.startswith("replica 2: traffic_bytes: spread of second differences (roughness) off by a factor")
             for a in alarms)
  assert runs[2]["diff2_log_ratio/traffic_bytes"] > honest["diff2_log_ratio/traffic_bytes"] + np.log(1.5)


def test_two_scorings_of_one_generator_agree_and_a_better_score_must_be_confirmed(demo_scorer):
  """Common random numbers: scoring the same generator twice, at different steps, gives the same score.
  A first scoring keeps the generator only through its confirming score, which it reports."""
  scorer = demo_scorer[0]
  state = init_replicas(scorer.model, train_config(tiny_config()), 0, 2)[0]
  score = jax.jit(scorer.score)
  once, m1, _ = score(state, scorer.reference)
  twice, m2, _ = score(dict(once, step=once["step"] + 100), scorer.reference)
  np.testing.assert_array_equal(m1["score"], m2["score"])
  first = jax.device_get(once["best"])
  kept = np.isfinite(m1["confirmed"])
  np.testing.assert_array_equal(first["score"][kept], m1["confirmed"][kept])
  np.testing.assert_array_equal(first["screen"][kept], m1["score"][kept])
  # the same generator again is no better than itself: nothing to confirm, nothing changes
  assert not np.isfinite(m2["confirmed"]).any()
  np.testing.assert_array_equal(jax.device_get(twice["best"]["score"]), first["score"])


def test_a_copy_of_any_training_series_is_caught():
  """The memorisation ratio compares with every training series, not the first MEMORISATION_QUERIES:
  copies of series 2100..2139 of 2500 give a ratio of 0, and the score pays the full penalty."""
  rng = np.random.default_rng(0)
  n, t = 2500, 4
  feats = rng.normal(size=(n, t, 1)).astype(np.float32)
  data = Dataset(feats, np.full(n, t), np.zeros((n, 0)), (continuous("x"),), ()).validate()
  model = DoppelGANger(encoding.fit_schema(data), model_config(tiny_config()))
  held_out, train = data.subset(np.arange(100)), data.subset(np.arange(100, n))
  scorer = scoring.Scorer.build(model, 40, held_out, train, True)
  metrics = jax.jit(scorer.metrics)
  copies = train.features[2100:2140]
  fresh = rng.normal(size=copies.shape).astype(np.float32)
  copied, unseen = (jax.device_get(metrics((x, np.full(40, t), np.zeros((40, 0), np.float32)), scorer.reference))
                    for x in (copies, fresh))
  assert copied["memorisation_ratio"] == 0 and 0.5 < unseen["memorisation_ratio"] < 2
  assert copied["score"] > unseen["score"] + 0.4
