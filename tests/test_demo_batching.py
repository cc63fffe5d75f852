import numpy as np
import pytest

from dg_jax.data import encoding
from dg_jax.data.batching import BatchIterator, ReplicaBatches
from dg_jax.data.demo import make_demo


def test_demo_structure():
  d = make_demo(num_samples=300, length=400, seed=1)
  assert d.features.shape == (300, 400, 2) and d.attributes.shape == (300, 2)
  traffic = d.features[..., 0]
  # levels span orders of magnitude, and the service sets the level
  means = np.log10(traffic.mean(axis=1))
  assert means.max() - means.min() > 4
  by_service = [np.median(means[d.attributes[:, 0] == s]) for s in range(3)]
  assert by_service[0] > by_service[1] > by_service[2]
  # a weekly cycle: the mean autocorrelation of log traffic peaks at lag 7 among lags 2..10
  x = np.log(traffic)
  x = x - x.mean(axis=1, keepdims=True)
  acf = [np.mean(np.sum(x[:, :-k] * x[:, k:], 1) / np.sum(x * x, 1)) for k in range(2, 11)]
  assert int(np.argmax(acf)) + 2 == 7
  # latency is positively correlated with traffic within series
  corr = [np.corrcoef(x[i], d.features[i, :, 1])[0, 1] for i in range(50)]
  assert np.median(corr) > 0.3
  assert make_demo(num_samples=300, length=400, seed=1).features.tobytes() == d.features.tobytes()


def test_demo_variable_lengths_round_trip():
  d = make_demo(num_samples=200, length=100, seed=2, variable_lengths=True)
  assert d.lengths.min() < 20 and d.lengths.max() >= 80
  schema = encoding.fit_schema(d)
  back = encoding.decode(encoding.encode(d, schema), schema)
  np.testing.assert_array_equal(back.lengths, d.lengths)
  np.testing.assert_allclose(back.features, d.features, rtol=1e-4, atol=1e-3)


def test_batches_cover_each_epoch_once_and_resume():
  x = np.arange(10)
  it = BatchIterator([x, x * 2], batch_size=4, seed=3)
  first = [it.next() for _ in range(5)]  # 20 rows = 2 epochs
  rows = np.concatenate([b[0] for b in first])
  assert sorted(rows[:10]) == list(range(10)) and sorted(rows[10:]) == list(range(10))
  assert all((b[1] == 2 * b[0]).all() for b in first)
  resumed = BatchIterator([x, x * 2], batch_size=4, seed=3, start_step=3)
  np.testing.assert_array_equal(resumed.next()[0], first[3][0])
  stacked = BatchIterator([x], batch_size=4, seed=3).next(5)[0]
  np.testing.assert_array_equal(stacked, np.stack([b[0] for b in first]))
  assert not np.array_equal(BatchIterator([x], 10, seed=4).next()[0], x)  # shuffled


def test_batch_larger_than_dataset_and_errors():
  b = BatchIterator([np.arange(3)], batch_size=7, seed=0).next()[0]
  assert len(b) == 7 and set(b) == {0, 1, 2}
  with pytest.raises(ValueError, match="empty"):
    BatchIterator([np.zeros(0)], 4, 0)
  with pytest.raises(ValueError, match="different numbers of rows"):
    BatchIterator([np.zeros(3), np.zeros(4)], 4, 0)


def test_replica_batches_are_each_seeds_own_and_resume():
  x = np.arange(30)[:, None] * np.ones((1, 2))
  batches = ReplicaBatches([x], 4, seed=5, num_replicas=3, start_step=2)
  (stacked,) = batches.next(3)
  assert stacked.shape == (3, 3, 4, 2)
  for r in range(3):
    (alone,) = BatchIterator([x], 4, 5 + r, start_step=2).next(3)
    np.testing.assert_array_equal(stacked[:, r], alone)
  assert not np.array_equal(stacked[:, 0], stacked[:, 1])
