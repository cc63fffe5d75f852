import numpy as np
import pytest

from dg_jax.data.schema import Dataset, categorical, continuous
from dg_jax.evaluation import memorisation, metrics


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
  missing_b = metrics.total_w1_by_category(real, dataset([[1, 1]], [0]), 0, 0)  # no synthetic series of b
  assert set(missing_b) == {"a", "b"} and missing_b["a"] == pytest.approx(1.0) and np.isnan(missing_b["b"])
  only_a = dataset([[1, 1], [2, 2]], [0, 0])
  assert set(metrics.total_w1_by_category(only_a, synth, 0, 0)) == {"a"}  # keys: the real data's categories


def variability_keys(features):
  names = ("spread_log_ratio", "flat_share_gap", "at_min_gap", "diff1_log_ratio", "diff2_log_ratio")
  return {f"{m}/{f}" for m in names for f in features}


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
                         "jsd/c", "length_w1", "pearson_w1/x,y"} | variability_keys("xy")
  assert all(v == 0 for v in scores.values())
  shifted = two_feature(f + np.where(np.arange(4)[None, :, None] < np.array([4, 2])[:, None, None], 10, 0),
                        lengths=[4, 2])
  assert metrics.evaluate(d, shifted)["midrange_w1/x"] == pytest.approx(10)  # a shift by 10 moves it by 10
  assert metrics.evaluate(d, shifted)["pearson_w1/x,y"] == pytest.approx(0)   # correlation is shift-invariant


