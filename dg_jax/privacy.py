"""Differentially private training: DP-SGD on the critics, and its privacy accounting.

What is private. Only the critics (critic and auxiliary critic) read real data; they are trained
with DP-SGD (Abadi et al. 2016). The generator's updates read only the critics' parameters and its
own noise, so the generator, the artefact a data holder shares, is post-processing of DP outputs
and inherits their guarantee. The unit of privacy is one series (features, attributes and
additional attributes together). Not covered: what metrics.jsonl logs of real batches (losses,
clipped_fraction) and the schema fitted from the data (each variable's range and categories, saved
with checkpoints and bundles); both stay with the data holder, or give the schema from public
knowledge. The batches and the noise are pseudo-random functions of train.seed: the guarantee
assumes the seed is secret, so by default (privacy.secret_seed) a private run draws it from the OS's
secure randomness, keeps it in the workdir (for resume) and leaves it out of bundles.

Per-example gradients. The critic loss of real example i is
  D(fake_i) - D(real_i) + lambda * GP(t_i, real_i, fake_i)  (+ alpha * the same for the aux critic),
whose mean over i is the ordinary batch loss; fakes do not depend on data, and the critics have no
cross-example normalisation, so example i's gradient depends on example i alone. PacGAN packing
(pack > 1) mixes examples in one critic row and is rejected with privacy on (settings.py).

Sampling and accounting. Each step draws a uniform sample of B of the n series without
replacement, independently of other steps (BatchIterator(sampling="independent")). A fixed batch
shape keeps one compiled step on every device; Poisson sampling would need masked variable-size
batches and overflow handling. dp_accounting's RDP accountant covers this sampling
(SampledWithoutReplacementDpEvent, Wang, Balle and Kasiviswanathan 2019) under the replace-one
neighbouring relation (n is public). Replacing one series changes one clipped gradient of the sum
by up to 2 * l2_clip, so relative to that sensitivity the noise multiplier is noise_multiplier / 2.
A step's d_rounds critic updates reuse its batch: one sampled event of d_rounds composed Gaussians.
Epsilon is a function of the step count alone, so a resumed run reports what a straight run would.

Multi-device. optax's differentially_private_aggregate adds noise at every call, so calling it on
each device would add noise once per device. Here each device clips its own examples' gradients
and sums them; the sums cross devices in one psum; then every device adds the same Gaussian draw
(same key), so the update holds one draw of noise, and divides by the global batch size. Adam
then runs on the noisy gradient (post-processing).
"""
from __future__ import annotations

import dataclasses
import functools

import dp_accounting
import jax
import jax.numpy as jnp
import optax

from dg_jax.settings import PrivacyConfig


def private_grad(example_loss, params, examples: tuple, l2_clip: float, noise_multiplier: float, key: jax.Array,
                 batch_size: int, axis_name: str):
  """DP-SGD gradient of the mean example loss, run on each device inside shard_map.

  example_loss(params, *example) -> (loss, aux) for one example; `examples` hold this device's
  examples on axis 0. Each example's gradient is clipped to L2 norm l2_clip, summed, summed over
  devices, given N(0, (noise_multiplier * l2_clip)^2) noise from `key` (the same on all devices)
  and divided by the global `batch_size`. Returns (gradient, per-example aux, number of clipped
  examples over all devices).

  Two passes: per-example gradients only feed their norms, then one batched backward pass of the
  clip-weighted loss sum gives the sum of clipped gradients. Summing the per-example gradients
  themselves (as optax.per_example_global_norm_clip does) ran DP training at about half the speed
  on the default config (2-core CPU).
  """
  axes = (None,) + (0,) * len(examples)
  grads, aux = jax.vmap(jax.grad(example_loss, has_aux=True), in_axes=axes)(params, *examples)
  scale = jax.lax.stop_gradient(jnp.minimum(1.0, l2_clip / jax.vmap(optax.tree.norm)(grads)))
  summed = jax.grad(lambda p: jnp.sum(scale * jax.vmap(example_loss, in_axes=axes)(p, *examples)[0]))(params)
  summed, clipped = jax.lax.psum((summed, jnp.sum(scale < 1)), axis_name)
  leaves, treedef = jax.tree.flatten(summed)
  keys = jax.random.split(key, len(leaves))
  noisy = [(g + noise_multiplier * l2_clip * jax.random.normal(k, g.shape, g.dtype)) / batch_size
           for g, k in zip(leaves, keys)]
  return treedef.unflatten(noisy), aux, clipped


def default_delta(num_examples: int) -> float:
  return 1.0 / (10 * num_examples)


@dataclasses.dataclass(frozen=True)
class Accountant:
  """Epsilon spent by DP-SGD steps at a fixed delta, as dp_accounting's RDP accountant gives it."""
  num_examples: int                     # n: training series
  batch_size: int                       # B: series per step, drawn without replacement
  noise_multiplier: float               # noise std / l2_clip
  delta: float
  rounds: int = 1                       # critic updates per step, all on the step's batch

  def event(self, steps: int) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier / 2)  # replace-one: sensitivity 2 * clip
    step = dp_accounting.SampledWithoutReplacementDpEvent(
        self.num_examples, self.batch_size, dp_accounting.SelfComposedDpEvent(gaussian, self.rounds))
    return dp_accounting.SelfComposedDpEvent(step, steps)

  @functools.cached_property
  def _one_step(self) -> dp_accounting.rdp.RdpAccountant:
    return new_rdp_accountant().compose(self.event(1))

  def epsilon(self, steps: int) -> float:
    """What composing self.event(steps) gives: `steps` times one step's RDP (computed once: the
    slow part, about a second) converted to epsilon at delta."""
    return composed_epsilon([(self, steps)], self.delta)

  def max_steps(self, target_epsilon: float, limit: int) -> int:
    """The most steps, up to `limit`, that spend at most target_epsilon (epsilon grows with steps)."""
    if self.epsilon(limit) <= target_epsilon:
      return limit
    lo, hi = 0, limit  # epsilon(lo) <= target < epsilon(hi)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if self.epsilon(mid) <= target_epsilon else (lo, mid)
    return lo


