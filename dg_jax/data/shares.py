"""Each process its own share of a sharded dataset: data.path = PATH-{shard}.npz (train.data_placement
"sharded" or "sharded_host"; "auto" chooses between them for such a path).

The shard files (PATH-00000.npz, ... in the project's npz format, e.g. what generation's
--output=PATH-{shard}.npz writes) are dealt to the blocks of the mesh's 'data' axis, file f to block
f % D. Each device holds its block's encoded series (the same block on every device of a 'seeds'
column), and a process reads, validates and encodes only the files of its own devices' blocks. Each
step, each device draws its B/D series of each replica from its own block (a BatchIterator over the
block: a pure function of seed, replica, block and step), so the batches, and the run, are the same
whatever the number of processes over the same D devices along 'data' (a different D deals the files
to other blocks: another run). The schema is fitted on each process's share and merged (ranges by min
and max, lengths), which equals the schema fitted on all of it; the data fingerprint is made of the
blocks' fingerprints, so a run resumes on another process count with the same D.

Not with privacy (DP-SGD's accountant assumes batches drawn from all n series), scoring while training
(its reference needs the data in one place) or data.log1p=auto (quantiles do not merge): each is
refused with a message.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import re

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from dg_jax import sharding
from dg_jax.data import encoding
from dg_jax.data.batching import BatchIterator
from dg_jax.data.schema import DataError, Dataset
from dg_jax.sharding import DATA, SEEDS

log = logging.getLogger(__name__)

SHARD = "{shard}"


def is_sharded_path(path: str) -> bool:
  return SHARD in (path or "")


def shard_files(pattern: str) -> list[str]:
  """The files of PATH-{shard}.npz in shard order (the shard number: digits where {shard} stands)."""
  head, tail = pattern.split(SHARD, 1)
  match = re.compile(re.escape(head) + r"(\d+)" + re.escape(tail) + "$")
  found = [(int(m.group(1)), f) for f in glob.glob(glob.escape(head) + "*" + glob.escape(tail))
           if (m := match.match(f))]
  if not found:
    raise DataError(f"data.path={pattern}: no shard files match")
  return [f for _, f in sorted(found)]


def _allgather(values: np.ndarray) -> np.ndarray:
  """[processes, ...]: every process's `values`. float64 travels as its raw 32-bit words: JAX would round
  it to float32 (schema bounds and moments off by 1e-7 from one process's)."""
  if jax.process_count() == 1:
    return values[None]
  if values.dtype == np.float64:
    words = multihost_utils.process_allgather(np.ascontiguousarray(values).view(np.uint32))
    return np.ascontiguousarray(words).view(np.float64)
  return np.asarray(multihost_utils.process_allgather(values))


def concat(parts: list[Dataset], source: str, length: int | None = None) -> Dataset:
  """Datasets with the same variables and categories (each named by its source otherwise) as one,
  padded to `length` records (default: the longest)."""
  signature = _variables(parts[0])
  for p in parts:
    if _variables(p) != signature:
      raise DataError(f"{p.source}: its variables or categories differ from {parts[0].source}'s "
                      f"({_variables(p)} vs {signature})")
  length = length or max(p.max_length for p in parts)
  pad = lambda f: np.pad(f, ((0, 0), (0, length - f.shape[1]), (0, 0)))  # noqa: E731
  return dataclasses.replace(parts[0], features=np.concatenate([pad(p.features) for p in parts]),
                             lengths=np.concatenate([p.lengths for p in parts]),
                             attributes=np.concatenate([p.attributes for p in parts]), source=source)


def _variables(data: Dataset) -> str:
  return repr([(v.name, v.kind, tuple(v.categories or ()), v.log1p, v.asinh)
               for v in data.feature_vars + data.attribute_vars])


class Share:
  """This process's blocks of a sharded dataset (`local`: their series, block after block) and the
  counts of every block."""

  def __init__(self, pattern: str, mesh):
    from dg_jax.data.npz_format import load_npz
    files = shard_files(pattern)
    self.num_blocks = d = mesh.shape[DATA]
    if len(files) < d:
      raise DataError(f"data.path={pattern}: {len(files)} shard file(s) for the {d} devices along 'data'; each "
                      "device holds the series of at least one file")
    mine = {device.id for device in jax.local_devices()}
    self.blocks = sorted({int(j) for (_, j), device in np.ndenumerate(mesh.devices) if device.id in mine})
    loaded = {b: [load_npz(f) for f in files[b::d]] for b in self.blocks}
    parts = [p for b in self.blocks for p in loaded[b]]
    digest = np.frombuffer(hashlib.blake2b(_variables(parts[0]).encode(), digest_size=8).digest(), np.uint8)
    if (_allgather(digest) != digest).any():
      raise DataError(f"data.path={pattern}: the processes' shards differ in their variables or categories")
    self.length = int(_allgather(np.array([max(p.max_length for p in parts)])).max())
    counts = np.zeros(d, np.int64)
    for b in self.blocks:
      counts[b] = sum(p.num_samples for p in loaded[b])
    self.counts = _allgather(counts).max(axis=0)  # a block held by several processes: the same count
    self.source = f"{pattern} ({len(files)} shards, this process: {len(parts)})"
    self.local = concat(parts, self.source, self.length)
    self.offsets = dict(zip(self.blocks, np.cumsum([0] + [counts[b] for b in self.blocks])[:-1]))
    log.info("data: %s; %d series in %d blocks along 'data', this process holds blocks %s (%d series)", pattern,
             self.counts.sum(), d, self.blocks, self.local.num_samples)

  @property
  def num_series(self) -> int:
    return int(self.counts.sum())

  def merge_schema(self, schema: encoding.Schema) -> encoding.Schema:
    """The schema fitted on this process's share -> the one fitted on all shares."""
    continuous = [v for v in schema.feature_vars + schema.attribute_vars if not v.is_categorical]
    mine = np.array([x for v in continuous for x in (v.low, -v.high)] + [schema.min_length, -schema.max_length,
                    -float(schema.log_half_range)], np.float64)  # the log code if any share asks for it
    merged = _allgather(mine).min(axis=0)
    bounds = {v.name: (merged[2 * i], -merged[2 * i + 1]) for i, v in enumerate(continuous)}
    fix = lambda vs: tuple(v if v.is_categorical else dataclasses.replace(  # noqa: E731
        v, low=float(bounds[v.name][0]), high=float(bounds[v.name][1])) for v in vs)
    return dataclasses.replace(schema, feature_vars=fix(schema.feature_vars), attribute_vars=fix(schema.attribute_vars),
                               min_length=int(merged[-3]), max_length=int(-merged[-2]),
                               log_half_range=bool(merged[-1] < 0))

  def min(self, values: np.ndarray) -> np.ndarray:
    """Of every process's `values` (float64, the same shape everywhere)."""
    return _allgather(np.asarray(values, np.float64)).min(axis=0)

  def sum(self, values: np.ndarray) -> np.ndarray:
    """Of every process's `values` (float64, the same shape everywhere)."""
    return _allgather(np.asarray(values, np.float64)).sum(axis=0)

  def fingerprint(self, encoded: encoding.Encoded) -> str:
    """Of all blocks, whichever process holds which."""
    from dg_jax.train import data_fingerprint
    hashes = np.zeros((self.num_blocks, 16), np.uint8)
    for b in self.blocks:
      rows = slice(self.offsets[b], self.offsets[b] + self.counts[b])
      block = encoding.Encoded(encoded.attributes[rows], encoded.additional_attributes[rows], encoded.features[rows])
      hashes[b] = np.frombuffer(bytes.fromhex(data_fingerprint(block)), np.uint8)
    return hashlib.blake2b(_allgather(hashes).max(axis=0).tobytes(), digest_size=16).hexdigest()


class ShardedFeed:
  """Feed's interface (data/feed.py) for a Share: each device's block on device and block-local rows
  (train.data_placement "sharded"), or, for blocks too large for the devices ("sharded_host"), each
  process building its own devices' batches from its blocks in host memory at every dispatch. "auto"
  takes the first when a block fits (feed.choose's rule)."""

  def __init__(self, share: Share, arrays: dict, batch_size: int, seed: int, num_replicas: int, mesh,
               start_step: int = 0, placement: str = "auto"):
    from dg_jax.data.feed import choose
    d, n_max = share.num_blocks, int(share.counts.max())
    if batch_size % d:
      raise DataError(f"train.batch_size={batch_size} must be a multiple of the {d} blocks along 'data'")
    block_bytes = sum(a[:1].nbytes for a in arrays.values()) * n_max
    on_device = placement == "sharded" or (placement == "auto" and choose("auto", block_bytes) == "device")
    log.info("data: blocks of %.3g MB, %s", block_bytes / 1e6, "each on its devices" if on_device else
             "in host memory; each process builds its devices' batches at every dispatch")
    self.gather = "sharded" if on_device else None  # train_step.jit_train_step's
    self.share, self.host = share, arrays
    blocks = NamedSharding(mesh, P(DATA))

    def place(a):
      def block(index):
        b = (index[0].start or 0) // n_max
        rows = a[share.offsets[b]:share.offsets[b] + share.counts[b]]
        return np.pad(rows, [(0, n_max - len(rows))] + [(0, 0)] * (a.ndim - 1))
      return jax.make_array_from_callback((d * n_max,) + a.shape[1:], blocks, block)
    self.device = {name: place(a) for name, a in arrays.items()} if on_device else None
    self.iterators = [[BatchIterator([range(int(share.counts[b]))], batch_size // d, seed + r, start_step,
                                     stream=(b,)) for b in range(d)] for r in range(num_replicas)]
    self.rows = NamedSharding(mesh, P(None, SEEDS, DATA))

  def next(self, k: int) -> tuple:
    """(the blocks, [k, K, B] block-local rows: device b of the 'data' axis reads B/D of its block); with
    the blocks in host memory, (the batches those rows make,)."""
    indices = np.stack([np.concatenate([it.next_indices(k) for it in per_block], axis=1)
                        for per_block in self.iterators], axis=1).astype(np.int32)
    if self.device is None:
      return {name: self._host_batches(a, indices) for name, a in self.host.items()},
    return self.device, sharding.place(indices, self.rows)

  def _host_batches(self, a: np.ndarray, indices: np.ndarray) -> jax.Array:
    """[k, K, B, ...] rows of `a`: each local device's slice read from its own block on this process."""
    per_block = indices.shape[2] // self.share.num_blocks

    def rows(index):
      b = (index[2].start or 0) // per_block
      return a[self.share.offsets[b] + indices[index[:3]]]
    return jax.make_array_from_callback(indices.shape + a.shape[1:], self.rows, rows)
