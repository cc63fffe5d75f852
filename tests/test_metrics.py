import numpy as np
import pytest

from dg_jax.data.schema import Dataset, categorical, continuous
from dg_jax.evaluation import metrics


def dataset(features, attributes, lengths=None):
  features = np.asarray(features, np.float32)
  if features.ndim == 2:
    features = features[..., None]
  n, t, _ = features.shape
  return Dataset(features, np.full(n, t) if lengths is None else np.asarray(lengths),
                 np.asarray(attributes, float).reshape(n, -1), (continuous("x"),), (categorical("c", ["a", "b"]),))


def test_autocorrelation_known_answers():
  # alternating series: acf = 1, -(n-1)/n, (n-2)/n, ...
  x = np.array([1, -1] * 5, float)
  np.testing.assert_allclose(metrics.series_autocorrelation(x, 3), [1, -0.9, 0.8, -0.7])
  assert metrics.series_autocorrelation(np.ones(5), 3) is None  # constant series are skipped
  d = dataset([[1, -1, 1, -1], [2, 2, 2, 2], [1, 2, 0, 0]], [0, 0, 1], lengths=[4, 4, 2])
  acf = metrics.mean_autocorrelation(d, 0)
  # series 0: [1, -.75, .5, -.25]; series 2 (length 2, mean 1.5): [1, -.5]; series 1 skipped
  np.testing.assert_allclose(acf, [1, (-.75 - .5) / 2, .5, -.25])


def test_autocorrelation_mse():
  rng = np.random.default_rng(0)
  d = dataset(rng.normal(size=(20, 30)), np.zeros(20))
  assert metrics.autocorrelation_mse(d, d, 0) == 0
  smooth = dataset(np.cumsum(rng.normal(size=(20, 30)), axis=1), np.zeros(20))
  assert metrics.autocorrelation_mse(d, smooth, 0) > 0.05


def test_jsd_known_answers():
  assert metrics.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
  assert metrics.jensen_shannon([3, 1], [3, 1]) == 0.0
  # p = (1/2, 1/2), q = (1, 0): m = (3/4, 1/4); JSD = (KL(p|m) + KL(q|m)) / 2
  want = (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25) + np.log2(1 / 0.75)) / 2
  assert metrics.jensen_shannon([1, 1], [2, 0]) == pytest.approx(want)
  real = dataset(np.ones((4, 2)), [0, 0, 1, 1])
  assert metrics.attribute_jsd(real, real, 0) == 0.0
  assert metrics.attribute_jsd(real, dataset(np.ones((2, 2)), [0, 0]), 0) == pytest.approx(want)


def test_wasserstein1_known_answers():
  assert metrics.wasserstein1([0, 1, 2], [0, 1, 2]) == 0
  assert metrics.wasserstein1([0, 1, 2], [5, 6, 7]) == pytest.approx(5)  # a shift moves it by the shift
  assert metrics.wasserstein1([0], [0, 2]) == pytest.approx(1)
  assert metrics.wasserstein1([0, 0, 0, 4], [0, 4, 4, 4]) == pytest.approx(2)


def test_total_w1_by_category():
  real = dataset([[1, 1], [2, 2], [10, 10]], [0, 0, 1])
  synth = dataset([[1, 1], [2, 2], [11, 11]], [0, 0, 1])
  assert metrics.total_w1_by_category(real, synth, 0, 0) == {"a": 0.0, "b": pytest.approx(2.0)}
  assert metrics.total_w1_by_category(real, dataset([[1, 1]], [0]), 0, 0) == {"a": pytest.approx(1.0)}


def two_feature(features, lengths=None):
  features = np.asarray(features, np.float32)
  n, t, _ = features.shape
  return Dataset(features, np.full(n, t) if lengths is None else np.asarray(lengths), np.zeros((n, 1)),
                 (continuous("x"), continuous("y")), (categorical("c", ["a", "b"]),))


def test_midrange_pearson_and_evaluate():
  f = np.zeros((2, 4, 2), np.float32)
  f[0, :, 0] = [1, 5, 3, 2]
  f[0, :, 1] = [2, 10, 6, 4]     # y = 2x: correlation 1
  f[1, :2, 0] = [4, 8]
  f[1, :2, 1] = [1, 0]           # correlation -1 over its 2 valid steps
  d = two_feature(f, lengths=[4, 2])
  np.testing.assert_allclose(metrics.series_midranges(d, 0), [3, 6])
  np.testing.assert_allclose(metrics.series_pearson(d, 0, 1), [1, -1])
  scores = metrics.evaluate(d, d)
  assert set(scores) == {"autocorrelation_mse/x", "autocorrelation_mse/y", "midrange_w1/x", "midrange_w1/y",
                         "jsd/c", "length_w1", "pearson_w1/x,y"}
  assert all(v == 0 for v in scores.values())
  shifted = two_feature(f + np.where(np.arange(4)[None, :, None] < np.array([4, 2])[:, None, None], 10, 0),
                        lengths=[4, 2])
  assert metrics.evaluate(d, shifted)["midrange_w1/x"] == pytest.approx(10)  # a shift by 10 moves it by 10
  assert metrics.evaluate(d, shifted)["pearson_w1/x,y"] == pytest.approx(0)   # correlation is shift-invariant
