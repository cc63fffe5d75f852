"""What the AR and RNN baselines share (§5.1.2): next-record predictors conditioned on the attributes.

Records are encoded ones (dg_jax.data.encoding): feature blocks, then the 2 generation-flag
columns. The first record is drawn from a Gaussian fitted to the training series' first records
(one-hot blocks then snapped to their argmax); every later record R_t is predicted from the
series' metadata and the earlier records. Training uses teacher forcing: squared error on the
activated continuous outputs plus cross-entropy on each categorical block and the generation
flag, over the steps t = 2..length of each series.

Generation feeds each prediction back. A trained regressor would give one series per attribute
row, so (our choice, documented in configs/baselines.py) continuous outputs get Gaussian noise
with the per-column residual std measured on the training data (times `noise_scale`), and
categorical blocks and the generation flag are drawn from their predicted probabilities
(`sample_discrete`; else argmax). A series ends at its first "end" flag (lengths vary).
"""
from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dg_jax.baselines import common
from dg_jax.data import encoding
from dg_jax.data.schema import Dataset
from dg_jax.models.doppelganger import activate, discretize
from dg_jax.settings import train_config

RESIDUAL_SERIES = 1000  # training series (at most) on which the residual std is measured


def shift_right(records: jax.Array, k: int = 1) -> jax.Array:
  """[B, T, F] -> the records k steps earlier (zeros before the start)."""
  return jnp.pad(records, ((0, 0), (k, 0), (0, 0)))[:, :records.shape[1]]


def step_mask(lengths: jax.Array, t: int) -> jax.Array:
  """[B, T] 1 where a record is predicted in training: steps 2..length (the first is drawn)."""
  steps = jnp.arange(t)[None, :]
  return ((steps >= 1) & (steps < lengths[:, None])).astype(jnp.float32)


