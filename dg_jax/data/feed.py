"""Where each training dispatch's real batches come from (train.data_placement).

device: the encoded dataset is placed on every device once (replicated); a dispatch sends only its
  batches' rows, [steps, K, B] int32 indices, and the step gathers the batches on device. The host
  builds no batch and copies none, whatever K.
host: a dispatch gathers its [steps, K, B, ...] batches on the host and copies them to the devices;
  for data too large to hold on every device.
auto: device when the dataset takes at most DEVICE_SHARE of one device's memory (CPU devices share the
  host's RAM, which holds one copy per device: there, at most CPU_BUDGET bytes for all local copies).

Both read the same rows (ReplicaBatches: a pure function of seed, replica and step), so a run gives the
same batches, and resumes the same way, whichever placement each launch uses.
"""
from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dg_jax import sharding
from dg_jax.data import batching
from dg_jax.data.batching import ReplicaBatches
from dg_jax.sharding import DATA, SEEDS

log = logging.getLogger(__name__)

DEVICE_SHARE = 0.25
CPU_BUDGET = 2 << 30


def choose(placement: str, nbytes: int) -> str:
  """train.data_placement resolved for a dataset of `nbytes` bytes."""
  if placement != "auto":
    return placement
  device = jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get("bytes_limit") if device.platform != "cpu" else None
  fits = nbytes <= DEVICE_SHARE * limit if limit else nbytes * jax.local_device_count() <= CPU_BUDGET
  return "device" if fits else "host"


class Feed:
  """The real-data arguments of each dispatch of the training step (train_step.jit_train_step with
  gather=self.gather): `next(k)` -> (batches,) or (data, indices) for the next k steps."""

  def __init__(self, arrays: dict, batches: ReplicaBatches, mesh, placement: str):
    self.batches, self.mesh = batches, mesh
    nbytes = sum(a.nbytes for a in arrays.values())
    self.placement = choose(placement, nbytes)
    log.info("data: %.3g MB encoded, %s (train.data_placement=%s)", nbytes / 1e6,
             "placed on every device once; batches gathered there" if self.on_device else
             "batches built on the host and copied at every dispatch", placement)
    self.host = arrays
    self.device = sharding.replicate(arrays, mesh) if self.on_device else None
    self.rows = NamedSharding(mesh, P(None, SEEDS, DATA))

  @property
  def on_device(self) -> bool:
    return self.placement == "device"

  @property
  def gather(self) -> str | None:
    """train_step.jit_train_step's `gather`."""
    return "replicated" if self.on_device else None

  def next(self, k: int) -> tuple:
    indices = self.batches.next_indices(k)
    if self.on_device:
      return self.device, sharding.place(indices, self.rows)
    return sharding.place(self.host_batches(indices), self.rows),

  def host_batches(self, indices: np.ndarray) -> dict:
    batches = {name: a[indices] for name, a in self.host.items()}
    if self.batches.replicas[0].sampling == "poisson":
      batches["mask"] = batching.mask(indices)
    return batches
