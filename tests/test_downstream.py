"""Downstream tasks: classification accuracy, forecasting R^2 and rank correlations, on tiny known data."""
import numpy as np
import pytest

from dg_jax.data.schema import DataError, Dataset, categorical, continuous
from dg_jax.evaluation import downstream, metrics


def labelled(n=40, t=10, seed=0, swap=False):
  """Class 0 series hover near 0, class 1 series near 5: perfectly separable by any single step."""
  rng = np.random.default_rng(seed)
  c = rng.integers(0, 2, n)
  f = (5.0 * c[:, None] + rng.normal(0, 0.3, (n, t)))[..., None].astype(np.float32)
  label = 1 - c if swap else c
  return Dataset(f, np.full(n, t), np.stack([label, rng.uniform(size=n)], 1), (continuous("x"),),
                 (categorical("c", ["low", "high"]), continuous("u")))


def ramps(n=40, t=10, seed=0, noise=0.0):
  """x_t = a + b t: the last records are a linear function of the earlier ones."""
  rng = np.random.default_rng(seed)
  a, b = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
  f = (a + b * np.arange(t) + noise * rng.normal(size=(n, t)))[..., None].astype(np.float32)
  return Dataset(f, np.full(n, t), rng.integers(0, 2, (n, 1)).astype(float), (continuous("x"),),
                 (categorical("c", ["a", "b"]),))


def test_series_matrix_scales_by_the_training_side_and_keeps_padding_zero():
  train = Dataset(np.array([[[1.0], [3.0]], [[5.0], [0.0]]], np.float32), np.array([2, 1]), np.zeros((2, 1)),
                  (continuous("x"),), (categorical("c", ["a"]),))
  mean, std = metrics.feature_scaling(train)  # over valid steps 1, 3, 5
  np.testing.assert_allclose([mean[0], std[0]], [3, np.std([1, 3, 5])])
  np.testing.assert_allclose(downstream.series_matrix(train, mean, std), [[-2 / std[0], 0], [2 / std[0], 0]])


def test_classification_known_answers():
  real, synthetic = labelled(seed=1), labelled(seed=2)
  scores = downstream.classification_scores(synthetic, real, "c")
  assert set(scores) == set(downstream.CLASSIFIERS)
  assert scores["decision_tree"] == 1.0 and min(scores.values()) >= 0.95
  assert downstream.classification_scores(labelled(seed=2, swap=True), real, "c", ["decision_tree"]) == {
      "decision_tree": 0.0}  # labels swapped on the training side: every prediction wrong
  one_class = labelled(seed=2).subset(labelled(seed=2).attributes[:, 0] == 1)
  share = float(np.mean(real.attributes[:, 0] == 1))
  assert downstream.classification_scores(one_class, real, 0) == {m: share for m in downstream.CLASSIFIERS}
  assert downstream.classification_scores(synthetic, real, "c") == scores  # seeded: deterministic
  with pytest.raises(DataError, match="'u' is continuous"):
    downstream.classification_scores(synthetic, real, "u")
  with pytest.raises(DataError, match="unknown attribute 'tech'"):
    downstream.classification_scores(synthetic, real, "tech")
  with pytest.raises(ValueError, match="unknown classifier 'svm'"):
    downstream.classification_scores(synthetic, real, "c", ["svm"])
  relabelled = Dataset(real.features, real.lengths, real.attributes, real.feature_vars,
                       (categorical("c", ["high", "low"]), continuous("u")), source="relabelled")
  with pytest.raises(DataError, match="relabelled: attribute variables do not match"):
    downstream.classification_scores(synthetic, relabelled, "c")


def test_forecasting_known_answers():
  real, synthetic = ramps(seed=1), ramps(seed=2)
  scores = downstream.forecasting_scores(synthetic, real, "x", horizon=3)
  assert set(scores) == set(downstream.REGRESSORS)
  assert scores["linear_regression"] == pytest.approx(1.0, abs=1e-6)  # an exact linear relation
  noise = ramps(seed=2, noise=0.0)
  noise.features[:] = np.random.default_rng(3).normal(size=noise.features.shape)
  assert downstream.forecasting_scores(noise, real, "x", 3, ["linear_regression"])["linear_regression"] < 0.5
  # Only full-length series take part: a shorter series on the test side changes nothing.
  short = ramps(seed=1)
  short.lengths[0] = 5
  short.features[0, 5:] = 0
  assert downstream.forecasting_scores(synthetic, short, "x", 3, ["linear_regression"]) == pytest.approx(
      downstream.forecasting_scores(synthetic, real.subset(np.arange(1, 40)), "x", 3, ["linear_regression"]))
  with pytest.raises(ValueError, match=r"horizon must lie in \[1, T-1 = 9\]"):
    downstream.forecasting_scores(synthetic, real, "x", horizon=10)
  with pytest.raises(DataError, match="unknown feature 'y'"):
    downstream.forecasting_scores(synthetic, real, "y", horizon=3)


def test_rank_correlation_and_split():
  a = {"m1": 0.9, "m2": 0.5, "m3": 0.7}
  assert downstream.rank_correlation(a, {"m1": 0.6, "m2": 0.1, "m3": 0.3}) == pytest.approx(1.0)
  assert downstream.rank_correlation(a, {"m1": 0.1, "m2": 0.6, "m3": 0.3}) == pytest.approx(-1.0)
  assert np.isnan(downstream.rank_correlation(a, {"m1": 1.0, "m2": 1.0, "m3": 1.0}))
  with pytest.raises(ValueError, match="different models"):
    downstream.rank_correlation(a, {"m1": 0.1})
  train, test = downstream.split(ramps(), 0.25, seed=0)
  assert (train.num_samples, test.num_samples) == (30, 10)
  rows = lambda d: {tuple(r) for r in d.features[:, :, 0]}
  assert not rows(train) & rows(test) and len(rows(train) | rows(test)) == 40
  assert rows(downstream.split(ramps(), 0.25, seed=0)[1]) == rows(test)


def test_downstream_scores_keys_and_train_on_real_reference():
  real, test = labelled(seed=1), labelled(seed=3)
  out = downstream.downstream_scores(real, test, real, attribute="c", classifiers=("naive_bayes", "decision_tree"))
  assert set(out) == {f"downstream/{s}/{m}" for s in ("accuracy", "accuracy_real", "accuracy_synthetic")
                      for m in ("naive_bayes", "decision_tree")} | {
                          "downstream/spearman_accuracy", "downstream/spearman_accuracy_tstr"}
  for m in ("naive_bayes", "decision_tree"):  # synthetic = the real training data: TSTR is TRTR
    assert out[f"downstream/accuracy/{m}"] == out[f"downstream/accuracy_real/{m}"]
  data = ramps(noise=0.3)
  out = downstream.downstream_scores(data, ramps(seed=4, noise=0.3), data, feature="x", horizon=3,
                                     regressors=("linear_regression", "kernel_ridge"))
  assert out["downstream/r2/kernel_ridge"] == out["downstream/r2_real/kernel_ridge"]
  assert out["downstream/spearman_r2_tstr"] == pytest.approx(1.0)  # identical scores rank identically
  with pytest.raises(ValueError, match="give an attribute to classify and/or a feature"):
    downstream.downstream_scores(data, data, data)
