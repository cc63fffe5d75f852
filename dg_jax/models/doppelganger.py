"""DoppelGANger networks (§4, Appendix B) as Flax Linen modules, used purely functionally.

Generator: attribute MLP -> additional-attribute (min/max) MLP -> LSTM emitting S records per step.
Critics: MLP on [flattened features incl. flags ++ attributes ++ additional attributes], and an
auxiliary MLP on the metadata part [attributes ++ additional attributes] (++ the series' means, where
tied: `DoppelGANger.aux_view`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dg_jax.data.encoding import AUTO_NORM_EPS, Head, Schema, decode_half, encode_half, series_means, value_range
from dg_jax.settings import ModelConfig, resolve_sample_len


def activate(logits: jax.Array, heads: Sequence[Head]) -> jax.Array:
  """Per-head softmax / sigmoid / tanh over the last axis."""
  out, start = [], 0
  for h in heads:
    x = logits[..., start:start + h.dim]
    out.append({"softmax": jax.nn.softmax, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}[h.activation](x))
    start += h.dim
  return jnp.concatenate(out, axis=-1) if out else logits


def discretize(values: jax.Array, heads: Sequence[Head]) -> jax.Array:
  """Categorical blocks -> one-hot of their argmax; continuous values unchanged."""
  out, start = [], 0
  for h in heads:
    x = values[..., start:start + h.dim]
    out.append(jax.nn.one_hot(jnp.argmax(x, -1), h.dim, dtype=x.dtype) if h.activation == "softmax" else x)
    start += h.dim
  return jnp.concatenate(out, axis=-1) if out else values


def keep_mask(flags: jax.Array) -> jax.Array:
  """[B, L, 2] flags -> [B, L] 1 up to and including the first record whose argmax says "ends here"."""
  ended = (flags[..., 1] > flags[..., 0]).astype(flags.dtype)
  before = jnp.cumsum(ended, axis=1) - ended  # ends strictly before each record
  return (before == 0).astype(flags.dtype)


def forced_flags(flags: jax.Array, min_length: int) -> jax.Array:
  """[B, T, 2] flags with "continues" forced before record min_length - 1: no series ends before the
  shortest training series. With min_length == T (fixed-length data) the last record also says "ends
  here", exactly the real data's flags: every generated series has length T."""
  t = jnp.arange(flags.shape[1])[None, :, None]
  flags = jnp.where(t < min_length - 1, jnp.array([1.0, 0.0], flags.dtype), flags)
  if min_length == flags.shape[1]:
    flags = jnp.where(t == min_length - 1, jnp.array([0.0, 1.0], flags.dtype), flags)
  return flags


def exact_span(features: jax.Array, additional: jax.Array, mask: jax.Array, schema: Schema) -> jax.Array:
  """[B, L, F] generated records with each continuous feature rescaled, over the records `mask` keeps, to
  span exactly what its generated half-range h implies: a real series normalised by its own min and max
  (widened by AUTO_NORM_EPS) spans [e, 1 - e] ([-1, 1]: the same points), e = AUTO_NORM_EPS / 2h, wherever
  its extremes occur. Unscaled, the generator has to bring an output head to those ends itself, and puts
  the extremes at the series' ends: generated sines rose to their last record, 0-8% of them turning over
  by more than 1% of their range where 25% of real ones do (issue 21, docs/results.md)."""
  cols = schema.continuous_columns
  x = features[..., cols]
  keep = mask[..., None] > 0
  low, high = jnp.where(keep, x, 2.0).min(axis=1), jnp.where(keep, x, -2.0).max(axis=1)  # [B, Kc]
  start, end = value_range(schema.normalization)
  half = jnp.maximum(jax.lax.stop_gradient(decode_half(schema.half_codes(additional), schema)), AUTO_NORM_EPS)
  e = AUTO_NORM_EPS / (2 * half) * (end - start)  # at most half the range: a flat series sits in the middle
  target_low, target_high = start + e, end - e
  scale = (target_high - target_low) / jnp.maximum(high - low, 1e-6)
  return features.at[..., cols].set(target_low[:, None] + (x - low[:, None]) * scale[:, None])


