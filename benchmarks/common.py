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
