"""Generation streamed to sharded files, in memory bounded by a shard whatever --num_samples is.

  --output=DIR.parquet        a folder of Parquet shards, part-00000.parquet, ...: long format, one row per
                              record (series id, step, attributes, features; frames.to_long_frame), which
                              pandas.read_parquet("DIR.parquet"), polars and Spark read whole
  --output=PATH-{shard}.npz   one file per shard (PATH-00000.npz, ...) in the project's npz format; the
                              same pattern ending in .parquet writes Parquet shards there

Series j is the same whatever shard, device or process generates it (sampling.series_noise), so the
shards hold exactly the series of the in-memory generation of the same seed, in order. Process p of P
writes shards p, p + P, ..., generated on its own devices. Each shard is written atomically, and a
manifest (MANIFEST) says what the files are: the same command after an interruption skips the shards
already written, and a different generation into the same place is refused instead of mixed in.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time

import numpy as np

from dg_jax import io_utils, sharding
from dg_jax.data import encoding
from dg_jax.data.shares import SHARD  # the same pattern training reads shards by
from dg_jax.failures import BadInput

log = logging.getLogger(__name__)

FOLDER_SHARD = "part-{shard}.parquet"
MANIFEST = "_generation.json"  # underscore: Parquet readers skip it
SHARD_SIZE = 8192  # series per shard: about 0.3 GB of long-format frame for WWT-shaped series
CHUNK_PER_DEVICE = 256  # series per device per generator call


def is_sharded(output: str) -> bool:
  return output.endswith(".parquet") or SHARD in output


def _layout(output: str) -> tuple[str, str]:
  """-> (pattern of shard paths with {shard}, manifest path)."""
  if SHARD in output:
    if not output.endswith((".npz", ".parquet")) or SHARD in os.path.dirname(output):
      raise BadInput(f"--output={output}: a shard pattern names files ending in .npz or .parquet, with {SHARD} "
                     "in the file name")
    return output, output.replace(SHARD, "manifest").rsplit(".", 1)[0] + ".json"
  return io_utils.join(output, FOLDER_SHARD), io_utils.join(output, MANIFEST)


def shard_path(pattern: str, index: int) -> str:
  return pattern.replace(SHARD, f"{index:05d}")


def generate_to_shards(model, params, num_samples: int, seed: int, output: str, what: dict,
                       attributes: np.ndarray | None = None, length: int | None = None,
                       shard_size: int = SHARD_SIZE) -> int:
  """Writes series 0..num_samples-1 of `seed` as shards at `output`; returns how many shards this
  process wrote. `what`: the source of the generator (recorded in the manifest, with the settings).
  attributes: encoded rows to condition on (one per series); length: as in sampling.generate."""
  from dg_jax.sampling import generate_encoded
  pattern, manifest_path = _layout(output)
  num_shards = -(-num_samples // shard_size)
  manifest = dict(what, seed=seed, num_samples=num_samples, shard_size=shard_size, num_shards=num_shards,
                  length=length, conditional=None if attributes is None else _fingerprint(attributes))
  found = json.loads(io_utils.read_text(manifest_path)) if io_utils.exists(manifest_path) else None
  if found is not None and found != manifest:  # every process finds it so, and stops
    changed = sorted(k for k in set(found) | set(manifest) if found.get(k) != manifest.get(k))
    raise BadInput(f"--output={output} holds another generation (its {manifest_path} differs in {changed}); "
                   "write elsewhere, or delete it to start over")
  sharding.wait_for_primary()  # every process has looked before process 0 writes it
  if found is None and sharding.is_primary():
    io_utils.write_text(manifest_path, json.dumps(manifest, indent=1))
  sharding.wait_for_primary()
  mine = range(sharding.process_index(), num_shards, sharding.process_count())
  todo = [i for i in mine if not io_utils.exists(shard_path(pattern, i))]
  if len(todo) < len(mine):
    log.info("%s: %d of this process's %d shards are already written; generating the other %d", output,
             len(mine) - len(todo), len(mine), len(todo))
  import jax
  from dg_jax.train import format_duration
  chunk = min(CHUNK_PER_DEVICE * jax.local_device_count(), shard_size)
  start, written = time.time(), 0
  for done, i in enumerate(todo, 1):
    first = i * shard_size
    count = min(shard_size, num_samples - first)
    enc = generate_encoded(model, params, count, seed, chunk,
                           None if attributes is None else attributes[first:first + count], length, first=first,
                           local=True)
    _write_shard(encoding.decode(enc, model.schema, source=f"generated(seed={seed})"), shard_path(pattern, i),
                 first)
    written += count
    rate = written / (time.time() - start)
    left = sum(min(shard_size, num_samples - j * shard_size) for j in todo[done:])
    log.info("shard %d of %d written (%s): %.0f series/s, %s%s", i + 1, num_shards, shard_path(pattern, i), rate,
             "done" if not left else f"ETA {format_duration(left / rate)}", "" if sharding.process_count() == 1 else
             f" (process {sharding.process_index()}'s share)")
  sharding.wait_for_primary()
  return len(todo)


def _write_shard(dataset, path: str, first: int) -> None:
  if path.endswith(".npz"):
    from dg_jax.data.npz_format import save_npz
    save_npz(dataset, path)
    return
  from dg_jax.data.frames import to_long_frame
  frame = to_long_frame(dataset)
  frame["id"] += first
  buffer = io.BytesIO()
  frame.to_parquet(buffer, index=False)
  io_utils.write_bytes(path, buffer.getvalue())


def _fingerprint(rows: np.ndarray) -> str:
  import hashlib
  return hashlib.sha256(np.ascontiguousarray(rows, np.float64).tobytes()).hexdigest()[:16]
