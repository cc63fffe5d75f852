"""The pure training step `(state, batches, keys) -> (state, metrics)` of K replicas at once.

The state holds K independent runs (train.num_seeds; replica k is the run with seed train.seed + k)
on a leading axis; the step is vmapped over it inside one compiled program, and the replicas are
split over the mesh's 'seeds' axis (dg_jax/sharding.py). Replica k computes exactly what a
one-replica run with seed + k computes (its own noise, batches and parameters).

One step = `d_rounds` critic updates then `g_rounds` generator updates. Per-device work runs under
`shard_map` over the batch, and gradients cross devices once per update (one `pmean` after the
backward pass), never inside the LSTM's loop. The generator forward of the last critic round is
reused for the generator update through `jax.vjp` (same fake samples, updated critic): one LSTM
rollout per step instead of two. Several steps are fused into one compiled call with `lax.scan`.

With privacy on, the critic gradient is DP-SGD's instead (dg_jax/privacy.py): per-example gradients
(vmap over one-example losses), each clipped, summed, one psum, one shared noise draw (with DP-BandMF
correlated with the last draws, kept in the state's `band_noise`), divided by the global batch. The
generator update is unchanged: it never reads real data.

Divergence is a replica's own problem (`guard`): a replica whose losses or parameters turn non-finite
during a dispatch gets back the state it had before that dispatch, skips the dispatch's steps (its
step counter moves on with the others', so its next batches and noise are new ones) and counts a
rollback, which is also folded into its random keys. After train.max_rollbacks rollbacks, one more
divergence freezes it: it keeps its last finite state and `health.frozen_at` records the step of that
state. The other replicas never notice.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dg_jax import losses, privacy, sharding
from dg_jax.data import batching
from dg_jax.models.doppelganger import STATS, DoppelGANger, sample_noise, split_stats
from dg_jax.settings import PER_REPLICA_FIELDS, ModelConfig, PrivacyConfig, TrainConfig
from dg_jax.sharding import DATA, SEEDS

DP_NOISE_STREAM = 0x5eed  # fold_in tag of the DP noise keys, apart from the step's other keys
ROLLBACK_STREAM = 0x7e7a  # fold_in tag of the keys of a replica that was rolled back
NOISE_SPECS = dict(attribute=P(DATA), additional=P(DATA), feature=P(None, DATA),
                   initial_h=P(DATA), initial_c=P(DATA))
# TrainConfig fields that no compiled program reads (the step takes its decay's horizon as an argument),
# set to these values in `program_config`.
UNREAD_FIELDS = dict(seed=0, max_minutes=0.0, log_every=1, checkpoint_every=1, keep_checkpoints=1,
                     steps_per_dispatch=1, data_placement="auto", eval_every=0, eval_samples=2, eval_holdout=0.0,
                     profile_steps="", tensorboard=False, init_optimizer=False)


def program_config(tc: TrainConfig) -> TrainConfig:
  """`tc` as the compiled programs see it: runs in one process that differ only in UNREAD_FIELDS (a
  resume to more steps, another seed or budget) trace and compile their init and step once, not once each.
  num_steps counts only as the default horizon of a decay."""
  return dataclasses.replace(tc, **UNREAD_FIELDS, **({"num_steps": 1} if tc.lr_decay_start >= 1 else {}))


def optimizer(hp: dict) -> optax.GradientTransformation:
  """Adam with the learning rate and betas of hp (hyperparameters' names)."""
  return optax.adam(hp["learning_rate"], b1=hp["beta1"], b2=hp["beta2"])


def learning_rate_scale(step, horizon, decay_start: float):
  """The factor of both learning rates at `step` (train.lr_decay_start): 1 until decay_start * horizon,
  then falling linearly to zero at `horizon`, the step where the run ends (train.num_steps, or where
  train.max_minutes will stop it: train.py estimates that as it goes). A GAN's last step is otherwise a
  draw from wherever the two players' oscillation has got to; annealed, they settle (issue 21)."""
  if decay_start >= 1:
    return 1.0
  return jnp.clip((horizon - step) / ((1 - decay_start) * horizon), 0.0, 1.0)


def hyperparameters(tc: TrainConfig, mc: ModelConfig) -> tuple[dict, dict]:
  """The numbers of PER_REPLICA_FIELDS the step computes with, by short name: (the config's values as
  Python floats, {those train.per_replica sets: [K] float32 arrays}). The step takes the second as an
  argument, vmapped with the replicas, so a run without per-replica values computes exactly as before."""
  sections = dict(train=tc, model=mc)
  fixed = {name: getattr(sections[section], name) for section, name in (f.split(".") for f in PER_REPLICA_FIELDS)}
  varying = {field.split(".")[1]: jnp.asarray(v, jnp.float32) for field, v in tc.replica_values.items()}
  return fixed, varying


def critic_params(params: dict) -> dict:
  return {k: v for k, v in params.items() if k != "generator"}


def init_state(model: DoppelGANger, tc: TrainConfig, seed, pc: PrivacyConfig | None = None) -> tuple[dict, jax.Array]:
  """One replica's fresh training state and RNG key (split by purpose once from the seed).

  `best` holds the generator of the best-scored step so far (dg_jax/scoring.py), its confirming and
  screening scores (inf until scored) and step; `health` the replica's rollbacks and the step it was
  frozen at (-1: never); with DP-BandMF (pc.bands > 1) `band_noise` the last bands - 1 noise draws of
  each critic round's stream ([d_rounds, bands - 1, ...] per critic parameter, zero before the first)."""
  init_key, run_key = jax.random.split(jax.random.key(seed))
  params = model.init(init_key)
  opt = optimizer(hyperparameters(tc, model.cfg)[0])  # Adam's state does not depend on its numbers
  trainable, _ = split_stats(params["generator"])  # BatchNorm's running averages are not optimised
  state = dict(params=params, g_opt=opt.init(trainable), d_opt=opt.init(critic_params(params)),
               step=jnp.zeros((), jnp.int32),
               best=dict(generator=params["generator"], score=jnp.full((), jnp.inf), screen=jnp.full((), jnp.inf),
                         step=jnp.zeros((), jnp.int32)),
               health=fresh_health())
  if pc is not None and pc.enabled and pc.bands > 1:
    state["band_noise"] = jax.tree.map(lambda p: jnp.zeros((tc.d_rounds, pc.bands - 1) + p.shape, p.dtype),
                                       critic_params(params))
  return state, run_key


def fresh_health() -> dict:
  return dict(rollbacks=jnp.zeros((), jnp.int32), frozen_at=jnp.full((), -1, jnp.int32))


def guard(old: dict, new: dict, metrics: dict, max_rollbacks: int) -> dict:
  """The K-replica state after a dispatch from `old` to `new`: each replica whose metrics ([k, K]) or
  new parameters and optimiser states are not all finite keeps its old state (the step moves on),
  counts a rollback, and when that makes more than max_rollbacks is frozen at its old step.
  (The leaves are checked as one concatenation: a check per leaf made the step's compile 1.7x longer.)"""
  def flat(tree):  # [K, everything]
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.concatenate([x.reshape(x.shape[0], -1).astype(jnp.float32) for x in leaves], axis=1)
  checked = flat((jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), metrics), new["params"], new["g_opt"], new["d_opt"]))
  ok = jnp.isfinite(checked).all(axis=1)
  health = old["health"]
  active = health["frozen_at"] < 0
  keep_new = ok & active
  out = jax.tree.map(lambda n, o: jnp.where(keep_new.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)
  failed = active & ~ok
  rollbacks = health["rollbacks"] + failed
  frozen_now = failed & (rollbacks > max_rollbacks)
  out["step"] = new["step"]
  out["health"] = dict(rollbacks=rollbacks, frozen_at=jnp.where(frozen_now, old["step"], health["frozen_at"]))
  if "band_noise" in out:  # DP-BandMF's streams restart after a rollback (dg_jax/privacy.py says why)
    out["band_noise"] = jax.tree.map(lambda x: jnp.where(failed.reshape((-1,) + (1,) * (x.ndim - 1)), 0, x),
                                     out["band_noise"])
  return out


def init_replicas(model: DoppelGANger, tc: TrainConfig, seed: int, num_seeds: int = 1,
                  pc: PrivacyConfig | None = None) -> tuple[dict, jax.Array]:
  """The states and keys of replicas seed, seed+1, ..., stacked on a leading axis of num_seeds."""
  return _init_program(model, program_config(tc), seed, num_seeds, pc)


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 4))
def _init_program(model, tc, seed, num_seeds, pc):
  return jax.vmap(lambda s: init_state(model, tc, s, pc))(jnp.arange(num_seeds, dtype=jnp.int32) + seed)


