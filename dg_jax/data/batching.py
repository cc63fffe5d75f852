"""Host-side batches of fixed size, a pure function of (seed, step) so that resume is exact.

Three samplings: "epochs" (shuffled without replacement within each epoch, the default),
"independent" (each step a uniform sample of B of the n rows without replacement, drawn
independently of every other step) and "poisson" (each row in each step's batch with probability
B/n, independently; a batch holds `capacity` rows, the sampled ones then padding, index -1):
the last two are the samplings DP-SGD's accountant knows (dg_jax/privacy.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


SAMPLINGS = ("epochs", "independent", "poisson")
PADDING = -1  # a Poisson batch's unused rows


def mask(indices):
  """1.0 where a batch's row is a sampled series, 0.0 where it is padding (numpy or JAX indices)."""
  return (indices != PADDING).astype(np.float32)


class BatchIterator:
  """Yields tuples of `batch_size` rows of `arrays`.

  sampling="epochs": the rows of step k are positions [k*B, (k+1)*B) of an endless stream made of
  one permutation of all n samples per epoch (seeded by (seed, epoch)), so a batch may straddle
  two epochs (or several, if n < B).
  sampling="independent": the rows of step k are B distinct rows drawn uniformly (seeded by
  (seed, step)), whatever earlier steps drew; needs B <= n.
  sampling="poisson": step k's rows are Binomial(n, B/n) distinct rows drawn uniformly (seeded by
  (seed, step)), the first `capacity` of them if there are more, padded with PADDING to `capacity`.
  With bands = b > 1 (DP-BandMF's cyclic Poisson sampling) each row belongs to one of b groups, drawn
  once (seeded by the seed) independently per row, and step k draws from group k mod b alone, each
  member with probability b B/n.
  Either way a run resumed at step k sees exactly the batches it would have seen.
  """

  def __init__(self, arrays: Sequence[np.ndarray], batch_size: int, seed: int, start_step: int = 0,
               sampling: str = "epochs", stream: tuple = (), capacity: int = 0, bands: int = 1):
    n = len(arrays[0])
    if n == 0:
      raise ValueError("cannot batch an empty dataset")
    if any(len(a) != n for a in arrays):
      raise ValueError(f"arrays have different numbers of rows: {[len(a) for a in arrays]}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if sampling not in SAMPLINGS:
      raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling != "epochs" and batch_size > n:
      raise ValueError(f"{sampling} sampling draws batch_size={batch_size} distinct rows"
                       f"{' on average' if sampling == 'poisson' else ''}, but the dataset has only {n}")
    if sampling == "poisson" and capacity < 1:
      raise ValueError(f"poisson sampling needs a capacity >= 1, got {capacity}")
    if bands < 1 or (bands > 1 and (sampling != "poisson" or bands * batch_size > n)):
      raise ValueError(f"bands={bands} needs poisson sampling and bands * batch_size <= {n} rows")
    self.arrays, self.batch_size, self.seed, self.step = tuple(arrays), batch_size, seed, start_step
    self.rows = capacity if sampling == "poisson" else batch_size  # per batch
    self.sampling, self.stream = sampling, tuple(stream)  # stream: more seed words (a data block's number)
    self._epoch, self._perm = -1, None
    self.bands = bands
    if sampling == "poisson":  # the rows of each group
      groups = np.random.default_rng([seed, *self.stream, 3]).integers(bands, size=n) if bands > 1 else np.zeros(n)
      self._groups = [np.flatnonzero(groups == g) for g in range(bands)]

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, np.random.default_rng([self.seed, *self.stream, epoch]).permutation(len(self.arrays[0]))
    return self._perm

  def indices(self, step: int) -> np.ndarray:
    n = len(self.arrays[0])
    if self.sampling == "independent":
      # the trailing 1 keeps these seeds apart from the epoch streams' (seed, epoch)
      return np.random.default_rng([self.seed, *self.stream, step, 1]).choice(n, self.batch_size, replace=False)
    if self.sampling == "poisson":
      rng = np.random.default_rng([self.seed, *self.stream, step, 2])
      group = self._groups[step % self.bands]
      drawn = group[rng.choice(len(group), min(rng.binomial(len(group), self.bands * self.batch_size / n), self.rows),
                               replace=False)]
      return np.concatenate([drawn, np.full(self.rows - len(drawn), PADDING)])
    positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    out = np.empty(self.batch_size, np.int64)
    for epoch in np.unique(positions // n):
      sel = positions // n == epoch
      out[sel] = self._permutation(int(epoch))[positions[sel] % n]
    return out

  def next_indices(self, num_steps: int) -> np.ndarray:
    """The rows of the next `num_steps` batches, [num_steps, rows]."""
    idx = np.stack([self.indices(s) for s in range(self.step, self.step + num_steps)])
    self.step += num_steps
    return idx

  def next(self, num_steps: int | None = None) -> tuple[np.ndarray, ...]:
    """The next batch, or the next `num_steps` batches stacked on a leading axis."""
    idx = self.next_indices(num_steps or 1)
    if num_steps is None:
      idx = idx[0]
    return tuple(a[idx] for a in self.arrays)

  def __iter__(self):
    return self

  def __next__(self):
    return self.next()


class ReplicaBatches:
  """The batches of K replicas (train.num_seeds): replica r's are those of the run with seed + r."""

  def __init__(self, arrays: Sequence[np.ndarray], batch_size: int, seed: int, num_replicas: int,
               start_step: int = 0, sampling: str = "epochs", capacity: int = 0, bands: int = 1):
    self.replicas = [BatchIterator(arrays, batch_size, seed + r, start_step=start_step, sampling=sampling,
                                   capacity=capacity, bands=bands) for r in range(num_replicas)]

  def next_indices(self, num_steps: int) -> np.ndarray:
    """The rows of the next `num_steps` batches of every replica: [num_steps, K, rows] int32."""
    return np.stack([b.next_indices(num_steps) for b in self.replicas], axis=1).astype(np.int32)

  def next(self, num_steps: int) -> tuple[np.ndarray, ...]:
    """The next `num_steps` batches of every replica: arrays [num_steps, K, rows, ...] (a Poisson batch's
    padding rows hold the last row: see Feed.host_batches for their mask)."""
    idx = self.next_indices(num_steps)
    return tuple(a[idx] for a in self.replicas[0].arrays)
