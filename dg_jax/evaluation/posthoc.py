"""The literature's post-hoc scores of TimeGAN (Yoon et al., NeurIPS 2019; its metrics/*.py), in Flax.

Both train a small network after the fact and judge the synthetic data by it:

  discriminative_score  a one-layer GRU classifier (hidden size dim/2, its last state into one logit)
                        trained for 2000 Adam steps on batches of 128 real and 128 synthetic series
                        from an 80% split of each; |accuracy - 0.5| on the other 20%. 0 = the
                        classifier cannot tell them apart; 0.5 = it always can. The accuracy is the
                        mean of the two classes' own: TimeGAN's where, as there, both sets are the
                        same size; pooled over sets of unequal size, a classifier that leans to one
                        class would score above chance with nothing to see (docs/evaluation.md).
  predictive_score      a one-layer GRU (hidden size dim/2, a sigmoid output per step) trained for
                        5000 Adam steps (batch 128) on the synthetic series to predict the next
                        record's last column from the other columns of the current record; its mean
                        absolute error on all real series. Lower is better; compare with the same
                        network trained on real data (report it as real-vs-real).

Each is the mean ± std over REPEATS independent trainings (other initialisations, splits and batches),
run as one vmapped XLA program. The GRU cell is PyTorch's and cuDNN's form (the reset gate scales the
recurrent term after its matmul; TimeGAN's TensorFlow 1 cell scales the state before it), the form
most re-implementations of these scores use.

How our series become TimeGAN's [T, dim] arrays: per record, the continuous features (log1p/asinh as
their variable declares, then min-max scaled to [0, 1] by the real data's range, as TimeGAN scales its
inputs), the categorical features one-hot, and the attributes (likewise) repeated at every record;
variable lengths are kept (the GRU's state at each series' last record; the predictive loss over valid
records only). The predictive target is the last continuous feature. Caveats, as in the literature: the
scores depend on the classifier's capacity and on training noise (hence the repeats); a generator that
copies its training data scores perfectly on both (pair them with the memorisation ratio); on series
with no continuous feature or of one record there is no predictive score. Scoring a set against itself
does not give 0: each series sits in one class's training split and the other's test split, and a
classifier that memorises gets it wrong there (about 0.1 on 256 series); the real-vs-real reference is
two disjoint draws (e.g. the training data against held-out data).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dg_jax.data.schema import Dataset

REPEATS = 5
BATCH = 128
SPREADS = ("discriminative_score_std", "predictive_score_std")  # the spread over repeats, not a score


@dataclasses.dataclass(frozen=True)
class Settings:
  """The published settings by default; PRESETS["quick"] is for smoke runs and tests, not comparable with
  published numbers."""
  discriminator_steps: int = 2000
  predictor_steps: int = 5000
  repeats: int = REPEATS
  learning_rate: float = 1e-3  # Adam's default, as TimeGAN's tf.train.AdamOptimizer()


PRESETS = dict(full=Settings(), quick=Settings(discriminator_steps=100, predictor_steps=100, repeats=2), off=None)


def _scaled_columns(data: Dataset, reference: Dataset) -> tuple[jax.Array, int | None]:
  """[n, T, dim] float32 records (on device) as TimeGAN sees them (module docstring), and the column of
  the last continuous feature (None without one). Scaling comes from `reference` (the real data)."""
  cols, target = [], None

  def scaled(var, x, ref):
    if var.log1p:
      x, ref = np.log1p(np.maximum(x, 0)), np.log1p(np.maximum(ref, 0))
    elif var.asinh:
      x, ref = np.arcsinh(x), np.arcsinh(ref)
    lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 1.0)
    return (x - lo) / (hi - lo if hi > lo else 1.0)

  n, t = data.num_samples, data.max_length
  for j, var in enumerate(data.feature_vars):
    x = data.features[:, :, j].astype(np.float64)
    if var.is_categorical:
      cols.extend(np.moveaxis(np.eye(var.dim)[x.astype(int)], -1, 0))
    else:
      target = len(cols)
      cols.append(scaled(var, x, reference.features[:, :, j][reference.valid_steps]))
  for j, var in enumerate(data.attribute_vars):
    a = data.attributes[:, j]
    per_series = (np.eye(var.dim)[a.astype(int)].T if var.is_categorical
                  else scaled(var, a, reference.attributes[:, j])[None])
    cols.extend(np.broadcast_to(c[:, None], (n, t)) for c in per_series)
  x = np.stack(cols, -1) * data.valid_steps[..., None]
  return jnp.asarray(x, jnp.float32), target


class _GRU(nn.Module):
  """One GRU layer (PyTorch/cuDNN gate form) and a dense output. The input's share of the gates is one
  matmul over all records, outside the loop over time, where it would dominate wide inputs (MBA: 75
  columns); the state stops at each series' last record."""
  hidden: int
  per_step: bool  # True: an output per record (predictor); False: one from the last state (classifier)

  @nn.compact
  def __call__(self, x, lengths):
    gates_x = nn.Dense(3 * self.hidden, name="input")(x)  # [B, T, 3H]
    w = self.param("hidden_kernel", nn.initializers.orthogonal(), (self.hidden, 3 * self.hidden))
    b = self.param("hidden_bias", nn.initializers.zeros, (3 * self.hidden,))

    def cell(h, inputs):
      gx, valid = inputs
      (xr, xz, xn), (hr, hz, hn) = jnp.split(gx, 3, -1), jnp.split(h @ w + b, 3, -1)
      r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
      new = (1 - z) * jnp.tanh(xn + r * hn) + z * h
      new = jnp.where(valid[:, None], new, h)
      return new, new
    valid = jnp.arange(x.shape[1])[None] < lengths[:, None]
    last, states = jax.lax.scan(cell, jnp.zeros((x.shape[0], self.hidden), x.dtype),
                                (gates_x.swapaxes(0, 1), valid.T))
    return nn.Dense(1)(states.swapaxes(0, 1) if self.per_step else last)[..., 0]


