"""The one path layer for workdirs and bundles, local or remote, and atomic writes.

Every file dg_jax reads or writes in a workdir or bundle goes through `as_path` (an `etils.epath`
path, the layer Orbax itself uses), so a workdir may be a local folder or a `gs://`/`s3://`-style URI
that every host of a pod can reach. Local writes go to a temporary file renamed over the target, so
an interrupted write never leaves a half-written file; on object stores an upload is all-or-nothing
already, so the object is written directly, and a failed upload is retried (REMOTE_RETRIES times, with
backoff): object stores fail transiently. Multi-file outputs (bundles, reports) are staged in a
temporary folder and published with a marker file that is removed first and written last
(`staged_folder`): a reader that finds the marker finds every file complete.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time

import numpy as np
from etils import epath

log = logging.getLogger(__name__)
REMOTE_RETRIES = 5  # attempts of an object-store upload; waits of 1, 2, 4, 8 s between them

_UMASK = os.umask(0)
os.umask(_UMASK)


def is_remote(path) -> bool:
  """Whether `path` is a URI (gs://bucket/run, s3://...) rather than a local path."""
  return "://" in os.fspath(path)


def as_path(path) -> epath.Path:
  """`path` as an epath.Path: local paths made absolute (Orbax needs that), URIs kept as they are."""
  path = os.fspath(path)
  return epath.Path(path if is_remote(path) else os.path.abspath(path))


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
  """Yields a temporary local path beside `path`; renames it over `path` only if the block succeeds."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix + ".tmp")
  os.close(fd)
  try:
    yield tmp
    with open(tmp, "rb+") as fh:
      os.fsync(fh.fileno())
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the usual permissions
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def retry_remote(fn, what: str, attempts: int = REMOTE_RETRIES):
  """fn() with retries of transient failures (any exception: object-store clients raise their own
  kinds), waiting 1, 2, 4, ... s between attempts; the last failure is raised."""
  for attempt in range(attempts):
    try:
      return fn()
    except Exception as e:  # noqa: BLE001
      if attempt == attempts - 1:
        raise
      log.warning("%s failed (%s: %s); retrying in %d s (attempt %d of %d)", what, type(e).__name__, e,
                  2 ** attempt, attempt + 2, attempts)
      time.sleep(2 ** attempt)


def write_bytes(path, data: bytes) -> None:
  """Writes `data` to `path` (local or remote) atomically."""
  if is_remote(path):
    target = as_path(path)

    def upload():
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(data)
    retry_remote(upload, f"writing {path}")
    return
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as fh:
      fh.write(data)


def append_text(path, text: str) -> None:
  """Appends `text` to a local file and flushes it to disk (O(len(text)), unlike a rewrite)."""
  with open(path, "a") as fh:
    fh.write(text)
    fh.flush()
    os.fsync(fh.fileno())


def write_text(path, text: str) -> None:
  """Writes `text` to `path` (local or remote) atomically."""
  write_bytes(path, text.encode())


def read_bytes(path) -> bytes:
  return as_path(path).read_bytes()


def read_text(path) -> str:
  return as_path(path).read_text()


def exists(path) -> bool:
  return as_path(path).exists()


def join(path, *names: str) -> str:
  """`path`/names as a string (URIs keep their scheme)."""
  return os.fspath(epath.Path(os.fspath(path)).joinpath(*names))


def remove(path) -> None:
  """Removes a file if it is there (object stores: retried like uploads)."""
  if is_remote(path):
    retry_remote(lambda: as_path(path).unlink(missing_ok=True), f"removing {path}")
  elif os.path.exists(path):
    os.remove(path)


INCOMPLETE_FLAG = ".incomplete"  # present in a folder while staged_folder publishes into it


@contextlib.contextmanager
def staged_folder(directory, marker: str):
  """Yields a new local folder to write a multi-file output into; if the block succeeds its files are
  published into `directory`, which is complete when `marker` (one of them) is there and
  `is_incomplete` is not: a fresh local `directory` appears whole, by one rename; otherwise
  INCOMPLETE_FLAG is written first, the old marker removed, the other files moved in (renames, or
  uploads on object stores), the marker last, and the flag removed. An interrupted block leaves the
  old output untouched; files of `directory` that the output does not name are kept."""
  directory = os.fspath(directory)
  local_parent = None if is_remote(directory) else os.path.dirname(os.path.abspath(directory))
  if local_parent:
    os.makedirs(local_parent, exist_ok=True)
  stage = tempfile.mkdtemp(dir=local_parent, prefix="." + os.path.basename(directory.rstrip("/")) + ".",
                           suffix=".tmp")
  try:
    yield stage
    names = sorted(os.listdir(stage))
    if marker not in names:
      raise ValueError(f"staged_folder({directory}): the output has no {marker}")
    if local_parent and not os.path.exists(directory):
      os.rename(stage, directory)
      return
    write_bytes(join(directory, INCOMPLETE_FLAG), b"")
    remove(join(directory, marker))
    for name in [n for n in names if n != marker] + [marker]:
      if local_parent:
        os.replace(os.path.join(stage, name), os.path.join(directory, name))
      else:
        with open(os.path.join(stage, name), "rb") as fh:
          write_bytes(join(directory, name), fh.read())
    remove(join(directory, INCOMPLETE_FLAG))
  finally:
    shutil.rmtree(stage, ignore_errors=True)


def is_incomplete(directory) -> bool:
  """Whether a staged_folder publish into `directory` was interrupted (its files may be mixed)."""
  return exists(join(directory, INCOMPLETE_FLAG))


def write_folder(directory, contents: dict[str, bytes], marker: str) -> None:
  """Writes the files `contents` into `directory` through `staged_folder`: complete, with `marker`
  written last, or (if interrupted) without the marker."""
  with staged_folder(directory, marker) as stage:
    for name, data in contents.items():
      with open(os.path.join(stage, name), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def json_safe(value):
  """Non-finite floats -> None (JSON null), recursively through dicts and lists; strings, bools,
  integers and None kept."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if value is None or isinstance(value, (str, bool)):
    return value
  if isinstance(value, (int, np.integer)):
    return int(value)
  value = float(value)
  return value if math.isfinite(value) else None