def rescales_at_generation(cfg: ModelConfig, schema: Schema) -> bool:
  """Whether the generator applies `exact_span` when generating (model.exact_span_at_generation). "auto":
  unless the data's levels move together (model.whiten_levels fitted a `min_max_view`). Generated series
  fall short of their span (MBA's traffic: 0.78 of it in the median), which the rescale closes, but they
  are also less peaked than real ones, so stretched to their span they can come out too wide: on the sets
  measured, those whose levels move together (stock prices) lost 10x in the discriminative score, the
  others gained or stayed even (docs/results.md, "The rescale by default where levels do not move together")."""
  span = cfg.exact_span_at_generation
  return bool(schema.additional_dim) and (span is True or (span == "auto" and not schema.min_max_view))


def floor_throughout(additional: jax.Array, schema: Schema) -> jax.Array:
  """[B, additional_dim] -> [B, len(series_floored)] whether each series' "at the floor throughout" flag
  (argmax) says so (model.floor_series_flags); stop-gradient, as the generation flags' mask."""
  m = schema.min_max_dim
  flags = additional[:, m:].reshape(additional.shape[0], -1, 2)
  return jax.lax.stop_gradient(flags[..., 1] > flags[..., 0])


def put_floor_series(additional: jax.Array, features: jax.Array | None, at: jax.Array, schema: Schema):
  """The min/max block and records (when given) of the series `floor_throughout` marks, exactly as a real series
  at the floor throughout encodes: midrange at the floor, half-range AUTO_NORM_EPS, every record in the middle
  of the value range and flagged at the floor. The flags then choose the mode (the series that never leave
  the floor), and the half-range code models only the series that do: a sigmoid made MBA's two modes (0, and 0.6
  and above) one smeared one, with a third of the upper mode's weight (docs/results.md)."""
  start, end = value_range(schema.normalization)
  eps_code = float(encode_half(np.float64(AUTO_NORM_EPS), schema))
  heads = schema.head_starts
  for k, j in enumerate(schema.series_floored):
    c = schema.continuous_features.index(j)
    on = at[:, k:k + 1]
    additional = additional.at[:, 2 * c:2 * c + 2].set(
        jnp.where(on, jnp.array([start, eps_code], additional.dtype), additional[:, 2 * c:2 * c + 2]))
    if features is not None:
      flag = heads[schema.floor_flag_head(j)]
      on = on[:, :, None]
      features = features.at[..., heads[j]].set(jnp.where(on[..., 0], (start + end) / 2, features[..., heads[j]]))
      features = features.at[..., flag:flag + 2].set(
          jnp.where(on, jnp.array([0.0, 1.0], features.dtype), features[..., flag:flag + 2]))
  return additional, features


class MLP(nn.Module):
  """ReLU MLP; with batch_norm, a BatchNorm after each hidden layer's ReLU, as the original's metadata
  generators (decay 0.9, epsilon 1e-5): batch statistics while training (pooled over the devices of
  `axis_name`, so a batch split over devices is normalised as the whole batch), running averages
  (the `batch_stats` collection) when generating."""
  num_layers: int
  num_units: int
  out_dim: int
  batch_norm: bool = False
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    for _ in range(self.num_layers):
      x = nn.relu(nn.Dense(self.num_units)(x))
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=self.axis_name)(x)
    return nn.Dense(self.out_dim)(x)


STATS = "batch_stats"  # the non-trainable collection of the generator's BatchNorm running averages


def split_stats(variables: dict) -> tuple[dict, dict]:
  """Generator variables -> (trainable ones, {STATS: running averages} or {})."""
  return ({k: v for k, v in variables.items() if k != STATS},
          {k: v for k, v in variables.items() if k == STATS})


class FeatureLSTM(nn.Module):
  """LSTM whose per-step input is [condition (constant) ++ noise_t].

  The condition's input projection is computed once, before the loop, and added inside it: as a
  broadcast outside the loop its gradient is a [R, B, 4H] sum that made the backward pass 1.6x
  slower on CPU. The noise's projection ([B, K] x [K, 4H], K small) is done inside the loop too:
  precomputing it for all steps made the forward pass (generation) 2.3x slower on CPU, with no
  gain in the backward pass.
  """
  num_units: int
  unroll: int = 1

  @nn.compact
  def __call__(self, condition, noise, initial_state):
    h_dim = self.num_units
    # a dataset without metadata has no condition (a Dense over 0 inputs cannot be initialised)
    x_cond = nn.Dense(4 * h_dim, name="condition")(condition) if condition.shape[-1] else 0.0
    w_noise = self.param("noise", nn.initializers.lecun_normal(), (noise.shape[-1], 4 * h_dim))
    w_hh = self.param("w_hh", nn.initializers.orthogonal(), (h_dim, 4 * h_dim))

    def cell(carry, noise_t):
      h, c = carry
      i, f, g, o = jnp.split(x_cond + noise_t @ w_noise + h @ w_hh, 4, axis=-1)
      c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)  # +1: the usual forget bias
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    _, hs = jax.lax.scan(cell, initial_state, noise, unroll=self.unroll)
    return hs  # [R, B, H]


