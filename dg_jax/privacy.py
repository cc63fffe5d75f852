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

Sampling and accounting (privacy.sampling). "fixed", the default: each step draws a uniform sample
of B of the n series without replacement, independently of other steps
(BatchIterator(sampling="independent")); dp_accounting's RDP accountant covers it
(SampledWithoutReplacementDpEvent, Wang, Balle and Kasiviswanathan 2019) under the replace-one
neighbouring relation (n is public). Replacing one series changes one clipped gradient of the sum
by up to 2 * l2_clip, so relative to that sensitivity the noise multiplier is noise_multiplier / 2.
"poisson": each series joins a step's batch with probability q = B/n (n taken as public, as above),
independently (batches of random size), accounted as PoissonSampledDpEvent under add-or-remove neighbours (sensitivity
l2_clip): the relation Opacus, TF Privacy and jax-privacy report, weaker than replace-one (replacing
a series is removing one and adding another, so an add-or-remove (epsilon, delta) guarantee gives a
replace-one (2 epsilon, (1 + e^epsilon) delta) one, no better in general). One compiled step needs one
shape, so a batch holds `capacity` rows, the sampled ones then padding rows of weight 0, and a batch
that would exceed the capacity is truncated. Truncation changes the mechanism only on the event that
some step samples more than `capacity` series, whose probability P is at most T * P(Binomial(n+1, q)
> capacity) over T steps; so an (epsilon, delta_rdp) guarantee of the untruncated mechanism gives
(epsilon, delta_rdp + (1 + e^epsilon) P) for the truncated one. The RDP part is computed at
(1 - TRUNCATION_SHARE) delta and the capacity chosen (to a multiple of 8 rows, so that 1, 2, 4 or 8
devices split it) so that the second term stays within TRUNCATION_SHARE delta for the steps of
every replica; a capacity set by hand is accounted the same way, whatever delta it leads to. The sum
of clipped gradients is divided by B, the expected batch size (the actual one depends on the data).
Either way a step's d_rounds critic updates reuse its batch: one sampled event of d_rounds composed
Gaussians. Epsilon is a function of the step count alone, so a resumed run reports what a straight
run would.