def _train(loss_fn, params, steps: int, lr: float, key):
  """`steps` Adam steps of loss_fn(params, key) -> scalar, inside one scan."""
  opt = optax.adam(lr)

  def step(carry, k):
    p, s = carry
    grads = jax.grad(loss_fn)(p, k)
    updates, s = opt.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), None
  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
  return params


def _split(key, n: int):
  perm = jax.random.permutation(key, n)
  cut = int(0.8 * n)
  return perm[:cut], perm[cut:]


@functools.partial(jax.jit, static_argnames=("hidden", "steps", "lr"))
def _discriminate(keys, xr, lr_, xs, ls_, hidden: int, steps: int, lr: float):
  model = _GRU(hidden, per_step=False)

  def one(key):
    k_init, k_r, k_s, k_train = jax.random.split(key, 4)
    (tr_r, te_r), (tr_s, te_s) = _split(k_r, len(xr)), _split(k_s, len(xs))

    def loss(p, k):
      a, b = jax.random.split(k)
      i, j = tr_r[jax.random.randint(a, (BATCH,), 0, len(tr_r))], tr_s[jax.random.randint(b, (BATCH,), 0, len(tr_s))]
      logits = model.apply(p, jnp.concatenate([xr[i], xs[j]]), jnp.concatenate([lr_[i], ls_[j]]))
      labels = jnp.concatenate([jnp.ones(BATCH), jnp.zeros(BATCH)])
      return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    params = _train(loss, model.init(k_init, xr[:1], lr_[:1]), steps, lr, k_train)
    accuracy = ((model.apply(params, xr[te_r], lr_[te_r]) > 0).mean()
                + (model.apply(params, xs[te_s], ls_[te_s]) <= 0).mean()) / 2  # balanced (module docstring)
    return jnp.abs(accuracy - 0.5)
  return jax.vmap(one)(keys)


