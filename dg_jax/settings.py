"""Frozen, hashable views of the ml_collections config: what jitted code may close over."""
from __future__ import annotations

import dataclasses
import json
import math

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
  metadata_batch_norm: bool = False     # BatchNorm in the metadata MLPs (configs/default.py turns it on;
                                        # off here: configs saved before it existed had none)
  feature_num_units: int = 100
  initial_state: str = "random"         # "random" (N(0,1), as the paper) or "zero"
  critic_num_layers: int = 4
  critic_num_units: int = 200
  aux_critic: bool = True
  aux_critic_weight: float = 1.0        # alpha
  pack: int = 1                         # PacGAN packing degree
  feature_noise: str = "per_step"       # LSTM noise: a fresh draw at every step (the paper) or "per_series"
                                        # (one draw per series, fed at every step)
  critic_difference_weight: float = 0.0  # the critics also see each continuous feature's record-to-record
                                        # differences times this (0 = not, as the paper; issue 21: jitter)
  step_critic_weight: float = 0.0       # > 0: a third critic on the smooth continuous features' record-to-
                                        # record differences, standardised; this weights it in the generator's
                                        # loss (0 = none, as the paper; configs/default.py: 0.3; issue 21:
                                        # jitter; docs/design.md)
  aux_critic_levels: bool = False       # the auxiliary critic also sees the series' means where they are tied
                                        # (encoding.level_view; configs/default.py turns it on; off here:
                                        # configs saved before it)
  whiten_levels: bool = False           # critics see co-moving levels magnified (encoding.min_max_view;
                                        # configs/default.py turns it on; off here: configs saved before it)
  exact_span: bool = False              # each generated normalised series rescaled to span exactly what its
                                        # min/max imply, as every real one does (issue 21; off, as the paper)
  exact_span_at_generation: bool | str = False  # the same rescale when generating only (and in the training-
                                        # time score), not in training's forward pass: True, False (as the
                                        # paper), or "auto" (`rescales_at_generation`; configs/default.py)
  floor_flags: bool = False             # an "at the floor" flag per record for continuous features at their
                                        # minimum in many records (encoding.FLOOR_SHARE; configs/default.py
                                        # turns it on; off here: configs saved before it)
  floor_series_flags: bool = False      # with floor_flags and auto-normalisation, also an "at the floor
                                        # throughout" flag per series from the min/max generator
                                        # (configs/default.py turns it on; off here: configs saved before it)

  def __post_init__(self):
    if self.initial_state not in ("random", "zero"):
      raise ValueError(f"model.initial_state must be 'random' or 'zero', got {self.initial_state!r}")
    if self.feature_noise not in ("per_step", "per_series"):
      raise ValueError(f"model.feature_noise must be 'per_step' or 'per_series', got {self.feature_noise!r}")
    span = {"auto": "auto", "true": True, "false": False}.get(str(self.exact_span_at_generation).lower())
    if span is None:
      raise ValueError(f"model.exact_span_at_generation must be auto, True or False, got "
                       f"{self.exact_span_at_generation!r}")
    object.__setattr__(self, "exact_span_at_generation", span)
    if self.pack < 1 or self.sample_len < 0 or self.critic_difference_weight < 0 or self.step_critic_weight < 0:
      raise ValueError("model.pack must be >= 1, model.sample_len, model.critic_difference_weight and "
                       "model.step_critic_weight >= 0")


