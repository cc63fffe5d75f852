"""Host-side batches: shuffled without replacement within each epoch, fixed size, resumable by step."""
from __future__ import annotations

from typing import Sequence

import numpy as np


class BatchIterator:
  """Yields tuples of `batch_size` rows of `arrays`.

  The rows of step k are positions [k*B, (k+1)*B) of an endless stream made of one permutation of
  all n samples per epoch (seeded by (seed, epoch)), so a run resumed at step k sees exactly the
  batches it would have seen, and a batch may straddle two epochs (or several, if n < B).
  """

  def __init__(self, arrays: Sequence[np.ndarray], batch_size: int, seed: int, start_step: int = 0):
    n = len(arrays[0])
    if n == 0:
      raise ValueError("cannot batch an empty dataset")
    if any(len(a) != n for a in arrays):
      raise ValueError(f"arrays have different numbers of rows: {[len(a) for a in arrays]}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.arrays, self.batch_size, self.seed, self.step = tuple(arrays), batch_size, seed, start_step
    self._epoch, self._perm = -1, None

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.arrays[0]))
    return self._perm

  def indices(self, step: int) -> np.ndarray:
    n = len(self.arrays[0])
    positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    out = np.empty(self.batch_size, np.int64)
    for epoch in np.unique(positions // n):
      sel = positions // n == epoch
      out[sel] = self._permutation(int(epoch))[positions[sel] % n]
    return out

  def next(self, num_steps: int | None = None) -> tuple[np.ndarray, ...]:
    """The next batch, or the next `num_steps` batches stacked on a leading axis."""
    steps = [self.step] if num_steps is None else range(self.step, self.step + num_steps)
    idx = np.stack([self.indices(s) for s in steps])
    self.step += len(idx)
    if num_steps is None:
      idx = idx[0]
    return tuple(a[idx] for a in self.arrays)

  def __iter__(self):
    return self

  def __next__(self):
    return self.next()
