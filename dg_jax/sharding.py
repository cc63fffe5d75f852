"""The only module that knows about devices: the ('data',) mesh and how arrays are placed on it."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D data-parallel mesh over all (or the first `num_devices`) devices of all processes."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"asked for {num_devices} devices, only {len(devices)} are available")
    devices = devices[:num_devices]
  # Auto axes: shard_map and jit move freshly drawn (unsharded) noise onto the batch split themselves.
  return jax.make_mesh((len(devices),), (DATA,), (jax.sharding.AxisType.Auto,), devices=devices)


def check_batch_size(batch_size: int, mesh, pack: int = 1) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"train.batch_size={batch_size} must be a multiple of the {n} devices in use")
  if (batch_size // n) % pack:
    raise ValueError(f"each device's share of the batch ({batch_size // n}) must be a multiple of "
                     f"model.pack={pack}")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))


def shard_batches(arrays, mesh, stacked: bool = True):
  """Place host batches ([k, B, ...] if stacked, else [B, ...]) on the mesh, split over B.

  With several processes, every process holds the same global batch (same seed) and contributes
  only its own slice of it.
  """
  spec = P(None, DATA) if stacked else P(DATA)
  sharding = NamedSharding(mesh, spec)
  if jax.process_count() == 1:
    return jax.device_put(arrays, sharding)
  axis = 1 if stacked else 0
  pid, count = jax.process_index(), jax.process_count()

  def place(x):
    local = np.array_split(x, count, axis=axis)[pid]
    return jax.make_array_from_process_local_data(sharding, local, x.shape)
  return jax.tree.map(place, arrays)


def describe(mesh) -> str:
  d = mesh.devices.flat[0]
  return (f"{mesh.devices.size} device(s) ({d.platform}, {d.device_kind}) across "
          f"{jax.process_count()} process(es)")