def replica(tree, k: int):
  """Replica k of a stacked tree (a state, keys, metrics)."""
  return jax.tree.map(lambda x: x[k], tree)


def per_replica(fn):
  """fn over a leading replica axis: vmapped, or called directly when the axis holds one replica
  (the common K=1 case then runs exactly the unbatched computation)."""
  def wrapped(*args):
    leaves = jax.tree.leaves(args)
    if leaves and leaves[0].shape[0] == 1:
      out = fn(*replica(args, 0))
      return jax.tree.map(lambda x: x[None], out)
    return jax.vmap(fn)(*args)
  return wrapped


def critic_fns(model: DoppelGANger, d_params: dict, aux_weight=None):
  """[(weight, view, score function on the view, metric prefix)] for the critic and, where on, the
  auxiliary critic (weight aux_weight, default model.aux_critic_weight; model.aux_view) and the
  step critic (model.step_critic_weight; model.step_view). view maps flattened samples to a critic's
  input, in which its gradient penalty is taken."""
  critic = model.critic
  fns = [(1.0, lambda x: x, lambda v: critic.apply(d_params["critic"], v), "")]
  if model.has_aux_critic:
    weight = model.cfg.aux_critic_weight if aux_weight is None else aux_weight
    fns.append((weight, model.aux_view, lambda v: critic.apply(d_params["aux_critic"], v),
                "aux_"))
  if model.has_step_critic:
    fns.append((model.cfg.step_critic_weight, model.step_view, lambda v: critic.apply(d_params["step_critic"], v),
                "step_"))
  return fns