class Generator(nn.Module):
  schema: Schema
  cfg: ModelConfig
  unroll: int = 1
  axis_name: str | None = None  # the devices that split a training batch (BatchNorm statistics)

  @property
  def sample_len(self) -> int:
    return resolve_sample_len(self.cfg.sample_len, self.schema.max_length)

  def setup(self):
    s, c = self.schema, self.cfg
    # no attributes or no min/max (no continuous feature, or no auto-normalisation): no MLP for them
    bn = dict(batch_norm=c.metadata_batch_norm, axis_name=self.axis_name)
    if s.attribute_dim:
      self.attribute_mlp = MLP(c.attribute_num_layers, c.attribute_num_units, s.attribute_dim, **bn)
    if s.additional_dim:
      self.additional_mlp = MLP(c.additional_num_layers, c.additional_num_units, s.additional_dim, **bn)
    self.lstm = FeatureLSTM(c.feature_num_units, self.unroll)
    self.heads = nn.Dense(self.sample_len * s.feature_dim)  # one head per position in the S-record chunk

  def __call__(self, noise: dict, attributes: jax.Array | None = None, length: int | None = None,
               train: bool = False):
    """noise: from `sample_noise`. attributes: given (encoded) attributes for conditional generation.
    length: force this many records (no flag masking); default: the schema's T with flag masking.
    train: BatchNorm (model.metadata_batch_norm) on batch statistics, updating the running averages
    (apply with mutable=[STATS]), and no model.exact_span_at_generation rescale; otherwise on the running
    averages, with it."""
    s = self.schema
    batch = noise["attribute"].shape[0]
    if attributes is None:
      attributes = (activate(self.attribute_mlp(noise["attribute"], train), s.attribute_heads) if s.attribute_dim
                    else jnp.zeros((batch, 0)))
    discrete = jax.lax.stop_gradient(discretize(attributes, s.attribute_heads))
    additional = jnp.zeros((batch, 0))
    if s.additional_dim:
      additional = activate(self.additional_mlp(jnp.concatenate([discrete, noise["additional"]], -1), train),
                            s.additional_heads)
    if s.series_floored:  # model.floor_series_flags
      at_floor = floor_throughout(additional, s)
      additional, _ = put_floor_series(additional, None, at_floor, s)
    # all generated metadata enters the LSTM stop-gradient, as in the original (§4.3's decoupling): the
    # feature critic's gradient reaches the metadata generators only through the flattened critic input
    condition = jax.lax.stop_gradient(jnp.concatenate([discrete, additional], -1))
    hs = self.lstm(condition, noise["feature"], (noise["initial_h"], noise["initial_c"]))
    r, b, _ = hs.shape
    records = self.heads(hs).reshape(r, b, self.sample_len, s.feature_dim)
    records = jnp.swapaxes(records, 0, 1).reshape(b, r * self.sample_len, s.feature_dim)
    features = activate(records, s.feature_heads)
    if s.series_floored:
      _, features = put_floor_series(additional, features, at_floor, s)
    span = s.additional_dim and (self.cfg.exact_span or (not train and rescales_at_generation(self.cfg, s)))
    if length is None:
      features = features[:, :s.max_length]
      if s.min_length > 1:
        features = jnp.concatenate([features[..., :-2], forced_flags(features[..., -2:], s.min_length)], -1)
      mask = jax.lax.stop_gradient(keep_mask(features[..., -2:]))
      features = (exact_span(features, additional, mask, s) if span else features) * mask[..., None]
    else:
      features = features[:, :length]
      if span:
        features = exact_span(features, additional, jnp.ones(features.shape[:2]), s)
    return dict(attributes=attributes, additional_attributes=additional, features=features)


def num_rollout_steps(length: int, sample_len: int) -> int:
  return math.ceil(length / sample_len)


