"""Shared pieces of the experiments: paths, launch.py runs, MBA splits as npz files."""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import ROOT, SHARED_DATA, launch  # noqa: E402

from dg_jax.data.dg_format import MBA_ATTRIBUTE_NAMES, MBA_FEATURE_NAMES, load_dg_folder  # noqa: E402
from dg_jax.data.npz_format import save_npz  # noqa: E402

__all__ = ["FULL_STEPS", "ROOT", "SHARED_DATA", "launch", "mba_splits", "train_and_generate"]
FULL_STEPS = 200_000  # the paper's training budget (Appendix B: convergence within 200k batches)


def mba_splits(directory: str) -> dict[str, str]:
  """Writes MBA's train (600 series) and test (139) splits as npz files; returns their paths."""
  paths = {}
  for split in ("train", "test"):
    paths[split] = os.path.join(directory, f"mba_{split}.npz")
    if not os.path.exists(paths[split]):
      save_npz(load_dg_folder(os.path.join(SHARED_DATA, "mba"), split, MBA_FEATURE_NAMES, MBA_ATTRIBUTE_NAMES),
               paths[split])
  return paths


def train_and_generate(config: str, workdir: str, output: str, num_samples: int, overrides: list[str],
                       seed: int = 0) -> float:
  """Trains (or resumes) a run through launch.py, generates `num_samples` series into `output`;
  returns the training wall-clock seconds."""
  start = time.time()
  launch(f"--config={config}", f"--workdir={workdir}", *overrides)
  seconds = time.time() - start
  launch("--mode=generate", f"--workdir={workdir}", f"--num_samples={num_samples}", f"--output={output}",
         f"--seed={seed}")
  return seconds