def record_loss(logits: jax.Array, records: jax.Array, mask: jax.Array, heads) -> jax.Array:
  """Mean over masked steps of: squared error per continuous head + cross-entropy per softmax head."""
  total, start = 0.0, 0
  for h in heads:
    x, y = logits[..., start:start + h.dim], records[..., start:start + h.dim]
    if h.activation == "softmax":
      total = total - jnp.sum(y * jax.nn.log_softmax(x), axis=-1)
    else:
      total = total + (activate(x, [h]) - y)[..., 0] ** 2
    start += h.dim
  return jnp.sum(total * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sample_record(key: jax.Array, logits: jax.Array, heads, std: jax.Array, noise_scale: float,
                  sample_discrete: bool, low: float, high: float) -> jax.Array:
  """[B, F] logits -> one record: one-hot draws (or argmax) per softmax head; activated continuous
  outputs plus N(0, (noise_scale * std)^2) noise, clipped to the model-space range."""
  out, start = [], 0
  for k, h in zip(jax.random.split(key, len(heads)), heads):
    x = logits[..., start:start + h.dim]
    if h.activation == "softmax":
      code = jax.random.categorical(k, x) if sample_discrete else jnp.argmax(x, -1)
      out.append(jax.nn.one_hot(code, h.dim, dtype=x.dtype))
    else:
      y = activate(x, [h]) + noise_scale * std[start] * jax.random.normal(k, x.shape)
      out.append(jnp.clip(y, low, high))
    start += h.dim
  return jnp.concatenate(out, axis=-1)


def fit_first_record(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Gaussian of the first records: (mean [F], lower Cholesky factor [F, F] of the covariance)."""
  mean = first.mean(axis=0)
  cov = np.atleast_2d(np.cov(first, rowvar=False)) if len(first) > 1 else np.zeros((len(mean),) * 2)
  scale = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mean)))  # ridge: one-hot blocks are collinear
  return mean.astype(np.float32), scale.astype(np.float32)


class NextRecordBaseline(common.Baseline):
  """Subclasses set `hp_class` and implement `_net(hp, record_dim)`, a Linen module with
  methods `teacher_forced(meta [B, M], prev [B, T, F]) -> logits [B, T, F]` (prev[:, t] = R_{t-1},
  zeros at t = 0) and `step(state, meta, record) -> (state, logits)`, and `_initial_state(hp, b, f)`."""
  hp_class: ClassVar[type]

  @classmethod
  def _net(cls, hp, record_dim: int):
    raise NotImplementedError

  @classmethod
  def _initial_state(cls, hp, batch_size: int, record_dim: int):
    raise NotImplementedError

  @property
  def hp(self):
    return common.hyperparameters(self.hp_class, self.config, self.name)

  @classmethod
  def fit(cls, data: Dataset, config: ml_collections.ConfigDict) -> "NextRecordBaseline":
    hp, tc = common.hyperparameters(cls.hp_class, config, cls.name), train_config(config)
    data = data.validate()
    schema, enc = common.prepare(data, config)
    meta, records, heads = common.meta_rows(enc), enc.features, schema.feature_heads
    net = cls._net(hp, schema.feature_dim)
    init_key, run_key = jax.random.split(jax.random.key(tc.seed))
    params = jax.jit(lambda: net.init(init_key, meta[:1], records[:1], method="teacher_forced"))()
    opt = common.adam(tc)

    def predict(params, meta, records):
      """Teacher forcing: logits of every record given the true earlier ones."""
      return net.apply(params, meta, shift_right(records), method="teacher_forced")

    def loss_fn(params, meta, records, lengths):
      return record_loss(predict(params, meta, records), records, step_mask(lengths, records.shape[1]), heads)

    def step_fn(state, batch, key):
      del key  # deterministic given the batch
      params, opt_state = state
      loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), dict(loss=loss)

    (params, _), history = common.train_loop(cls.name, step_fn, (params, opt.init(params)),
                                             [meta, records, data.lengths.astype(np.int32)], tc, run_key)
    params = jax.device_get(params)
    first_mean, first_scale = fit_first_record(records[:, 0])
    n = min(len(records), RESIDUAL_SERIES)
    outputs = jax.jit(lambda *args: activate(predict(*args), heads))(params, meta[:n], records[:n])
    mask = np.asarray(step_mask(data.lengths[:n], records.shape[1]), bool)
    residuals = (np.asarray(outputs) - records[:n])[mask]  # [predicted steps, F]
    continuous = np.concatenate([np.full(h.dim, h.activation != "softmax") for h in heads])
    residual_std = np.where(continuous, residuals.std(axis=0) if len(residuals) else 0, 0).astype(np.float32)
    arrays = dict(meta_rows=meta, attribute_rows=data.attributes, first_mean=first_mean,
                  first_scale=first_scale, residual_std=residual_std)
    return cls(schema, config, arrays, params, history)

  def _sample(self, num_samples: int, seed: int):
    idx = common.draw_rows(len(self.arrays["meta_rows"]), num_samples, seed)
    meta = self.arrays["meta_rows"][idx]
    arrays = (self.arrays[k] for k in ("first_mean", "first_scale", "residual_std"))
    rollout = _rollout(type(self), self.hp, self.schema)
    features = np.asarray(jax.device_get(rollout(self.params, meta, jax.random.key(seed), *arrays)))
    a = self.schema.attribute_dim
    return encoding.Encoded(meta[:, :a], meta[:, a:], features), self.arrays["attribute_rows"][idx]


@functools.lru_cache(maxsize=16)
def _rollout(cls, hp, schema: encoding.Schema):
  """Jitted (params, meta [B, M], key, first_mean, first_scale, residual_std) -> encoded features
  [B, T, F]; cached so that models of the same shape share one compilation."""
  heads, f, t = schema.feature_heads, schema.feature_dim, schema.max_length
  net, (low, high) = cls._net(hp, f), encoding.value_range(schema.normalization)

  def rollout(params, meta, key, mean, scale, std):
    b = meta.shape[0]
    first_key, step_key = jax.random.split(key)
    first = mean + jax.random.normal(first_key, (b, f)) @ scale.T
    first = jnp.clip(discretize(first, heads), low, high)

    def body(carry, i):
      state, record = carry
      state, logits = net.apply(params, state, meta, record, method="step")
      record = sample_record(jax.random.fold_in(step_key, i), logits, heads, std, hp.noise_scale,
                             hp.sample_discrete, low, high)
      return (state, record), record

    # Training's step 0 saw no record yet (zeros, see shift_right): feed it too, so that the state
    # predicting R_1 from R_0 is the one training used (it matters for the LSTM's carry).
    state, _ = net.apply(params, cls._initial_state(hp, b, f), meta, jnp.zeros((b, f)), method="step")
    _, rest = jax.lax.scan(body, (state, first), jnp.arange(1, t))
    return jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)

  return jax.jit(rollout)
