"""Shared pieces of the benchmarks: repository paths and running launch.py."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)


def launch(*args: str, timeout: float | None = None) -> str:
  """Runs `python launch.py ARGS` from the repository root; returns its log (stderr)."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
  if result.returncode:
    raise RuntimeError(f"launch.py {' '.join(args)} failed:\n{result.stderr[-4000:]}")
  return result.stderr


class Trainer:
  """K replicas of a model training on encoded data, one dispatch (train.steps_per_dispatch steps) at a
  time, as dg_jax/train.py runs them: the data fed as `placement` (train.data_placement) says, each
  dispatch's metrics read while the next one runs (`finish` reads the last)."""

  def __init__(self, model, tc, encoded, num_seeds: int = 1, mesh=None, placement: str = "auto"):
    from dg_jax import sharding
    from dg_jax.data.batching import ReplicaBatches
    from dg_jax.data.feed import Feed
    from dg_jax.train import batch_dict
    from dg_jax.train_step import init_replicas, jit_train_step
    self.mesh = mesh or sharding.make_mesh(None, num_seeds)
    self.state, self.keys = sharding.place(init_replicas(model, tc, 0, num_seeds), sharding.by_replica(self.mesh))
    arrays = batch_dict(encoded.features, encoded.attributes, encoded.additional_attributes)
    self.feed = Feed(arrays, ReplicaBatches([encoded.features], tc.batch_size, 0, num_seeds), self.mesh, placement)
    self.step = jit_train_step(model, tc, self.mesh, gather=self.feed.gather)
    self.k, self.unread = tc.steps_per_dispatch, None
    self.host_batches = lambda k: self.feed.host_batches(self.feed.batches.next_indices(k))  # [k, K, B, ...]

  def dispatch(self) -> None:
    import jax
    self.state, *outputs = self.step(self.state, *self.feed.next(self.k), self.keys)
    if self.unread is not None:
      jax.device_get(self.unread)
    self.unread = outputs

  def finish(self) -> None:
    import jax
    jax.device_get(self.unread)
    self.unread = None