DP-BandMF (privacy.bands = b > 1, with Poisson sampling; Choquette-Choo et al., "(Amplified) Banded
Matrix Factorization", NeurIPS 2023, as jax-privacy implements it). The noise of successive steps is
correlated: step t adds w_t with c_0 w_t + c_1 w_{t-1} + ... + c_{b-1} w_{t-b+1} = z_t, z_t the
independent Gaussian draw, i.e. w = C^{-1} z for the banded lower-triangular Toeplitz C of first
column c (jax-privacy's optimised coefficients for the steps' prefix sums, L2 norm 1). Summed over
steps (what the parameters accumulate) much of the noise cancels. Sampling is cyclic Poisson: each
series belongs to one of b groups (drawn once, independently per series, from the seed) and step t
draws from group t mod b alone, each member with probability q = b B / n (B series per step on
average). A series then joins steps at least b apart, whose columns of C do not overlap, and the
run is as private as DP-SGD with Poisson sampling at rate q for ceil(T / b) steps (the paper's
Theorem 4; jax-privacy's DpsgdTrainingAccountant with cycle_length = b computes the same). b = 1
is DP-SGD. Each of the d_rounds critic updates of a step has its own noise stream (the rounds of a
step use one batch: one participation, d_rounds Gaussians, as above); the last b - 1 draws of w of
every stream are part of the training state (`band_noise`), so a resumed run continues them. A
replica rolled back after a divergence restarts its streams from zero (a rolled-back dispatch's
steps are skipped, so the next step's group need not be b steps from its previous one in the
stream; a fresh stream shares no rows of C with the old one).

Multi-device. optax's differentially_private_aggregate adds noise at every call, so calling it on
each device would add noise once per device. Here each device clips its own examples' gradients
and sums them; the sums cross devices in one psum; then every device adds the same Gaussian draw
(same key), so the update holds one draw of noise, and divides by the global batch size. Adam
then runs on the noisy gradient (post-processing).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dg_jax.settings import PrivacyConfig

# dp_accounting is imported where used: it loads much of scipy, 1.5-2.5 s that runs without privacy never need.
if TYPE_CHECKING:
  import dp_accounting


def private_grad(example_loss, params, examples: tuple, l2_clip: float, noise_multiplier: float, key: jax.Array,
                 batch_size: int, axis_name: str, weights: jax.Array | None = None, band: tuple | None = None):
  """DP-SGD gradient of the mean example loss, run on each device inside shard_map.

  example_loss(params, *example) -> (loss, aux) for one example; `examples` hold this device's
  examples on axis 0, `weights` (1 or 0: a Poisson batch's padding rows) whether each is in the batch.
  Each example's gradient is clipped to L2 norm l2_clip, summed, summed over devices, given
  N(0, (noise_multiplier * l2_clip)^2) noise from `key` (the same on all devices) and divided by
  `batch_size` (global, or expected for Poisson sampling). Returns (gradient, per-example aux,
  number of clipped examples over all devices, band history). band: None for DP-SGD, or DP-BandMF's
  (coefficients, history): the noise is then `band_noise`'s, and the history comes back updated.

  Two passes: per-example gradients only feed their norms, then one batched backward pass of the
  clip-weighted loss sum gives the sum of clipped gradients. Summing the per-example gradients
  themselves (as optax.per_example_global_norm_clip does) ran DP training at about half the speed
  on the default config (2-core CPU).
  """
  axes = (None,) + (0,) * len(examples)
  grads, aux = jax.vmap(jax.grad(example_loss, has_aux=True), in_axes=axes)(params, *examples)
  norms = jax.vmap(optax.tree.norm)(grads)
  if weights is None:
    weights = jnp.ones_like(norms)
  scale = jax.lax.stop_gradient(weights * jnp.minimum(1.0, l2_clip / norms))
  summed = jax.grad(lambda p: jnp.sum(scale * jax.vmap(example_loss, in_axes=axes)(p, *examples)[0]))(params)
  summed, clipped = jax.lax.psum((summed, jnp.sum(weights * (norms > l2_clip))), axis_name)
  leaves, treedef = jax.tree.flatten(summed)
  keys = jax.random.split(key, len(leaves))
  noise = treedef.unflatten([noise_multiplier * l2_clip * jax.random.normal(k, g.shape, g.dtype)
                             for g, k in zip(leaves, keys)])
  history = None
  if band is not None:
    noise, history = band_noise(band[0], noise, band[1])
  noisy = jax.tree.map(lambda g, w: (g + w) / batch_size, summed, noise)
  return noisy, aux, clipped, history


def band_noise(coefficients, z, history):
  """DP-BandMF's noise of one step: w with c_0 w + sum_j c_j w_{-j} = z (the next entry of C^{-1} z for the
  banded Toeplitz C of first column `coefficients`), and the history ([b-1, ...] per leaf of z, newest
  first: w_{-1}, ..., w_{-(b-1)}) with w pushed in."""
  c = jnp.asarray(coefficients, jnp.float32)
  def one(z, h):
    w = (z - jnp.tensordot(c[1:], h, axes=1)) / c[0]
    return w, jnp.concatenate([w[None], h[:-1]])
  pairs = jax.tree.map(one, z, history)
  is_pair = lambda x: isinstance(x, tuple)  # noqa: E731
  return (jax.tree.map(lambda p: p[0], pairs, is_leaf=is_pair), jax.tree.map(lambda p: p[1], pairs, is_leaf=is_pair))


def band_coefficients(steps: int, bands: int) -> tuple[float, ...]:
  """The first column of DP-BandMF's strategy C (L2 norm 1): jax-privacy's banded Toeplitz optimised for
  the mean error of the `steps` steps' prefix sums."""
  from jax_privacy.matrix_factorization import toeplitz  # imported here: optimising takes seconds, once per run
  return tuple(float(c) for c in np.asarray(toeplitz.optimize_banded_toeplitz(max(steps, bands), bands)))


def default_delta(num_examples: int) -> float:
  return 1.0 / (10 * num_examples)


TRUNCATION_SHARE = 0.01  # of delta, the most a chosen Poisson capacity's truncation may add
CAPACITY_MULTIPLE = 8    # Poisson capacities are multiples of this, so 1, 2, 4 or 8 devices split them alike


@dataclasses.dataclass(frozen=True)
class Accountant:
  """Epsilon spent by DP-SGD steps at a fixed delta, as dp_accounting's RDP accountant gives it."""
  num_examples: int                     # n: training series
  batch_size: int                       # B: series per step (fixed), or expected per step (poisson)
  noise_multiplier: float               # noise std / l2_clip
  delta: float
  rounds: int = 1                       # critic updates per step, all on the step's batch
  sampling: str = "fixed"               # or "poisson": batches hold at most `capacity` series
  capacity: int = 0
  bands: int = 1                        # DP-BandMF's b (poisson): a series joins one step in b, at rate b B / n

  @property
  def rate(self) -> float:
    """A series' chance to join a step its group may join (all steps but with DP-BandMF)."""
    return self.bands * self.batch_size / self.num_examples

  def participations(self, steps: int) -> int:
    """The most steps of `steps` one series may join: every step, or with DP-BandMF one in `bands`."""
    return -(-steps // self.bands)

  @property
  def poisson(self) -> bool:
    return self.sampling == "poisson"

  @property
  def mechanism(self) -> str:
    return f"DP-BandMF, {self.bands} bands, cyclic Poisson sampling" if self.bands > 1 else "DP-SGD"

  @property
  def neighbouring(self) -> str:
    return "add-or-remove" if self.poisson else "replace-one"

  def event(self, steps: int) -> dp_accounting.DpEvent:
    import dp_accounting
    if self.poisson:  # add-or-remove: sensitivity clip (with DP-BandMF: C's column norm, 1)
      step = dp_accounting.PoissonSampledDpEvent(self.rate, dp_accounting.SelfComposedDpEvent(
          dp_accounting.GaussianDpEvent(self.noise_multiplier), self.rounds))
    else:
      gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier / 2)  # replace-one: sensitivity 2 * clip
      step = dp_accounting.SampledWithoutReplacementDpEvent(
          self.num_examples, self.batch_size, dp_accounting.SelfComposedDpEvent(gaussian, self.rounds))
    return dp_accounting.SelfComposedDpEvent(step, self.participations(steps))

  @functools.cached_property
  def _one_participation(self) -> dp_accounting.rdp.RdpAccountant:
    return new_rdp_accountant(self.poisson).compose(self.event(1))

  def log_truncation(self) -> float:
    """log P(one step would sample more than `capacity` series) for n+1 series (the larger neighbour; with
    DP-BandMF a series is in the step's group with probability 1/b, so the count is Binomial(n+1, B/n) too)."""
    if not self.poisson:
      return -np.inf
    from scipy import stats
    return float(stats.binom.logsf(self.capacity, self.num_examples + 1, self.batch_size / self.num_examples))

  def epsilon(self, steps: int, runs: int = 1) -> float:
    """What composing self.event(steps) `runs` times gives (runs: independent replicas on the same
    data): one participation's RDP (computed once: the slow part, about a second) times their number,
    converted to epsilon at delta."""
    return composed([(self, steps)] * runs, self.delta)[0]

  def spent_delta(self, steps: int, runs: int = 1) -> float:
    """The delta that epsilon(steps, runs) holds at: `delta`, or for Poisson sampling the RDP part plus
    truncation's, at most `delta` with a chosen capacity."""
    return composed([(self, steps)] * runs, self.delta)[1]

  def max_steps(self, target_epsilon: float, limit: int) -> int:
    """The most steps, up to `limit`, that spend at most target_epsilon (epsilon grows with steps)."""
    if self.epsilon(limit) <= target_epsilon:
      return limit
    lo, hi = 0, limit  # epsilon(lo) <= target < epsilon(hi)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (mid, hi) if self.epsilon(mid) <= target_epsilon else (lo, mid)
    return lo


def composed(runs: list[tuple[Accountant, int]], delta: float) -> tuple[float, float]:
  """(epsilon, delta') of releasing every run of `runs` ((accountant, steps) pairs, on the same data):
  their RDP adds up, order by order, and converts to epsilon at delta; with Poisson sampling at
  (1 - TRUNCATION_SHARE) delta, and delta' adds the truncation term (module docstring)."""
  runs = [(a, steps) for a, steps in runs if steps > 0]
  if not runs:
    return 0.0, delta
  if len({a.neighbouring for a, _ in runs}) > 1:
    raise ValueError("cannot compose runs accounted under different neighbouring relations "
                     f"({sorted({a.neighbouring for a, _ in runs})}): use one privacy.sampling for all")
  import dp_accounting
  orders = runs[0][0]._one_participation.orders  # dp_accounting's default orders, the same for every accountant
  rdp = sum(a.participations(steps) * a._one_participation.rdp for a, steps in runs)
  if not runs[0][0].poisson:
    return float(dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, rdp, delta)[0]), delta
  rdp_delta = (1 - TRUNCATION_SHARE) * delta
  epsilon = float(dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, rdp, rdp_delta)[0])
  log_p = np.logaddexp.reduce([np.log(steps) + a.log_truncation() for a, steps in runs])
  return epsilon, float(rdp_delta + np.exp(min(0.0, np.logaddexp(0, epsilon) + log_p)))