def mixed(n=30, t=12, seed=0):
  """Variable-length random walks with a continuous and a categorical attribute."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, t + 1, n)
  f = np.cumsum(rng.normal(size=(n, t, 2)), axis=1).astype(np.float32)
  f[np.arange(t)[None, :] >= lengths[:, None]] = 0
  f[0, :lengths[0], 0] = 0.1  # a constant series, whose mean is not exact in floating point
  attrs = np.stack([rng.integers(0, 2, n), rng.uniform(0, 5, n)], axis=1)
  return Dataset(f, lengths, attrs, (continuous("x"), continuous("y")),
                 (categorical("c", ["a", "b"]), continuous("size")))


def test_mean_autocorrelation_is_the_mean_of_the_series_acfs():
  d = mixed()
  for j in range(2):
    total, count = np.zeros(d.max_length), np.zeros(d.max_length)
    for i in range(d.num_samples):
      acf = metrics.series_autocorrelation(d.features[i, :d.lengths[i], j], d.max_length - 1)
      if acf is not None:
        total[:len(acf)] += acf
        count[:len(acf)] += 1
    want = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    np.testing.assert_allclose(metrics.mean_autocorrelation(d, j, chunk=7), want, rtol=1e-9, atol=1e-12)
  assert metrics.series_autocorrelation(d.features[0, :d.lengths[0], 0], 3) is None


def test_evaluate_keys_and_known_shifts():
  d = mixed()
  scores = metrics.evaluate(d, d, total_by="c")
  want = {"autocorrelation_mse/x", "autocorrelation_mse/y", "midrange_w1/x", "midrange_w1/y", "pearson_w1/x,y",
          "length_w1", "jsd/c", "w1/size", "total_w1/x/c=a", "total_w1/x/c=b", "total_w1/y/c=a", "total_w1/y/c=b"}
  want |= variability_keys("xy")
  assert set(scores) == want and all(v == 0 for v in scores.values())
  assert set(metrics.evaluate(d, d)) == {k for k in want if not k.startswith("total_w1/")}

  bigger = Dataset(d.features, d.lengths, d.attributes + [0, 1.5], d.feature_vars, d.attribute_vars)
  assert metrics.evaluate(d, bigger)["w1/size"] == pytest.approx(1.5)  # a shift by c moves W1 by c

  # Three more (zero) records at the end of every series: every length grows by 3.
  t = d.max_length
  longer = np.zeros((d.num_samples, t + 3, 2), np.float32)
  longer[:, :t] = d.features
  shifted = Dataset(longer, d.lengths + 3, d.attributes, d.feature_vars, d.attribute_vars)
  assert metrics.evaluate(d, shifted)["length_w1"] == pytest.approx(3)

  # Doubling the second feature of category b's series moves its totals, not category a's.
  f = d.features.copy()
  b = d.attributes[:, 0] == 1
  f[b, :, 1] *= 2
  scaled = Dataset(f, d.lengths, d.attributes, d.feature_vars, d.attribute_vars)
  scores = metrics.evaluate(d, scaled, total_by=["c"])
  assert scores["total_w1/y/c=a"] == 0 and scores["total_w1/x/c=b"] == 0
  totals = d.features[b, :, 1].astype(np.float64).sum(1)
  assert scores["total_w1/y/c=b"] == pytest.approx(metrics.wasserstein1(totals, 2 * totals))


def test_variability_known_answers():
  """A flat feature, a jittery one and a doubled one, against smooth sinusoids with a known spread."""
  rng = np.random.default_rng(0)
  t = np.arange(24)
  smooth = np.sin(rng.uniform(0.05, 0.1, (200, 1)) * t + rng.uniform(0, 6, (200, 1)))[..., None]
  real = dataset(smooth, np.zeros(200))
  level = smooth.mean(1, keepdims=True) * np.ones_like(smooth)
  flat = metrics.evaluate(real, dataset(level + 1e-6 * rng.normal(size=smooth.shape), np.zeros(200)))
  assert flat["flat_share_gap/x"] == 1.0 and flat["spread_log_ratio/x"] > np.log(100)
  # most real series constant (median range 0, as MBA's ping loss rate): series moving by 1e-5 of the range of
  # those that vary are flat too, so 80% near-constant generated series match 80% constant real ones
  mostly = np.where(np.arange(200)[:, None, None] < 160, level, smooth)
  wiggle = mostly + 1e-5 * rng.normal(size=smooth.shape) * (np.arange(200)[:, None, None] < 160)
  assert metrics.evaluate(dataset(mostly, np.zeros(200)), dataset(wiggle, np.zeros(200)))["flat_share_gap/x"] == 0
  jitter = smooth + 0.01 * rng.normal(size=smooth.shape)  # 1% noise: invisible in levels, not in 2nd differences
  scores = metrics.evaluate(real, dataset(jitter, np.zeros(200)))
  assert scores["spread_log_ratio/x"] < 0.01 and scores["flat_share_gap/x"] == 0
  # per series: second differences of white noise add 6 sigma^2 to their variance; relative to each series' std
  rough, spread = np.diff(smooth[..., 0], 2, axis=1).std(1), smooth[..., 0].std(1)
  want = np.log(np.median(np.sqrt(rough ** 2 + 6 * 0.01 ** 2) / spread) / np.median(rough / spread))
  assert scores["diff2_log_ratio/x"] == pytest.approx(want, rel=0.1) and scores["diff2_log_ratio/x"] > np.log(1.5)
  doubled = metrics.evaluate(real, dataset(2 * smooth, np.zeros(200)))  # twice the spread, just as smooth
  assert doubled["spread_log_ratio/x"] == pytest.approx(np.log(2))
  assert doubled["diff1_log_ratio/x"] == pytest.approx(0, abs=1e-6) == doubled["diff2_log_ratio/x"]
  assert scores["at_min_gap/x"] == 0 == doubled["at_min_gap/x"]  # one record at a moving series' minimum
  # a loss rate: zero but for one spike of 3 records (as MBA's varying ping loss series), against bumps that
  # rise and fall over the whole series, from and back to 0: the same range, no flat series
  spikes = np.zeros((200, 24, 1))
  spikes[np.arange(200), rng.integers(0, 22, 200)] = 1.0
  spikes += np.roll(spikes, 1, axis=1) + np.roll(spikes, 2, axis=1)
  bumps = np.sin(np.pi * t / 23)[None, :, None] * np.ones((200, 1, 1))
  zeros = metrics.evaluate(dataset(spikes, np.zeros(200)), dataset(bumps, np.zeros(200)))
  assert metrics.at_min_share(dataset(spikes, np.zeros(200)), 0, 0.0) == pytest.approx(21 / 24)
  assert zeros["at_min_gap/x"] == pytest.approx(21 / 24 - 2 / 24) and zeros["flat_share_gap/x"] == 0
  # no real series varies: the share is undefined for the real data, so the key is left out
  reasons = {}
  assert "at_min_gap/x" not in metrics.evaluate(dataset(level, np.zeros(200)), real, reasons=reasons)
  assert reasons["at_min_gap/x"] == metrics.UNDEFINED_BECAUSE["at_min_gap"]
  # fully constant synthetic series: the spread is undefined for it, a failure (NaN), never dropped
  reasons = {}
  assert np.isnan(metrics.evaluate(real, dataset(level, np.zeros(200)), reasons=reasons)["spread_log_ratio/x"])
  assert "failure of the generator" in reasons["spread_log_ratio/x"]


def test_evaluate_rejects_bad_requests():
  d = mixed()
  with pytest.raises(ValueError, match="unknown attribute 'tech'"):
    metrics.evaluate(d, d, total_by="tech")
  with pytest.raises(ValueError, match="'size' is continuous"):
    metrics.evaluate(d, d, total_by="size")
  other = Dataset(d.features, d.lengths, d.attributes, (continuous("x"), continuous("z")), d.attribute_vars)
  other.source = "other.npz"
  with pytest.raises(ValueError, match=r"other.npz: feature variables do not match .*'z'"):
    metrics.evaluate(d, other)


def constant_series(values, t=2):
  """Series that hold one value each over t steps: squared distance between two is t * difference^2."""
  values = np.asarray(values, np.float32)
  return Dataset(np.repeat(values[:, None, None], t, axis=1), np.full(len(values), t), np.zeros((len(values), 1)),
                 (continuous("x"),), (categorical("c", ["a", "b"]),))


def test_nearest_neighbours_known_answers():
  train = constant_series([0, 10, 20])
  idx, dist = memorisation.nearest_neighbours(train, constant_series([20, 1, 14, 10]), scale=False)
  np.testing.assert_array_equal(idx, [2, 0, 1, 1])
  np.testing.assert_array_equal(dist, [0, 2, 32, 0])  # 2 steps * (difference)^2
  rng = np.random.default_rng(0)
  a, b = mixed(40, seed=1), mixed(25, seed=2)
  b.features[7] = a.features[13]  # a copy of a training series
  idx, dist = memorisation.nearest_neighbours(a, b, chunk=4, scale=False)
  brute = ((b.features.reshape(25, 1, -1).astype(np.float64) - a.features.reshape(1, 40, -1)) ** 2).sum(-1)
  np.testing.assert_array_equal(idx, brute.argmin(1))
  np.testing.assert_allclose(dist, brute.min(1), rtol=1e-9)
  assert idx[7] == 13 and dist[7] == 0
  only_y, _ = memorisation.nearest_neighbours(a, b, features=[1])
  assert only_y[7] == 13
  # scale=True: a feature's units no longer matter.
  big_a, big_b = (Dataset(d.features * np.float32([1, 1000]), d.lengths, d.attributes, d.feature_vars,
                          d.attribute_vars) for d in (a, b))
  scaled = memorisation.nearest_neighbours(a, b, scale=True)
  for want, got in zip(scaled, memorisation.nearest_neighbours(big_a, big_b, scale=True)):
    np.testing.assert_allclose(got, want, rtol=1e-5)
  assert not np.array_equal(memorisation.nearest_neighbours(big_a, big_b, scale=False)[0], scaled[0])
  with pytest.raises(ValueError, match=r"have shape \[T, K\] = \[12, 2\]"):
    memorisation.nearest_neighbours(a, constant_series(rng.normal(size=3)))


def test_memorisation_summary_known_answers():
  train, held_out = constant_series([0, 10, 20]), constant_series([1, 11])  # held-out NN distances: 2, 2
  s = memorisation.memorisation_summary(train, constant_series([0, 10, 23]), held_out, scale=False)  # 0, 0, 18
  assert s == {"memorisation/synthetic_median": 0.0, "memorisation/held_out_median": 2.0,
               "memorisation/median_ratio": 0.0, "memorisation/closer_fraction": pytest.approx(2 / 3),
               "memorisation/exact_copy_fraction": pytest.approx(2 / 3),
               "memorisation/distance_w1": pytest.approx(2 / 3 * 2 + 1 / 3 * 16)}
  fresh = memorisation.memorisation_summary(train, constant_series([21, 9]), held_out, scale=False)  # 2, 2: like held-out
  assert fresh["memorisation/median_ratio"] == 1 and fresh["memorisation/closer_fraction"] == 0
  assert fresh["memorisation/distance_w1"] == 0