PLACEMENTS = ("auto", "device", "host", "sharded", "sharded_host")  # train.data_placement
# The generator's parts (dg_jax/models/doppelganger.py) that train.fixed_parts may name.
GENERATOR_PARTS = ("attribute_mlp", "additional_mlp", "lstm", "heads")
# Fields that may differ between the replicas of one run (train.per_replica): numbers the step only
# computes with, so replicas that differ in them still share one compiled program (dg_jax/sweep.py
# groups such variants into one run).
PER_REPLICA_FIELDS = ("train.learning_rate", "train.beta1", "train.beta2", "train.gp_weight",
                      "model.aux_critic_weight")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 100                 # per replica
  num_seeds: int = 1                    # K replicas trained as one program: seeds seed, seed+1, ..., seed+K-1
  num_steps: int = 100_000
  max_minutes: float = 0.0              # wall-clock budget over all of a run's launches; 0 = none
  seed: int = 0
  learning_rate: float = 1e-3
  lr_decay_start: float = 1.0           # fraction of the run after which both learning rates fall linearly
                                        # to zero at its last step (num_steps, or where max_minutes will stop
                                        # it); 1 = constant, as the paper and configs saved before it;
                                        # configs/default.py: 0.5
  beta1: float = 0.5
  beta2: float = 0.999
  gp_weight: float = 10.0               # lambda
  d_rounds: int = 1
  g_rounds: int = 1
  steps_per_dispatch: int = 10          # training steps fused into one compiled call
  data_placement: str = "auto"          # device | host | sharded | sharded_host | auto (data/feed.py, shares.py)
  log_every: int = 100
  checkpoint_every: int = 1000
  keep_checkpoints: int = 2
  max_rollbacks: int = 3                # a replica whose loss turns non-finite is rolled back; one more
                                        # divergence than this freezes it (dg_jax/train_step.py)
  init_from: str = ""                   # start a new run from another: WORKDIR[@STEP] or a bundle folder
  init_optimizer: bool = False          # with init_from (a workdir): also take its Adam states
  fixed_parts: str = ""                 # comma-separated generator parts (GENERATOR_PARTS) that keep their
                                        # init_from weights; "" = all train
  eval_every: int = 0                   # score every replica's generator every this many steps (0 = off)
  eval_samples: int = 200               # series each replica generates per scoring
  eval_holdout: float = 0.1             # with scoring: fraction of the series held out of training to score against
  profile_steps: str = ""               # "first,last": JAX profiler trace of those steps ("" = none)
  tensorboard: bool = True              # TensorBoard scalars in <workdir>/tensorboard
  per_replica: str = ""                 # JSON {field: [one value per replica]} for PER_REPLICA_FIELDS;
                                        # "" = every replica uses the config's values

  def __post_init__(self):
    for name in ("batch_size", "num_seeds", "d_rounds", "g_rounds", "steps_per_dispatch", "log_every",
                 "checkpoint_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
    if not 0 <= self.lr_decay_start <= 1:
      raise ValueError(f"train.lr_decay_start must be in [0, 1], got {self.lr_decay_start}")
    if self.max_rollbacks < 0:
      raise ValueError(f"train.max_rollbacks must be >= 0, got {self.max_rollbacks}")
    if self.eval_every < 0 or self.eval_samples < 2 or not 0 <= self.eval_holdout < 1:
      raise ValueError(f"train.eval_every must be >= 0 (got {self.eval_every}), train.eval_samples >= 2 (got "
                       f"{self.eval_samples}) and train.eval_holdout in [0, 1) (got {self.eval_holdout})")
    if self.data_placement not in PLACEMENTS:
      raise ValueError(f"train.data_placement must be one of {PLACEMENTS}, got {self.data_placement!r}")
    unknown = set(self.fixed_part_names) - set(GENERATOR_PARTS)
    if unknown or (self.fixed_part_names and not self.init_from):
      raise ValueError(f"train.fixed_parts={self.fixed_parts!r}: " + (
          f"unknown parts {sorted(unknown)}; the generator's are {GENERATOR_PARTS}" if unknown
          else "needs train.init_from (else they would be random weights that never change)"))
    self.profile_window  # noqa: B018  (fail early on malformed values)
    self.replica_values  # noqa: B018

  @property
  def fixed_part_names(self) -> tuple[str, ...]:
    """train.fixed_parts as a tuple of names."""
    return tuple(part.strip() for part in self.fixed_parts.split(",") if part.strip())

  @property
  def replica_values(self) -> dict[str, tuple[float, ...]]:
    """train.per_replica parsed: {field in PER_REPLICA_FIELDS: num_seeds finite numbers}."""
    if not self.per_replica.strip():
      return {}
    try:
      values = json.loads(self.per_replica)
      assert isinstance(values, dict)
    except (ValueError, AssertionError):
      raise ValueError(f"train.per_replica={self.per_replica!r}: expected JSON {{field: [values]}}") from None
    for field, v in values.items():
      if field not in PER_REPLICA_FIELDS:
        raise ValueError(f"train.per_replica: {field} cannot differ between replicas (only {PER_REPLICA_FIELDS})")
      if (not isinstance(v, list) or len(v) != self.num_seeds
          or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
        raise ValueError(f"train.per_replica: {field} needs train.num_seeds={self.num_seeds} finite numbers, got {v!r}")
    return {field: tuple(float(x) for x in v) for field, v in values.items()}

  @property
  def profile_window(self) -> tuple[int, int] | None:
    """(first, last) step of train.profile_steps, or None."""
    if not self.profile_steps.strip():
      return None
    try:
      first, last = (int(x) for x in self.profile_steps.split(","))
    except ValueError:
      raise ValueError(f"train.profile_steps={self.profile_steps!r}: expected 'first,last' step numbers") from None
    if not 1 <= first <= last:
      raise ValueError(f"train.profile_steps={self.profile_steps!r}: expected 1 <= first <= last")
    return first, last


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
  """DP-SGD on the critics (dg_jax/privacy.py says what is private and how it is accounted)."""
  enabled: bool = False
  l2_clip: float = 1.0                  # L2 bound on each example's critic gradient
  noise_multiplier: float = 0.0         # noise std / l2_clip; 0 = calibrate it to target_epsilon
  target_epsilon: float = 0.0           # epsilon budget; 0 = none (use noise_multiplier)
  delta: float = 0.0                    # 0 = 1 / (10 n) for n training series
  secret_seed: bool = True              # train.seed drawn from the OS's secure randomness
  sampling: str = "fixed"               # fixed: B series per step, replace-one neighbours; poisson: each
                                        # series with probability B/n, add-or-remove neighbours
  capacity: int = 0                     # poisson: rows per batch (sampled series + padding); 0 = choose
  bands: int = 1                        # > 1: DP-BandMF's correlated noise over b steps (poisson sampling)
  band_coefficients: tuple = ()         # DP-BandMF's strategy (first column of C); () = optimise for the run

  def __post_init__(self):
    if not 0 < self.l2_clip < math.inf:  # an infinite clip would turn the noise into NaN
      raise ValueError(f"privacy.l2_clip must be finite and > 0, got {self.l2_clip}")
    if not 0 <= self.noise_multiplier < math.inf:
      raise ValueError(f"privacy.noise_multiplier must be finite and >= 0, got {self.noise_multiplier}")
    if not self.target_epsilon >= 0:
      raise ValueError(f"privacy.target_epsilon must be >= 0, got {self.target_epsilon}")
    if not 0 <= self.delta < 1:
      raise ValueError(f"privacy.delta must be in [0, 1), got {self.delta}")
    if self.sampling not in ("fixed", "poisson"):
      raise ValueError(f"privacy.sampling must be 'fixed' or 'poisson', got {self.sampling!r}")
    if self.capacity < 0 or (self.capacity and self.sampling != "poisson"):
      raise ValueError(f"privacy.capacity={self.capacity}: set it (> 0) only with privacy.sampling='poisson'")
    if self.bands < 1 or (self.bands > 1 and self.sampling != "poisson"):
      raise ValueError(f"privacy.bands={self.bands}: DP-BandMF (bands > 1) needs privacy.sampling='poisson' "
                       "(its cyclic Poisson sampling); 1 = DP-SGD")
    object.__setattr__(self, "band_coefficients", tuple(float(c) for c in self.band_coefficients))  # JSON: a list
    if self.band_coefficients and len(self.band_coefficients) != self.bands:
      raise ValueError(f"privacy.band_coefficients has {len(self.band_coefficients)} entries, not privacy.bands="
                       f"{self.bands}")
    if self.band_coefficients and not (self.band_coefficients[0] > 0 and math.hypot(*self.band_coefficients) <= 1 + 1e-6):
      raise ValueError(f"privacy.band_coefficients={self.band_coefficients}: the first must be > 0 and the L2 norm at "
                       "most 1 (the sensitivity the accounting assumes)")


def resolve_sample_len(requested: int, max_length: int) -> int:
  if requested > 0:
    return requested
  return max(1, round(max_length / TARGET_RNN_STEPS))


def config_section(cls, section: ml_collections.ConfigDict):
  """A config section as the frozen dataclass `cls` (missing fields take its defaults; unknown ones raise)."""
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = set(section.keys()) - names
  if unknown:
    raise ValueError(f"unknown config fields for {cls.__name__}: {sorted(unknown)}")
  return cls(**{k: section[k] for k in section.keys()})


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  return config_section(ModelConfig, config.model)


def train_config(config: ml_collections.ConfigDict) -> TrainConfig:
  return config_section(TrainConfig, config.train)


def privacy_config(config: ml_collections.ConfigDict) -> PrivacyConfig:
  """The privacy section (disabled when absent, as in configs saved before it existed).

  An enabled one needs a noise multiplier or an epsilon target, and no PacGAN packing: with
  pack > 1 a critic row mixes several real examples, so one example's gradient is not its own.
  """
  pc = config_section(PrivacyConfig, config.privacy) if "privacy" in config else PrivacyConfig()
  if pc.enabled:
    if pc.noise_multiplier == 0 and pc.target_epsilon == 0:
      raise ValueError("privacy.enabled needs privacy.noise_multiplier > 0 or privacy.target_epsilon > 0")
    if config.model.pack != 1:
      raise ValueError(f"privacy.enabled needs model.pack=1 (got {config.model.pack}): a packed critic row "
                       "mixes several real examples, so per-example clipping would not bound one example")
  return pc