def feature_noise(key: jax.Array, steps: int, batch_size: int, cfg: ModelConfig) -> jax.Array:
  """[steps, B, noise dim] LSTM noise: a fresh draw per step, or with cfg.feature_noise="per_series" one
  draw per series repeated at every step (issue 21: half of the step-to-step jitter of a trained model
  came from the per-step draws)."""
  if cfg.feature_noise == "per_series":
    return jnp.broadcast_to(jax.random.normal(key, (1, batch_size, cfg.feature_noise_dim)),
                            (steps, batch_size, cfg.feature_noise_dim))
  return jax.random.normal(key, (steps, batch_size, cfg.feature_noise_dim))


def sample_noise(key: jax.Array, batch_size: int, schema: Schema, cfg: ModelConfig,
                 length: int | None = None) -> dict:
  """All generator noise for `batch_size` samples of `length` records (default: T)."""
  steps = num_rollout_steps(length or schema.max_length, resolve_sample_len(cfg.sample_len, schema.max_length))
  k = jax.random.split(key, 5)
  h = cfg.feature_num_units
  init = (jax.random.normal if cfg.initial_state == "random" else lambda _, shape: jnp.zeros(shape))
  return dict(attribute=jax.random.normal(k[0], (batch_size, cfg.attribute_noise_dim)),
              additional=jax.random.normal(k[1], (batch_size, cfg.additional_noise_dim)),
              feature=feature_noise(k[2], steps, batch_size, cfg),
              initial_h=init(k[3], (batch_size, h)), initial_c=init(k[4], (batch_size, h)))


class Critic(nn.Module):
  """MLP critic on packed rows: `pack` consecutive examples are concatenated (PacGAN)."""
  num_layers: int
  num_units: int
  pack: int = 1

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0] // self.pack, -1)
    return MLP(self.num_layers, self.num_units, 1)(x)[:, 0]


