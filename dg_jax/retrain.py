"""Metadata-only retraining (§6.1): move the attribute generator towards a new attribute mix.

Only the attribute MLP is trained (WGAN-GP against a fresh critic on attributes); the min/max
generator and the LSTM are frozen, so P(features | attributes) is unchanged while P(attributes)
follows the given rows.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dg_jax import losses
from dg_jax.data import encoding
from dg_jax.data.batching import BatchIterator
from dg_jax.models.doppelganger import MLP, STATS, Critic, DoppelGANger, activate, split_stats

log = logging.getLogger(__name__)


def retrain_attributes(model: DoppelGANger, g_params, attributes: np.ndarray, num_steps: int = 2000,
                       seed: int = 0, batch_size: int = 100, learning_rate: float = 1e-3,
                       gp_weight: float = 10.0):
  """-> generator params whose attribute MLP now matches `attributes` ([n, m] codes); the rest unchanged."""
  schema, cfg = model.schema, model.cfg
  if schema.attribute_dim == 0:
    raise ValueError("the model has no attributes to retrain")
  real = encoding.encode_attributes(np.asarray(attributes, np.float64), schema)
  mlp = MLP(cfg.attribute_num_layers, cfg.attribute_num_units, schema.attribute_dim, cfg.metadata_batch_norm)
  critic = Critic(cfg.critic_num_layers, cfg.critic_num_units)
  key_init, key_run = jax.random.split(jax.random.key(seed))
  mlp_stats = {k: v["attribute_mlp"] for k, v in split_stats(g_params)[1].items()}  # BatchNorm's, if on
  params = dict(generator=g_params["params"]["attribute_mlp"], critic=critic.init(key_init, real[:2]))
  opt = optax.adam(learning_rate, b1=0.5, b2=0.999)
  opt_state = dict(generator=opt.init(params["generator"]), critic=opt.init(params["critic"]))

  def fake_attributes(p, noise, stats):
    logits, updated = mlp.apply(dict(stats, params=p), noise, train=True, mutable=[STATS])
    return activate(logits, schema.attribute_heads), dict(updated)

  @jax.jit
  def step(params, stats, opt_state, batch, i):
    k_noise, k_t = jax.random.split(jax.random.fold_in(key_run, i))
    noise = jax.random.normal(k_noise, (batch.shape[0], cfg.attribute_noise_dim))
    fake, pullback, stats = jax.vjp(functools.partial(fake_attributes, noise=noise, stats=stats),
                                    params["generator"], has_aux=True)
    d_loss = lambda c: losses.critic_loss(lambda x: critic.apply(c, x), batch, jax.lax.stop_gradient(fake),
                                          jax.random.uniform(k_t, (batch.shape[0],)), gp_weight)[0]
    d_value, grads = jax.value_and_grad(d_loss)(params["critic"])
    updates, c_opt = opt.update(grads, opt_state["critic"])
    c_params = optax.apply_updates(params["critic"], updates)
    g_value, d_fake = jax.value_and_grad(lambda f: losses.generator_loss(lambda x: critic.apply(c_params, x), f))(fake)
    updates, g_opt = opt.update(pullback(d_fake)[0], opt_state["generator"])
    new = dict(generator=optax.apply_updates(params["generator"], updates), critic=c_params)
    return new, stats, dict(generator=g_opt, critic=c_opt), d_value, g_value

  batches = BatchIterator([real], batch_size, seed)
  for i in range(num_steps):
    params, mlp_stats, opt_state, d_value, g_value = step(params, mlp_stats, opt_state,
                                                          jnp.asarray(batches.next()[0]), i)
    if (i + 1) % max(num_steps // 10, 1) == 0:
      log.info("retrain attributes: step %d/%d  d_loss=%.4g  g_loss=%.4g", i + 1, num_steps, d_value, g_value)
  out = jax.tree.map(lambda x: x, g_params)  # a copy: the caller's params stay as they were
  out["params"] = dict(out["params"], attribute_mlp=params["generator"])
  for name, value in mlp_stats.items():
    out[name] = dict(out[name], attribute_mlp=value)
  return out


def retrained_privacy_claim(spent: dict, attributes_file: str) -> dict:
  """What a private run's (epsilon, delta) still covers once its attribute generator is retrained.

  Retraining reads only the frozen generator (DP output) and the new attribute rows, never the original
  training data: for that data the bundle is post-processing, so the guarantee stands. The new rows
  are used without DP, so the bundle gives them no protection; the claim says both."""
  return dict(spent, covers=spent.get("covers", "the training series").replace("the training series",
              "the original training series", 1) + "; the attribute generator was retrained without DP on other "
              "rows, which cannot weaken the guarantee for them",
              not_covered=f"the attribute rows of {attributes_file}, used for metadata-only retraining "
                          "without differential privacy")


def retrain_attributes_cli(source: str, attributes_file: str, bundle: str, num_steps: int, seed: int) -> None:
  """Retrains the attribute generator of a bundle or of a workdir (`source`; the generator --mode=generate
  would use by default: the best-scored replica's best when scored, else the latest)."""
  from dg_jax import sharding
  from dg_jax.checkpoints import is_bundle, save_bundle
  from dg_jax.sampling import attributes_from_file, load_generator
  model, params, config = load_generator(*((None, source) if is_bundle(source) else (source,)))
  rows = attributes_from_file(attributes_file, model.schema)
  new_params = retrain_attributes(model, sharding.to_host(params), rows, num_steps, seed)
  if "privacy_spent" in config:
    config.privacy_spent = retrained_privacy_claim(config.privacy_spent.to_dict(), attributes_file)
  save_bundle(bundle, new_params, model.schema, config.to_json(indent=1))
  log.info("wrote the retrained generator to %s", bundle)
