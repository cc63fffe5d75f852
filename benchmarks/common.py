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
  time, as dg_jax/train.py runs them (metrics fetched after every dispatch)."""

  def __init__(self, model, tc, encoded, num_seeds: int = 1, mesh=None):
    from dg_jax import sharding
    from dg_jax.data.batching import ReplicaBatches
    from dg_jax.train import batch_dict
    from dg_jax.train_step import init_replicas, jit_train_step
    self.mesh = mesh or sharding.make_mesh(None, num_seeds)
    self.state, self.keys = sharding.place(init_replicas(model, tc, 0, num_seeds), sharding.by_replica(self.mesh))
    self.step = jit_train_step(model, tc, self.mesh)
    arrays = [encoded.features, encoded.attributes, encoded.additional_attributes]
    self.batches = ReplicaBatches(arrays, tc.batch_size, 0, num_seeds)
    self.k = tc.steps_per_dispatch
    self.host_batches = lambda k: batch_dict(*self.batches.next(k))  # [k, K, B, ...] arrays

  def next_batches(self, k: int):
    from dg_jax import sharding
    return sharding.shard_batches(self.host_batches(k), self.mesh)

  def dispatch(self) -> None:
    import jax
    self.state, metrics = self.step(self.state, self.next_batches(self.k), self.keys)
    jax.device_get(metrics)
