"""A small Python API for notebooks: fit, generate, save, load.

    from dg_jax.api import DoppelGANgerModel
    model = DoppelGANgerModel.fit(dataset, workdir="/tmp/run", num_steps=2000)
    synthetic = model.generate(1000, seed=0)
    model.save("/tmp/bundle"); model = DoppelGANgerModel.load("/tmp/bundle")
"""
from __future__ import annotations

import ml_collections
import numpy as np
import pandas as pd

from dg_jax import io_utils, sampling, workdir_lock
from dg_jax.checkpoints import is_bundle, save_bundle
from dg_jax.data.frames import from_long_frame
from dg_jax.data.npz_format import save_npz
from dg_jax.data.schema import Dataset
from dg_jax.retrain import retrain_attributes
from dg_jax.train import train_and_evaluate


def default_config() -> ml_collections.ConfigDict:
  from configs import default  # the repository's configs/ (run from the repository root)
  return default.get_config()


class DoppelGANgerModel:
  """A trained generator: model definition, generator parameters and the run's config."""

  def __init__(self, model, params, config: ml_collections.ConfigDict):
    self.model, self.params, self.config = model, params, config

  @property
  def schema(self):
    return self.model.schema

  @classmethod
  def fit(cls, data: Dataset | pd.DataFrame, workdir: str, config: ml_collections.ConfigDict | None = None,
          frame_options: dict | None = None, **train_overrides) -> "DoppelGANgerModel":
    """Trains on `data` (a Dataset, or a long DataFrame read with `frame_options`, e.g.
    dict(id_column="id", time_column="t", attribute_columns=["isp"])); `train_overrides` set
    config.train fields (num_steps=..., max_minutes=...). Resumes if `workdir` holds the same run."""
    if isinstance(data, pd.DataFrame):
      data = from_long_frame(data, **(frame_options or {}))
    config = (config or default_config()).copy_and_resolve_references()
    config.train.update(train_overrides)
    path = io_utils.join(io_utils.as_path(workdir), "training_data.npz")
    config.data.format, config.data.path = "npz", path
    lock = workdir_lock.acquire(workdir)  # before the data file is written, not only before training
    try:
      save_npz(data, path)
      train_and_evaluate(config, workdir, lock=lock)
    finally:
      lock.release()
    return cls.load(workdir)

  @classmethod
  def load(cls, path: str, seed_index: int | None = None, checkpoint: str = "auto",
           exact_span_at_generation: bool | str | None = None) -> "DoppelGANgerModel":
    """From a generator bundle folder or a training workdir; of a workdir, replica `seed_index` and
    `checkpoint` (latest | best | a step; default: the best-scored replica's best when scored, else
    replica 0's latest: sampling.choose_generator). exact_span_at_generation: "auto", True or False
    overrides the saved model.exact_span_at_generation (None: as saved)."""
    bundle = is_bundle(path)
    return cls(*sampling.load_generator(None if bundle else path, path if bundle else None, seed_index, checkpoint,
                                        exact_span_at_generation))

  def generate(self, num_samples: int, seed: int = 0, attributes: np.ndarray | None = None,
               length: int | None = None) -> Dataset:
    """Samples in original units. attributes: [n, m] codes to condition on (then n samples)."""
    return sampling.generate(self.model, self.params, num_samples, seed, attributes, length)

  def retrain_attributes(self, attributes: np.ndarray, num_steps: int = 2000, seed: int = 0) -> "DoppelGANgerModel":
    """A copy whose attribute generator follows the new rows ([n, m] codes); §6.1."""
    return DoppelGANgerModel(self.model, retrain_attributes(self.model, self.params, attributes, num_steps, seed),
                             self.config)

  def save(self, directory: str) -> None:
    """A generator-only bundle: no critics, no training data."""
    save_bundle(directory, self.params, self.schema, self.config.to_json(indent=1))