@functools.partial(jax.jit, static_argnames=("target", "hidden", "steps", "lr"))
def _predict(keys, xr, lr_, xs, ls_, target: int, hidden: int, steps: int, lr: float):
  model = _GRU(hidden, per_step=True)
  others = [c for c in range(xr.shape[-1]) if c != target]

  def inputs(x, lengths):  # the other columns of records 0..T-2 -> the target column of records 1..T-1
    return x[:, :-1, others], x[:, 1:, target], jnp.maximum(lengths - 1, 0)
  (ir, yr, nr), (is_, ys, ns) = inputs(xr, lr_), inputs(xs, ls_)

  def mae(p, x, y, n):  # the mean over series with 1+ target records of their mean absolute error
    valid = jnp.arange(y.shape[1])[None] < n[:, None]
    error = jnp.where(valid, jnp.abs(nn.sigmoid(model.apply(p, x, n)) - y), 0.0).sum(1) / jnp.maximum(n, 1)
    return jnp.sum(error * (n > 0)) / jnp.maximum(jnp.sum(n > 0), 1)

  def one(key):
    k_init, k_train = jax.random.split(key)

    def loss(p, k):
      i = jax.random.randint(k, (BATCH,), 0, len(ys))
      return mae(p, is_[i], ys[i], ns[i])
    return mae(_train(loss, model.init(k_init, is_[:1], ns[:1]), steps, lr, k_train), ir, yr, nr)
  return jax.vmap(one)(keys)


def _mean_std(scores) -> tuple[float, float]:
  scores = np.asarray(scores, np.float64)
  return float(scores.mean()), float(scores.std(ddof=1)) if len(scores) > 1 else 0.0


def discriminative_score(real: Dataset, synthetic: Dataset, settings: Settings = Settings(), seed: int = 0):
  """(mean, std) over settings.repeats of |accuracy - 0.5| of a post-hoc GRU classifier (module docstring)."""
  (xr, _), (xs, _) = _scaled_columns(real, real), _scaled_columns(synthetic, real)
  keys = jax.random.split(jax.random.key(seed), settings.repeats)
  return _mean_std(_discriminate(keys, xr, jnp.asarray(real.lengths), xs, jnp.asarray(synthetic.lengths),
                                 max(1, xr.shape[-1] // 2), settings.discriminator_steps, settings.learning_rate))


def predictive_score(real: Dataset, synthetic: Dataset, settings: Settings = Settings(), seed: int = 0):
  """(mean, std) over settings.repeats of the real data's mean absolute next-record error of a GRU
  trained on the synthetic data (module docstring); (nan, nan) where it is undefined."""
  (xr, target), (xs, _) = _scaled_columns(real, real), _scaled_columns(synthetic, real)
  if target is None or real.max_length < 2:
    return float("nan"), float("nan")
  keys = jax.random.split(jax.random.key(seed), settings.repeats)
  return _mean_std(_predict(keys, xr, jnp.asarray(real.lengths), xs, jnp.asarray(synthetic.lengths), target,
                            max(1, xr.shape[-1] // 2), settings.predictor_steps, settings.learning_rate))


def posthoc_scores(real: Dataset, synthetic: Dataset, settings: Settings = Settings(), seed: int = 0) -> dict:
  """{discriminative_score, discriminative_score_std, predictive_score, predictive_score_std}; NaN for a
  synthetic set with non-finite values (a failed generator)."""
  if not (np.isfinite(synthetic.features).all() and np.isfinite(synthetic.attributes).all()):
    nan = float("nan")
    return dict(discriminative_score=nan, discriminative_score_std=nan, predictive_score=nan, predictive_score_std=nan)
  d, d_std = discriminative_score(real, synthetic, settings, seed)
  p, p_std = predictive_score(real, synthetic, settings, seed)
  return dict(discriminative_score=d, discriminative_score_std=d_std, predictive_score=p, predictive_score_std=p_std)