def choose_capacity(accountant: Accountant, steps: int, runs: int = 1) -> int:
  """The smallest Poisson capacity (a multiple of CAPACITY_MULTIPLE, at least the expected batch) whose
  truncation adds at most TRUNCATION_SHARE * delta over `runs` runs of `steps` steps (module docstring)."""
  epsilon = accountant.epsilon(steps, runs)  # the RDP part does not depend on the capacity
  limit = np.log(TRUNCATION_SHARE * accountant.delta) - np.log(runs * steps) - np.logaddexp(0, epsilon)
  fits = lambda c: dataclasses.replace(accountant, capacity=c).log_truncation() <= limit  # noqa: E731
  top = -(-(accountant.num_examples + 1) // CAPACITY_MULTIPLE)  # in multiples; never truncates n+1 series
  lo, hi = -(-accountant.batch_size // CAPACITY_MULTIPLE) - 1, top  # fits(hi * multiple); lo may not
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if fits(mid * CAPACITY_MULTIPLE) else (mid, hi)
  return hi * CAPACITY_MULTIPLE


def spent_record(accountant: Accountant, steps: int, replicas: int, init_from: str = "") -> dict:
  """What a private run's checkpoints (and the bundles exported from them) claim after `steps` steps.

  K replicas are K independent DP-SGD runs on the same series: releasing all of them composes K runs,
  whose RDP is that of K * steps steps. Choosing one replica by comparing them (their scores, or
  which ones diverged) is a function of all K, so it is covered by the K-fold figure, not the one-run
  one. Pre-training (train.init_from) is outside the account: its data is assumed public."""
  record = dict(epsilon=accountant.epsilon(steps), delta=accountant.spent_delta(steps), steps=steps,
                num_examples=accountant.num_examples, unit="series", neighbouring=accountant.neighbouring,
                sampling=accountant.sampling, replicas=replicas, mechanism=accountant.mechanism,
                covers="the training series, for the generator of one replica fixed before training")
  if accountant.poisson:
    record.update(expected_batch_size=accountant.batch_size, capacity=accountant.capacity)
  if replicas > 1:
    record.update(epsilon_all_replicas=accountant.epsilon(steps, replicas),
                  covers=record["covers"] + " (generation's default replica 0, or a --seed_index chosen without "
                  "comparing replicas); releasing several replicas, or one chosen by comparing them, is covered "
                  "by epsilon_all_replicas")
    if accountant.poisson:
      record["delta_all_replicas"] = accountant.spent_delta(steps, replicas)
  if init_from:
    record["assumed_public"] = f"the data that trained {init_from} (train.init_from), which is not accounted"
  return record


def new_rdp_accountant(poisson: bool = False) -> dp_accounting.rdp.RdpAccountant:
  import dp_accounting
  relation = dp_accounting.NeighboringRelation
  return dp_accounting.rdp.RdpAccountant(
      neighboring_relation=relation.ADD_OR_REMOVE_ONE if poisson else relation.REPLACE_ONE)


def accountant(pc: PrivacyConfig, num_examples: int, batch_size: int, rounds: int) -> Accountant:
  """The accountant of a resolved privacy config (see `resolve`)."""
  return Accountant(num_examples, batch_size, pc.noise_multiplier, pc.delta, rounds, pc.sampling, pc.capacity,
                    pc.bands)


def calibrate_noise(num_examples: int, batch_size: int, rounds: int, steps: int, target_epsilon: float,
                    delta: float, sampling: str = "fixed", bands: int = 1) -> float:
  """The smallest noise multiplier (to 1e-3) whose `steps` steps spend at most target_epsilon."""
  least = 0.01  # the bracket's lower end: less noise than this is no protection worth calibrating
  make = lambda sigma: Accountant(num_examples, batch_size, sigma, delta, rounds, sampling, bands=bands)  # noqa: E731
  if make(least).epsilon(steps) <= target_epsilon:
    raise ValueError(f"privacy.target_epsilon={target_epsilon} allows almost no noise for {steps} steps; "
                     "set privacy.noise_multiplier instead")
  poisson = sampling == "poisson"
  import dp_accounting
  return dp_accounting.calibrate_dp_mechanism(
      lambda: new_rdp_accountant(poisson), lambda sigma: make(sigma).event(steps), target_epsilon,
      (1 - TRUNCATION_SHARE) * delta if poisson else delta, dp_accounting.LowerEndpointAndGuess(least, 1.0), tol=1e-3)


def resolve(pc: PrivacyConfig, num_examples: int, batch_size: int, rounds: int, num_steps: int,
            replicas: int = 1) -> PrivacyConfig:
  """A fresh run's privacy config with what it leaves open filled in: delta (0 = 1/(10 n)); when only
  target_epsilon is given, the noise multiplier that spends it in num_steps steps; and with Poisson
  sampling the capacity (0 = the smallest whose truncation costs at most TRUNCATION_SHARE * delta
  over the steps of all `replicas`); with DP-BandMF the strategy's coefficients (kept, so that a resumed
  run adds the same noise whatever its new step budget)."""
  if batch_size > num_examples:
    raise ValueError(f"train.batch_size={batch_size} exceeds the {num_examples} training series: "
                     "private training samples B distinct series per step (on average, with Poisson sampling)")
  if pc.bands * batch_size > num_examples:
    raise ValueError(f"privacy.bands={pc.bands} times train.batch_size={batch_size} exceeds the {num_examples} "
                     "training series: DP-BandMF draws each step's B series from one of b groups of n/b")
  delta = pc.delta or default_delta(num_examples)
  if delta >= 1 / num_examples:
    raise ValueError(f"privacy.delta={delta} is not below 1/n = {1 / num_examples:.3g} for n={num_examples} "
                     "series: such a delta allows publishing a series outright")
  noise = pc.noise_multiplier or calibrate_noise(num_examples, batch_size, rounds, num_steps,
                                                 pc.target_epsilon, delta, pc.sampling, pc.bands)
  pc = dataclasses.replace(pc, delta=float(delta), noise_multiplier=float(noise))
  if pc.sampling == "poisson" and not pc.capacity:
    pc = dataclasses.replace(pc, capacity=choose_capacity(accountant(pc, num_examples, batch_size, rounds),
                                                          num_steps, replicas))
  if pc.bands > 1 and not pc.band_coefficients:
    pc = dataclasses.replace(pc, band_coefficients=band_coefficients(num_steps, pc.bands))
  return pc


def resume(pc: PrivacyConfig, saved: PrivacyConfig) -> PrivacyConfig:
  """The resolved privacy config of a run being resumed: the saved one, which `pc` (as given, with
  0 for what the run resolved) must match, so that the noise and accounting do not change mid-run."""
  given = dataclasses.replace(pc, noise_multiplier=pc.noise_multiplier or saved.noise_multiplier,
                              delta=pc.delta or saved.delta, capacity=pc.capacity or saved.capacity,
                              band_coefficients=pc.band_coefficients or saved.band_coefficients)
  if given != saved:
    raise ValueError(f"the run being resumed was trained with privacy settings {saved}, not {given}; "
                     "use a new --workdir (or the same settings) to resume")
  return saved
