"""Naive GAN baseline (§3.3.2, §5.1.2, Appendix B): an MLP generator from noise to a whole flattened
sample [attributes ++ additional attributes ++ T records (features and generation flags)] and an
MLP critic on it, trained with WGAN-GP.

Output heads follow the schema (softmax for one-hot blocks and flags, sigmoid/tanh for continuous
values). As in DoppelGANger's generator, records after the first "end" flag are zeroed (no
gradient through the mask), so fake samples are padded like real ones; lengths are read from the
generated flags when decoding.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dg_jax import losses
from dg_jax.baselines import common
from dg_jax.data import encoding
from dg_jax.data.schema import Dataset
from dg_jax.models.doppelganger import MLP, Critic, activate, keep_mask
from dg_jax.settings import train_config


@dataclasses.dataclass(frozen=True)
class NaiveGANConfig:
  noise_dim: int = 100            # generator input noise
  generator_num_layers: int = 4   # hidden layers of the generator MLP
  generator_num_units: int = 200
  critic_num_layers: int = 4      # hidden layers of the critic MLP
  critic_num_units: int = 200

  def __post_init__(self):
    if min(self.noise_dim, self.generator_num_units, self.critic_num_units) < 1:
      raise ValueError(f"baseline.naive_gan: sizes must be >= 1; got {self}")


def flatten(enc: encoding.Encoded) -> np.ndarray:
  """[n, A + 2Kc + T*F] real samples in the generator's output layout."""
  f = enc.features
  return np.concatenate([common.meta_rows(enc), f.reshape(len(f), -1)], axis=1).astype(np.float32)


def unflatten(x: np.ndarray, schema: encoding.Schema) -> encoding.Encoded:
  a, m = schema.attribute_dim, schema.attribute_dim + schema.additional_dim
  return encoding.Encoded(x[:, :a], x[:, a:m], x[:, m:].reshape(len(x), schema.max_length, schema.feature_dim))


class NaiveGANBaseline(common.Baseline):
  name = "naive_gan"

  @staticmethod
  def _nets(hp: NaiveGANConfig, schema: encoding.Schema):
    meta_dim, t, f = schema.attribute_dim + schema.additional_dim, schema.max_length, schema.feature_dim
    generator = MLP(hp.generator_num_layers, hp.generator_num_units, meta_dim + t * f)

    def generate(g_params, noise):
      """noise [B, noise_dim] -> flattened samples, zero after each series' first "end" flag."""
      x = generator.apply(g_params, noise)
      meta = activate(x[:, :meta_dim], schema.attribute_heads + schema.additional_heads)
      records = activate(x[:, meta_dim:].reshape(-1, t, f), schema.feature_heads)  # heads per record
      records = records * jax.lax.stop_gradient(keep_mask(records[..., -2:]))[..., None]
      return jnp.concatenate([meta, records.reshape(len(x), -1)], axis=1)

    return generator, Critic(hp.critic_num_layers, hp.critic_num_units), generate

  @classmethod
  def fit(cls, data: Dataset, config: ml_collections.ConfigDict) -> "NaiveGANBaseline":
    hp, tc = common.hyperparameters(NaiveGANConfig, config, cls.name), train_config(config)
    schema, enc = common.prepare(data, config)
    real = flatten(enc)
    generator, critic, generate = cls._nets(hp, schema)
    g_key, d_key, run_key = jax.random.split(jax.random.key(tc.seed), 3)
    params = jax.jit(lambda: dict(g=generator.init(g_key, jnp.zeros((1, hp.noise_dim))),
                                  d=critic.init(d_key, jnp.zeros((1, real.shape[1])))))()  # jitted: one compilation
    opt = common.adam(tc)

    def d_loss_fn(d_params, real, fake, t):
      return losses.critic_loss(lambda x: critic.apply(d_params, x), real, fake, t, tc.gp_weight)

    def g_loss_fn(g_params, d_params, noise):
      return losses.generator_loss(lambda x: critic.apply(d_params, x), generate(g_params, noise))

    def step_fn(state, batch, key):
      """tc.d_rounds critic updates on the same real batch, then tc.g_rounds generator updates."""
      params, opt_state = state
      (real,) = batch
      b = real.shape[0]
      for r in range(tc.d_rounds):
        k_noise, k_t = jax.random.split(jax.random.fold_in(key, r))
        fake = generate(params["g"], jax.random.normal(k_noise, (b, hp.noise_dim)))
        (d_loss, w_distance), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
            params["d"], real, jax.lax.stop_gradient(fake), jax.random.uniform(k_t, (b,)))
        updates, d_opt = opt.update(grads, opt_state["d"], params["d"])
        params, opt_state = dict(params, d=optax.apply_updates(params["d"], updates)), dict(opt_state, d=d_opt)
      for r in range(tc.g_rounds):
        noise = jax.random.normal(jax.random.fold_in(key, tc.d_rounds + r), (b, hp.noise_dim))
        g_loss, grads = jax.value_and_grad(g_loss_fn)(params["g"], params["d"], noise)
        updates, g_opt = opt.update(grads, opt_state["g"], params["g"])
        params, opt_state = dict(params, g=optax.apply_updates(params["g"], updates)), dict(opt_state, g=g_opt)
      return (params, opt_state), dict(d_loss=d_loss, g_loss=g_loss, w_distance=w_distance)

    opt_state = dict(g=opt.init(params["g"]), d=opt.init(params["d"]))
    (params, _), history = common.train_loop(cls.name, step_fn, (params, opt_state), [real], tc, run_key)
    return cls(schema, config, {}, jax.device_get(params["g"]), history)

  def _sample(self, num_samples: int, seed: int):
    hp = common.hyperparameters(NaiveGANConfig, self.config, self.name)
    x = np.asarray(jax.device_get(_sampler(hp, self.schema, num_samples)(self.params, jax.random.key(seed))))
    return unflatten(x, self.schema), None


@functools.lru_cache(maxsize=16)
def _sampler(hp: NaiveGANConfig, schema: encoding.Schema, num_samples: int):
  """Jitted (generator params, key) -> [num_samples, ...] flattened samples; shared by equal shapes."""
  generate = NaiveGANBaseline._nets(hp, schema)[2]
  return jax.jit(lambda params, key: generate(params, jax.random.normal(key, (num_samples, hp.noise_dim))))