def d_loss_fn(model: DoppelGANger, gp_weight, d_params, real, fake, t):
  """The critics' losses, summed unweighted: as in the original, alpha weights only the generator's
  loss, and each critic (with its own parameters, and Adam being per-parameter) trains on its own loss."""
  total, metrics = 0.0, {}
  for _, view, fn, name in critic_fns(model, d_params):
    loss, w = losses.critic_loss(fn, view(real), view(fake), t, gp_weight, model.cfg.pack)
    total = total + loss
    metrics[f"{name}w_distance"] = w
  metrics["d_loss"] = total
  return total, metrics


def g_loss_fn(model: DoppelGANger, d_params, fake, aux_weight=None):
  return sum(weight * losses.generator_loss(fn, view(fake)) for weight, view, fn, _ in
             critic_fns(model, d_params, aux_weight))


def private_critic_grads(model: DoppelGANger, gp_weight, pc: PrivacyConfig, d_params, real, fake, t,
                         key, batch_size: int, weights, band_history=None):
  """DP-SGD critic gradient on this device's examples (inside shard_map); batch_size is global (or
  expected: Poisson sampling), weights 1 for the batch's examples and 0 for its padding rows;
  band_history: DP-BandMF's last noise draws of this round's stream (None: DP-SGD). Returns
  (gradient, metrics, updated band history).

  Example i's loss is d_loss_fn on the one-example batch (real_i, fake_i, t_i), so its gradient
  depends on example i alone; the metrics are the means of the per-example ones over the batch's examples.
  """
  def example_loss(p, r, f, ti):
    return d_loss_fn(model, gp_weight, p, r[None], f[None], ti[None])
  band = None if band_history is None else (pc.band_coefficients, band_history)
  grads, metrics, clipped, band_history = privacy.private_grad(
      example_loss, d_params, (real, fake, t), pc.l2_clip, pc.noise_multiplier, key, batch_size, DATA, weights, band)
  count = jnp.maximum(jax.lax.psum(jnp.sum(weights), DATA), 1)
  metrics = jax.tree.map(lambda m: jax.lax.psum(jnp.sum(weights * m), DATA) / count, metrics)
  return grads, dict(metrics, clipped_fraction=clipped / count), band_history


def jit_train_step(model: DoppelGANger, tc: TrainConfig, mesh, pc: PrivacyConfig | None = None,
                   gather: str | None = None):
  """make_train_step jitted, the state donated and its output laid out as its input (P('seeds') even
  when that axis has one device, which JAX would otherwise normalise to P() and so recompile the step
  at its second call). Returns (state, metrics, health): health is the new state's, in buffers of
  its own, so that it can be read after the next dispatch has consumed the state.
  Both take a last argument `horizon` (make_train_step's multi_step).
  gather: None, the step takes (state, batches, keys); else (state, data, indices, keys) and gathers
  its batches on device (data/feed.py): "replicated", data[name][indices] from data on every device;
  "sharded", each device from its own block of the data (P('data'); indices local to the block).
  Built once per process for each (model, program_config(tc), mesh, pc, gather)."""
  return _jit_train_step(model, program_config(tc), mesh, pc, gather)