def composed_epsilon(runs: list[tuple[Accountant, int]], delta: float) -> float:
  """Epsilon at `delta` of releasing every run of `runs` ((accountant, steps) pairs, on the same data):
  their RDP adds up, order by order."""
  runs = [(a, steps) for a, steps in runs if steps > 0]
  if not runs:
    return 0.0
  orders = runs[0][0]._one_step.orders  # dp_accounting's default orders, the same for every accountant
  rdp = sum(steps * a._one_step.rdp for a, steps in runs)
  return float(dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0])


def spent_record(accountant: Accountant, steps: int, replicas: int, init_from: str = "") -> dict:
  """What a private run's checkpoints (and the bundles exported from them) claim after `steps` steps.

  K replicas are K independent DP-SGD runs on the same series: releasing all of them composes K runs,
  whose RDP is that of K * steps steps. Choosing one replica by comparing them (their scores, or
  which ones diverged) is a function of all K, so it is covered by the K-fold figure, not the one-run
  one. Pre-training (train.init_from) is outside the account: its data is assumed public."""
  record = dict(epsilon=accountant.epsilon(steps), delta=accountant.delta, steps=steps,
                num_examples=accountant.num_examples, unit="series", neighbouring="replace-one", replicas=replicas,
                covers="the training series, for the generator of one replica fixed before training")
  if replicas > 1:
    record.update(epsilon_all_replicas=accountant.epsilon(replicas * steps),
                  covers=record["covers"] + " (generation's default replica 0, or a --seed_index chosen without "
                  "comparing replicas); releasing several replicas, or one chosen by comparing them, is covered "
                  "by epsilon_all_replicas")
  if init_from:
    record["assumed_public"] = f"the data that trained {init_from} (train.init_from), which is not accounted"
  return record


def new_rdp_accountant() -> dp_accounting.rdp.RdpAccountant:
  return dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)


def accountant(pc: PrivacyConfig, num_examples: int, batch_size: int, rounds: int) -> Accountant:
  """The accountant of a resolved privacy config (see `resolve`)."""
  return Accountant(num_examples, batch_size, pc.noise_multiplier, pc.delta, rounds)


def calibrate_noise(num_examples: int, batch_size: int, rounds: int, steps: int, target_epsilon: float,
                    delta: float) -> float:
  """The smallest noise multiplier (to 1e-3) whose `steps` steps spend at most target_epsilon."""
  least = 0.01  # the bracket's lower end: less noise than this is no protection worth calibrating
  make = lambda sigma: Accountant(num_examples, batch_size, sigma, delta, rounds)  # noqa: E731
  if make(least).epsilon(steps) <= target_epsilon:
    raise ValueError(f"privacy.target_epsilon={target_epsilon} allows almost no noise for {steps} steps; "
                     "set privacy.noise_multiplier instead")
  return dp_accounting.calibrate_dp_mechanism(
      new_rdp_accountant, lambda sigma: make(sigma).event(steps), target_epsilon, delta,
      dp_accounting.LowerEndpointAndGuess(least, 1.0), tol=1e-3)


def resolve(pc: PrivacyConfig, num_examples: int, batch_size: int, rounds: int, num_steps: int) -> PrivacyConfig:
  """A fresh run's privacy config with what it leaves open filled in: delta (0 = 1/(10 n)) and,
  when only target_epsilon is given, the noise multiplier that spends it in num_steps steps."""
  if batch_size > num_examples:
    raise ValueError(f"train.batch_size={batch_size} exceeds the {num_examples} training series: "
                     "private training samples each batch without replacement")
  delta = pc.delta or default_delta(num_examples)
  if delta >= 1 / num_examples:
    raise ValueError(f"privacy.delta={delta} is not below 1/n = {1 / num_examples:.3g} for n={num_examples} "
                     "series: such a delta allows publishing a series outright")
  noise = pc.noise_multiplier or calibrate_noise(num_examples, batch_size, rounds, num_steps,
                                                 pc.target_epsilon, delta)
  return dataclasses.replace(pc, delta=float(delta), noise_multiplier=float(noise))


def resume(pc: PrivacyConfig, saved: PrivacyConfig) -> PrivacyConfig:
  """The resolved privacy config of a run being resumed: the saved one, which `pc` (as given, with
  0 for what the run resolved) must match, so that the noise and accounting do not change mid-run."""
  given = dataclasses.replace(pc, noise_multiplier=pc.noise_multiplier or saved.noise_multiplier,
                              delta=pc.delta or saved.delta)
  if given != saved:
    raise ValueError(f"the run being resumed was trained with privacy settings {saved}, not {given}; "
                     "use a new --workdir (or the same settings) to resume")
  return saved