@dataclasses.dataclass(frozen=True)
class DoppelGANger:
  """The composed model: modules plus how samples are flattened for the critics."""
  schema: Schema
  cfg: ModelConfig
  unroll: int = 1

  @property
  def generator(self) -> Generator:
    return Generator(self.schema, self.cfg, self.unroll)

  @property
  def critic(self) -> Critic:
    return Critic(self.cfg.critic_num_layers, self.cfg.critic_num_units, self.cfg.pack)

  @property
  def sample_len(self) -> int:
    return resolve_sample_len(self.cfg.sample_len, self.schema.max_length)

  @property
  def meta_dim(self) -> int:
    return self.schema.attribute_dim + self.schema.additional_dim

  @property
  def has_aux_critic(self) -> bool:
    """The auxiliary critic judges the metadata; without any (no attributes, no min/max) there is none."""
    return self.cfg.aux_critic and self.meta_dim > 0

  @property
  def step_columns(self) -> list[int]:
    """The feature columns the step critic judges: the continuous features the schema's scale calls smooth."""
    return [int(c) for c, scale in zip(self.schema.continuous_columns, self.schema.step_scale) if scale > 0]

  @property
  def has_step_critic(self) -> bool:
    """model.step_critic_weight > 0 and a smooth continuous feature in a scale fitted on the training data
    (train.py; none with privacy)."""
    return bool(self.cfg.step_critic_weight and self.step_columns)

  def aux_view(self, x: jax.Array) -> jax.Array:
    """Flattened samples -> what the auxiliary critic sees: the metadata (the last `meta_dim` columns), and with
    the schema's `level_view` (model.aux_critic_levels) each series' mean of each continuous feature through
    it. A real series' level is tied to its shape and min/max; with auto-normalisation the critics see only the
    product, and `sensors`' per-series humidity and temperature means, tied within a site (interquartile range
    0.07), came out 16x looser (docs/results.md)."""
    records, meta = self.records_and_metadata(x)
    if not self.schema.level_view:
      return meta
    means = series_means(records, self.as_generated(meta), self.schema)
    return jnp.concatenate([meta, means @ jnp.asarray(self.schema.level_view, x.dtype)], axis=-1)

  def records_and_metadata(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flattened samples -> ([B, T, F] records, [B, meta_dim] metadata: the last columns, as `flatten` put them)."""
    t, fd = self.schema.max_length, self.schema.feature_dim
    return x[:, :t * fd].reshape(x.shape[0], t, fd), x[:, x.shape[1] - self.meta_dim:]

  def as_generated(self, meta: jax.Array) -> jax.Array:
    """The additional attributes of the metadata columns of flattened samples, with the critics' view of the
    min/max block (flatten) undone."""
    additional = meta[:, self.schema.attribute_dim:]
    if self.schema.min_max_view:
      additional = self.view_min_max(additional, np.linalg.inv(np.array(self.schema.min_max_view)))
    return additional

  def step_view(self, x: jax.Array) -> jax.Array:
    """Flattened samples -> [B, (T-1)*k] (with `unit_step_scale`: [B, 2*(T-1)*k + A]) what the step
    critic sees: each smooth continuous feature's differences between neighbouring kept records over the
    training data's root mean square of them (0 past a series' end). The critic has its own gradient
    penalty, so it is 1-Lipschitz in these units and spends none of the feature critic's budget: a jitter
    of a few percent of a smooth series' range is worth as much as the step of a real one (issue 21).
    Auto-normalised series (the schema's `unit_step_scale`) are also shown in the data's units: the same
    differences times the series' generated half-range, over the data's root mean square of that, with
    the attributes, so that a series' amplitude is judged with its shape and its kind (generated sines
    kept good shapes at the wrong amplitude: docs/results.md)."""
    records, meta = self.records_and_metadata(x)
    kept = records[:, 1:, -2:].sum(-1, keepdims=True)  # the generation flags: 0 past the end
    steps = jnp.diff(records[..., self.step_columns], axis=1) * kept
    smooth = [i for i, s in enumerate(self.schema.step_scale) if s > 0]
    views = [steps / jnp.asarray([self.schema.step_scale[i] for i in smooth], x.dtype)]
    if self.schema.unit_step_scale:
      half = decode_half(self.schema.half_codes(self.as_generated(meta)), self.schema)[:, None, smooth]
      views.append(steps * half / jnp.asarray([self.schema.unit_step_scale[i] for i in smooth], x.dtype))
      views.append(meta[:, None, :self.schema.attribute_dim])
    return jnp.concatenate([v.reshape(x.shape[0], -1) for v in views], axis=-1)

  def flatten(self, sample: dict) -> jax.Array:
    """[B, T*F + (T-1)*Kc + A + 2Kc] critic input: the records, each continuous feature's record-to-record
    differences times model.critic_difference_weight (none when 0), then the metadata (the last `meta_dim`
    columns; the min/max block through the schema's `min_max_view`). The critics are 1-Lipschitz in this
    input (gradient penalty), so the weight is how much a jump between neighbouring records may count for:
    at 0 (the paper) step-to-step jitter of a few percent of a series' range is worth too little to them,
    and generated series stay rough (issue 21)."""
    f = sample["features"]
    parts = [f.reshape(f.shape[0], -1)]
    if self.cfg.critic_difference_weight and f.shape[1] > 1:
      steps = jnp.diff(f[..., self.schema.continuous_columns], axis=1)
      parts.append(self.cfg.critic_difference_weight * steps.reshape(f.shape[0], -1))
    additional = sample["additional_attributes"]
    if self.schema.min_max_view:  # model.whiten_levels (encoding.VIEW_FLOOR says why)
      additional = self.view_min_max(additional, np.array(self.schema.min_max_view))
    return jnp.concatenate(parts + [sample["attributes"], additional], axis=-1)

  def view_min_max(self, additional: jax.Array, view: np.ndarray) -> jax.Array:
    """The additional attributes with their min/max block (not the series' floor flags) mapped through `view`."""
    m = self.schema.min_max_dim
    return additional.at[:, :m].set(additional[:, :m] @ jnp.asarray(view, additional.dtype))

  def init(self, key: jax.Array, batch_size: int = 2) -> dict:
    batch_size = max(batch_size, self.cfg.pack)
    kg, kc, ka, kn = jax.random.split(key, 4)
    noise = sample_noise(kn, batch_size, self.schema, self.cfg)
    g_params = self.generator.init(kg, noise)
    x = self.flatten(self.generator.apply(g_params, noise))
    params = dict(generator=g_params, critic=self.critic.init(kc, x))
    if self.has_aux_critic:
      params["aux_critic"] = self.critic.init(ka, self.aux_view(x))
    if self.has_step_critic:  # a key of its own without changing the others' (runs without it stay as they were)
      params["step_critic"] = self.critic.init(jax.random.fold_in(ka, 1), self.step_view(x))
    return params
