"""Frozen, hashable views of the ml_collections config: what jitted code may close over."""
from __future__ import annotations

import dataclasses

import ml_collections

# The paper's rule of thumb (§4.4): choose S so that the RNN takes about this many steps.
TARGET_RNN_STEPS = 50


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  sample_len: int = 0                   # records per LSTM step (S); 0 = automatic, T/S near 50
  attribute_noise_dim: int = 5
  additional_noise_dim: int = 5
  feature_noise_dim: int = 5
  attribute_num_layers: int = 2
  attribute_num_units: int = 100
  additional_num_layers: int = 2
  additional_num_units: int = 100
  feature_num_units: int = 100
  initial_state: str = "random"         # "random" (N(0,1), as the paper) or "zero"
  critic_num_layers: int = 4
  critic_num_units: int = 200
  aux_critic: bool = True
  aux_critic_weight: float = 1.0        # alpha
  pack: int = 1                         # PacGAN packing degree

  def __post_init__(self):
    if self.initial_state not in ("random", "zero"):
      raise ValueError(f"model.initial_state must be 'random' or 'zero', got {self.initial_state!r}")
    if self.pack < 1 or self.sample_len < 0:
      raise ValueError("model.pack must be >= 1 and model.sample_len >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 100
  num_steps: int = 100_000
  max_minutes: float = 0.0              # wall-clock budget; 0 = none
  seed: int = 0
  learning_rate: float = 1e-3
  beta1: float = 0.5
  beta2: float = 0.999
  gp_weight: float = 10.0               # lambda
  d_rounds: int = 1
  g_rounds: int = 1
  steps_per_dispatch: int = 10          # training steps fused into one compiled call
  log_every: int = 100
  checkpoint_every: int = 1000
  keep_checkpoints: int = 2

  def __post_init__(self):
    for name in ("batch_size", "d_rounds", "g_rounds", "steps_per_dispatch", "log_every", "checkpoint_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")


def resolve_sample_len(requested: int, max_length: int) -> int:
  if requested > 0:
    return requested
  return max(1, round(max_length / TARGET_RNN_STEPS))


def _fields(cls, section: ml_collections.ConfigDict):
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(section.keys()) - names
  if unknown:
    raise ValueError(f"unknown config fields for {cls.__name__}: {sorted(unknown)}")
  return cls(**{k: section[k] for k in section.keys()})


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  return _fields(ModelConfig, config.model)


def train_config(config: ml_collections.ConfigDict) -> TrainConfig:
  return _fields(TrainConfig, config.train)