@functools.lru_cache(maxsize=8)
def _jit_train_step(model, tc, mesh, pc, gather):
  step = make_train_step(model, tc, mesh, pc)
  rows = P(None, SEEDS, DATA)
  local_gather = jax.shard_map(lambda data, idx: jax.tree.map(lambda a: a[idx], data), mesh=mesh,
                               in_specs=(P(DATA), rows), out_specs=rows)

  def train_dispatch(state, batches, keys, horizon=None):
    state, metrics = step(state, batches, keys, horizon)
    return state, metrics, state["health"]

  def train_dispatch_from_device_data(state, data, indices, keys, horizon=None):
    if gather == "sharded":
      batches = local_gather(data, indices)
    else:
      batches = jax.lax.with_sharding_constraint(jax.tree.map(lambda a: a[indices], data),
                                                 NamedSharding(mesh, rows))
    if pc is not None and pc.enabled and pc.sampling == "poisson":
      batches = dict(batches, mask=batching.mask(indices))
    return train_dispatch(state, batches, keys, horizon)

  return jax.jit(train_dispatch_from_device_data if gather else train_dispatch, donate_argnums=0,
                 out_shardings=(sharding.by_replica(mesh), sharding.by_replica(mesh, after=1),
                                sharding.by_replica(mesh)))


