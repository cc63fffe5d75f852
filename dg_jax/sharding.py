"""The only module that knows about devices and processes: the ('seeds', 'data') mesh, how arrays are
placed on it, and the few decisions that every process of a multi-process run must share.

Two axes of parallelism: 'seeds' splits the K replicas of a run (train.num_seeds independent runs,
vectorised), 'data' splits each replica's batch. With K replicas on n devices the seeds axis has
gcd(K, n) devices: 8 devices and K=4 give each replica's batch 2 devices; K=3 on 8 devices (or any K
on one device) puts every replica on every device, each batch split 8 ways (or not at all).

With several processes (JAX's multi-controller runtime: one process per host, all running the same
program), every process computes the same host values (same seed, same config) and contributes the
pieces its own devices hold; `make_array_from_callback` asks the mesh which piece each device needs,
so nothing assumes that process p owns the p-th block of the data axis.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

SEEDS, DATA = "seeds", "data"


def make_mesh(num_devices: int | None = None, num_seeds: int = 1, local: bool = False) -> jax.sharding.Mesh:
  """The ('seeds', 'data') mesh over all (or the first `num_devices`) devices of all processes (local:
  of this process alone), for `num_seeds` replicas (generation: 1, i.e. every device on the data axis)."""
  devices = jax.local_devices() if local else jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only {len(devices)} are available")
    if jax.process_count() > 1 and not local and num_devices != len(devices):
      raise ValueError(f"num_devices={num_devices}: a multi-process run uses all {len(devices)} devices")
    devices = devices[:num_devices]
  # Auto axes: shard_map and jit move freshly drawn (unsharded) noise onto the batch split themselves.
  seeds = math.gcd(num_seeds, len(devices))
  return jax.make_mesh((seeds, len(devices) // seeds), (SEEDS, DATA), (jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def check_batch_size(batch_size: int, mesh, pack: int = 1) -> None:
  n = mesh.shape[DATA]
  if batch_size % n:
    raise ValueError(f"train.batch_size={batch_size} must be a multiple of the {n} devices that split each "
                     f"replica's batch")
  if (batch_size // n) % pack:
    raise ValueError(f"each device's share of the batch ({batch_size // n}) must be a multiple of "
                     f"model.pack={pack}")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def place(tree, sharding: jax.sharding.Sharding):
  """Host values (the same on every process) -> global arrays laid out by `sharding`; PRNG keys too."""
  def one(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree)


def replicate(tree, mesh):
  return place(tree, replicated(mesh))


def by_replica(mesh, after: int = 0) -> NamedSharding:
  """Arrays with a replica axis (training state, keys, scores: axis 0; per-step metrics [steps, K]:
  after=1), split over the seeds axis."""
  return NamedSharding(mesh, P(*(None,) * after, SEEDS))


def shard_batches(arrays, mesh):
  """Place stacked host batches [steps, K, B, ...] on the mesh: replicas over 'seeds', B over 'data'.
  Every process holds the same global batches (same seeds) and hands over the rows its devices hold."""
  return place(arrays, NamedSharding(mesh, P(None, SEEDS, DATA)))


def to_host(tree):
  """Global arrays -> numpy on every process (gathered across processes when they span several)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def is_primary() -> bool:
  """Process 0: the one process that writes files and logs progress."""
  return jax.process_index() == 0


def jointly(flags: list[bool], least: float) -> tuple[list[bool], float]:
  """Each flag true on every process if it is true on any, and the least of `least` over the processes:
  the decisions every process must take alike (to stop; the step the learning rates reach zero at), in
  one collective."""
  row = np.asarray([*flags, least], np.float64)
  if jax.process_count() > 1:
    rows = multihost_utils.process_allgather(row)
    row = np.append(rows[:, :-1].max(axis=0), rows[:, -1].min())
  return [bool(f) for f in row[:-1]], float(row[-1])


def from_primary(value: int) -> int:
  """Process 0's `value` on every process (e.g. a secret seed drawn once)."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def describe(mesh) -> str:
  d = mesh.devices.flat[0]
  seeds = f", {mesh.shape[SEEDS]} along 'seeds'" if mesh.shape[SEEDS] > 1 else ""
  return (f"{mesh.devices.size} device(s) ({d.platform}, {d.device_kind}) across "
          f"{jax.process_count()} process(es){seeds}")


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def coordination_client():
  """JAX's coordination-service client (its key-value store reaches every process even while they are
  blocked in a collective), or None when jax.distributed was not initialised (one process)."""
  from jax._src import distributed  # the client Orbax also uses; JAX has no public handle on it
  return distributed.global_state.client


def wait_for_primary() -> None:
  """Several processes: returns once process 0 got here (e.g. after it took the workdir's lock)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("dg_jax: process 0 ready")
