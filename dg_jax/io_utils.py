"""Atomic file writes: an interrupted write never leaves a half-written file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile


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
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