def make_train_step(model: DoppelGANger, tc: TrainConfig, mesh, pc: PrivacyConfig | None = None):
  """Returns the un-jitted multi-step function `(state, batches, keys, horizon=None) -> (state, metrics)`.

  keys: [K] the replicas' keys; replica r's step i draws its noise from fold_in(keys[r], i) on device.
  pc: an enabled, resolved privacy config (privacy.resolve) for DP-SGD critics; None or disabled = off.

  state: K replicas stacked on axis 0 (init_replicas).
  batches: dict(features [k, K, B, T, F], attributes [k, K, B, A], additional_attributes [k, K, B, 2Kc]),
    and with Poisson sampling mask [k, K, B] (1 for sampled series, 0 for padding; B = privacy.capacity).
  horizon: the step the learning rates' decay ends at (train.lr_decay_start; default tc.num_steps), a
    traced scalar: train.py moves it to where train.max_minutes will stop the run.
  metrics: dict of [k, K] arrays (with a decay, lr_scale: the factor of both learning rates).
  """
  gen = model.generator.clone(axis_name=DATA)
  dp = pc is not None and pc.enabled
  expected_batch = tc.batch_size if dp and pc.sampling == "poisson" else None  # else the batch's own size
  fixed_hp, varying_hp = hyperparameters(tc, model.cfg)

  def freeze(updates):
    """The parts train.fixed_parts names keep their weights: their updates are zero (Adam's moments still run)."""
    return dict(updates, params={part: jax.tree.map(jnp.zeros_like, u) if part in tc.fixed_part_names else u
                                 for part, u in updates["params"].items()})

  def local_step(state, varying, real_batch, noises, ts, dp_keys):
    """Runs on each device's slice of the batch; gradients are averaged over devices. varying: this
    replica's values of the hyperparameters train.per_replica sets."""
    hp = dict(fixed_hp, **varying)
    opt = optimizer(hp)
    params = state["params"]
    (g_params, stats), d_params = split_stats(params["generator"]), critic_params(params)
    g_opt, d_opt = state["g_opt"], state["d_opt"]
    real = model.flatten(real_batch)
    pmean = functools.partial(jax.lax.pmean, axis_name=DATA)

    def forward(noise):
      """Fake samples, their pullback to g_params, and the BatchNorm running averages updated by this
      forward pass (each training forward updates them, as in the original; {} without BatchNorm)."""
      def apply(p):
        out, updated = gen.apply(dict(p, **stats), noise, train=True, mutable=[STATS])
        return model.flatten(out), dict(updated)
      return jax.vjp(apply, g_params, has_aux=True)

    band_noise, band_histories = state.get("band_noise"), []
    # Adam's step scaled (its moments are not): the optimiser state is the same with and without a decay
    scale = hp.get("lr_scale", 1.0)
    scaled = functools.partial(jax.tree.map, lambda u: u * scale)  # (x 1.0 without a decay: exact)
    for r in range(tc.d_rounds):
      fake, pullback, stats = forward(noises[r])
      if dp:
        weights = real_batch.get("mask", jnp.ones(real.shape[0], real.dtype))
        history = None if band_noise is None else jax.tree.map(lambda h: h[r], band_noise)
        grads, metrics, history = private_critic_grads(
            model, hp["gp_weight"], pc, d_params, real, jax.lax.stop_gradient(fake), ts[r], dp_keys[r],
            expected_batch or real.shape[0] * mesh.shape[DATA], weights, history)
        band_histories.append(history)
      else:
        grads, metrics = jax.grad(functools.partial(d_loss_fn, model, hp["gp_weight"]), has_aux=True)(
            d_params, real, jax.lax.stop_gradient(fake), ts[r])
        grads = pmean(grads)
      updates, d_opt = opt.update(grads, d_opt, d_params)
      d_params = optax.apply_updates(d_params, scaled(updates))
    for r in range(tc.g_rounds):
      if r > 0:
        fake, pullback, stats = forward(noises[tc.d_rounds + r - 1])
      g_loss, d_fake = jax.value_and_grad(functools.partial(g_loss_fn, model, d_params,
                                                            aux_weight=hp["aux_critic_weight"]))(fake)
      (grads,) = pullback(d_fake)
      updates, g_opt = opt.update(pmean(grads), g_opt, g_params)
      g_params = optax.apply_updates(g_params, scaled(freeze(updates)))
    metrics = pmean(dict(metrics, g_loss=g_loss))
    new_state = dict(state, params=dict(d_params, generator=dict(g_params, **stats)), g_opt=g_opt, d_opt=d_opt,
                     step=state["step"] + 1)
    if band_noise is not None:  # stacked anew: updating the rounds in place (.at[r].set) gave the last round's
      # stream a history of copies of its newest draw when one replica ran per device under lax.scan (XLA CPU)
      new_state["band_noise"] = jax.tree.map(lambda *rounds: jnp.stack(rounds), *band_histories)
    return new_state, metrics

  noise_specs = {name: P(SEEDS, *spec) for name, spec in NOISE_SPECS.items()}
  sharded_step = jax.shard_map(
      per_replica(local_step), mesh=mesh,
      in_specs=(P(SEEDS), P(SEEDS), P(SEEDS, DATA), [noise_specs] * (tc.d_rounds + tc.g_rounds - 1),
                [P(SEEDS, DATA)] * tc.d_rounds, [P(SEEDS)] * (tc.d_rounds if dp else 0)),
      out_specs=(P(SEEDS), P(SEEDS)),
      # Unchecked: with replication checking on, gradients of replicated params are psum'd
      # implicitly at every use, inside the LSTM's backward loop; here the one pmean does it.
      check_vma=False)

  def draws(run_key, step, rollbacks, batch_size):
    """One replica's random inputs of one step (after a rollback, from a stream of their own)."""
    retried = jax.random.fold_in(jax.random.fold_in(run_key, ROLLBACK_STREAM), rollbacks)
    run_key = jax.random.wrap_key_data(jnp.where(rollbacks > 0, jax.random.key_data(retried),
                                                 jax.random.key_data(run_key)), impl=jax.random.key_impl(run_key))
    key = jax.random.fold_in(run_key, step)
    keys = jax.random.split(key, 2 * tc.d_rounds + tc.g_rounds)
    n_noise = tc.d_rounds + tc.g_rounds - 1
    noises = [sample_noise(k, batch_size, model.schema, model.cfg) for k in keys[:n_noise]]
    ts = [jax.random.uniform(k, (batch_size,)) for k in keys[n_noise:n_noise + tc.d_rounds]]
    # replicated over 'data': every device adds the same draw to the psum'd gradient, i.e. noise once per update
    dp_keys = list(jax.random.split(jax.random.fold_in(key, DP_NOISE_STREAM), tc.d_rounds)) if dp else []
    return noises, ts, dp_keys

  def one_step(state, real_batch, run_keys, horizon):
    batch_size = real_batch["features"].shape[1]
    noises, ts, dp_keys = jax.vmap(functools.partial(draws, batch_size=batch_size))(
        run_keys, state["step"], state["health"]["rollbacks"])
    if tc.lr_decay_start >= 1:
      return sharded_step(state, varying_hp, real_batch, noises, ts, dp_keys)
    scale = learning_rate_scale(state["step"], horizon, tc.lr_decay_start)
    state, metrics = sharded_step(state, dict(varying_hp, lr_scale=scale), real_batch, noises, ts, dp_keys)
    return state, dict(metrics, lr_scale=scale)

  def multi_step(state, batches, keys, horizon=None):
    horizon = tc.num_steps if horizon is None else horizon
    new, metrics = jax.lax.scan(functools.partial(one_step, run_keys=keys, horizon=horizon), state, batches)
    # Under DP the losses of real batches are not private outputs: rolling back on them would make
    # the trajectory depend on the data outside DP-SGD. The noisy updates are private, and a
    # non-finite loss makes them non-finite too.
    return guard(state, new, {} if dp else metrics, tc.max_rollbacks), metrics

  return multi_step
