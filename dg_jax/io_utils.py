"""The one path layer for workdirs and bundles, local or remote, and atomic writes.

Every file dg_jax reads or writes in a workdir or bundle goes through `as_path` (an `etils.epath`
path, the layer Orbax itself uses), so a workdir may be a local folder or a `gs://`/`s3://`-style URI
that every host of a pod can reach. Local writes go to a temporary file renamed over the target, so
an interrupted write never leaves a half-written file; on object stores an upload is all-or-nothing
already, so the object is written directly.
"""
from __future__ import annotations

import contextlib
import os
import tempfile

from etils import epath

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


def write_bytes(path, data: bytes) -> None:
  """Writes `data` to `path` (local or remote) atomically."""
  if is_remote(path):
    target = as_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as fh:
      fh.write(data)


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


def write_files(directory, contents: dict[str, bytes]) -> None:
  """Writes each file of a folder atomically, in the given order (put the file that marks the folder
  complete last): an interrupted save leaves every file either old or new, never half-written."""
  for name, data in contents.items():
    write_bytes(join(directory, name), data)
