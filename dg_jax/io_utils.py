"""Atomic file writes: an interrupted write never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ""):
  """Yields a temporary path beside `path`; renames it over `path` only if the block succeeds."""
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


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "w") as fh:
      fh.write(text)


def write_files(directory: str, contents: dict[str, bytes]) -> None:
  """Writes each file of a folder atomically, in the given order (put the file that marks the folder
  complete last): an interrupted save leaves every file either old or new, never half-written."""
  os.makedirs(directory, exist_ok=True)
  for name, data in contents.items():
    with atomic_path(os.path.join(directory, name)) as tmp:
      with open(tmp, "wb") as fh:
        fh.write(data)
