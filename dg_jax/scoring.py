"""Scoring while training (train.eval_every): every replica's generator, scored on device.

At each scoring step every replica generates train.eval_samples series (the same noise for every
replica: fold_in(key(EVAL_STREAM), step)), decodes them on device to original units and compares
them with a reference set by jnp versions of the cheap §5 metrics of dg_jax/evaluation/metrics.py
(same definitions; tests/test_scoring.py checks that they agree on the same samples). No sample leaves
the device for this.

  autocorrelation_mse/<f>  per continuous feature
  midrange_w1/<f>          W1 of the per-series (max+min)/2, per continuous feature
  length_w1                W1 of the series lengths
  jsd/<a>, jsd/<f>         per categorical attribute, and per categorical feature (records' histogram)
  memorisation_ratio       median distance of generated series to their nearest training series over
                           that of the held-out series (evaluation/memorisation.py's definition, against
                           up to MEMORISATION_REFERENCE training series); below 1 = closer to the training
                           data than unseen real series are

The reference is a held-out slice of the training series (train.eval_holdout, taken out of training;
none below MIN_HOLDOUT series, and then the training data is the reference and there is no
memorisation ratio). The composite score, lower is better, is

  score = mean(sqrt(autocorrelation_mse), midrange_w1 / std of the reference's midranges,
               length_w1 / T, jsd)  +  max(0, 1 - memorisation_ratio)

over the terms the data defines: each fidelity term is on a 0-to-about-1 scale, and the penalty makes
a generator that sits closer to the training series than unseen data does lose to one that does not,
so choosing the best checkpoint does not reward copying. Each replica keeps the generator of its
best-scored step in the training state (`best`), so it is checkpointed beside the latest one.
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from dg_jax.data import encoding
from dg_jax.data.schema import Dataset
from dg_jax.evaluation import memorisation, metrics
from dg_jax.models.doppelganger import DoppelGANger, sample_noise

log = logging.getLogger(__name__)
EVAL_STREAM = 0x5c07e  # seed of the scoring noise, apart from every run's keys
MIN_HOLDOUT = 20  # fewer held-out series than this: no slice is held out (tiny sets)
MEMORISATION_REFERENCE = 2000  # training series the memorisation ratio compares against (a fixed random subset)
HOLDOUT_SEED = 0  # the held-out slice depends on the data and train.eval_holdout only, never on train.seed


def split_holdout(dataset: Dataset, fraction: float) -> tuple[Dataset, Dataset | None]:
  """(training part, held-out slice or None): round(fraction * n) random series held out."""
  count = round(fraction * dataset.num_samples)
  if fraction <= 0:
    return dataset, None
  if count < MIN_HOLDOUT or dataset.num_samples - count < 1:
    log.info("scoring: %d series are too few to hold out %.0f%% (under %d); scoring against the training data, "
             "without the memorisation ratio", dataset.num_samples, 100 * fraction, MIN_HOLDOUT)
    return dataset, None
  order = np.random.default_rng(HOLDOUT_SEED).permutation(dataset.num_samples)
  log.info("scoring: %d of %d series held out for scoring (train.eval_holdout=%g)", count, dataset.num_samples,
           fraction)
  return dataset.subset(np.sort(order[count:])), dataset.subset(np.sort(order[:count]))


# ---- jnp versions of metrics.py's statistics (one replica's samples, decoded) ----

def _valid(lengths, t: int):
  return jnp.arange(t)[None, :] < lengths[:, None]


def flags_to_lengths(flags):
  """encoding.flags_to_lengths in jnp."""
  t = flags.shape[1]
  go, end = flags[..., 0], flags[..., 1]
  ends = end > go
  stop = ends | (go + end <= 0)
  first = jnp.where(stop.any(axis=1), stop.argmax(axis=1), t)
  ends_here = jnp.take_along_axis(ends, jnp.minimum(first, t - 1)[:, None], 1)[:, 0]
  return jnp.clip(jnp.where((first < t) & ends_here, first + 1, first), 1, t)


def decode(sample: dict, schema: encoding.Schema) -> tuple[jax.Array, jax.Array, jax.Array]:
  """encoding.decode in jnp: -> (features [n, T, K] in original units (categorical: codes), lengths [n],
  attributes [n, m] (categorical: codes))."""
  def split(x, heads):
    bounds = np.cumsum([h.dim for h in heads])[:-1].tolist()
    return jnp.split(x, bounds, axis=-1)

  def unscale(var, y):
    u = y if schema.normalization == encoding.ZERO_ONE else (y + 1) / 2
    width = var.high - var.low
    t = u * width + var.low if width > 0 else u + var.low
    return jnp.expm1(t) if var.log1p else jnp.sinh(t) if var.asinh else t

  blocks = split(sample["features"], schema.feature_heads)
  lengths = flags_to_lengths(blocks[-1])
  additional = sample["additional_attributes"]
  cols, c = [], 0
  for var, block in zip(schema.feature_vars, blocks):
    if var.is_categorical:
      cols.append(block.argmax(-1).astype(jnp.float32))
      continue
    y = block[..., 0]
    if schema.auto_normalize:
      x01 = y if schema.normalization == encoding.ZERO_ONE else (y + 1) / 2
      mid, half = additional[:, 2 * c:2 * c + 1], additional[:, 2 * c + 1:2 * c + 2]
      y = jnp.clip(x01 * (2 * half) + (mid - half), *encoding.value_range(schema.normalization))
    cols.append(unscale(var, y))
    c += 1
  features = jnp.where(_valid(lengths, schema.max_length)[..., None], jnp.stack(cols, -1), 0.0)
  attrs = [b.argmax(-1).astype(jnp.float32) if v.is_categorical else unscale(v, b[:, 0])
           for v, b in zip(schema.attribute_vars, split(sample["attributes"], schema.attribute_heads))]
  attributes = jnp.stack(attrs, 1) if attrs else jnp.zeros((lengths.shape[0], 0))
  return features, lengths, attributes


def mean_autocorrelation(x, lengths):
  """metrics.mean_autocorrelation of one feature [n, T] in jnp."""
  n, t = x.shape
  valid = _valid(lengths, t)
  hi, lo = jnp.where(valid, x, -jnp.inf).max(1), jnp.where(valid, x, jnp.inf).min(1)
  varying = hi > lo
  x = jnp.where(valid, x - jnp.where(valid, x, 0).sum(1, keepdims=True) / lengths[:, None], 0.0)
  spectrum = jnp.fft.rfft(x, n=2 * t)
  lagged = jnp.fft.irfft(spectrum * jnp.conj(spectrum), n=2 * t)[:, :t]
  denom = jnp.where(varying, jnp.sum(x * x, 1), 1.0)
  ok = valid & varying[:, None]
  count = ok.sum(0)
  return jnp.where(count > 0, jnp.where(ok, lagged / denom[:, None], 0).sum(0) / jnp.maximum(count, 1), jnp.nan)


def autocorrelation_mse(real_curve, curve):
  """metrics.autocorrelation_mse from two mean curves over lags 1.. (both [T])."""
  a, b = real_curve[1:], curve[1:]
  ok = jnp.isfinite(a) & jnp.isfinite(b)
  return jnp.where(ok.any(), jnp.sum(jnp.where(ok, (a - b) ** 2, 0)) / jnp.maximum(ok.sum(), 1), jnp.nan)


def wasserstein1(a, b):
  """metrics.wasserstein1 in jnp."""
  a, b = jnp.sort(a), jnp.sort(b)
  grid = jnp.sort(jnp.concatenate([a, b]))
  cdf_a = jnp.searchsorted(a, grid[:-1], side="right") / a.size
  cdf_b = jnp.searchsorted(b, grid[:-1], side="right") / b.size
  return jnp.sum(jnp.abs(cdf_a - cdf_b) * jnp.diff(grid))


def jensen_shannon(p, q):
  """metrics.jensen_shannon in jnp (histograms normalised here)."""
  p, q = p / p.sum(), q / q.sum()
  m = (p + q) / 2
  kl = lambda a, b: jnp.sum(jnp.where(a > 0, a * jnp.log2(jnp.where(a > 0, a, 1) / jnp.where(a > 0, b, 1)), 0))
  return jnp.maximum(0.0, (kl(p, m) + kl(q, m)) / 2)


def midranges(x, lengths):
  valid = _valid(lengths, x.shape[1])
  return (jnp.where(valid, x, -jnp.inf).max(1) + jnp.where(valid, x, jnp.inf).min(1)) / 2


def _feature_histogram(codes, lengths, k: int):
  valid = _valid(lengths, codes.shape[1])
  return jnp.zeros(k).at[codes.astype(jnp.int32).ravel()].add(valid.ravel().astype(jnp.float32))


def _histogram(data: Dataset, j: int, role: str) -> np.ndarray:
  if role == "attribute":
    k = data.attribute_vars[j].dim
    return np.bincount(data.attributes[:, j].astype(int), minlength=k)[:k].astype(np.float32)
  k = data.feature_vars[j].dim
  return np.bincount(data.features[:, :, j][data.valid_steps].astype(int), minlength=k)[:k].astype(np.float32)


def _flat_scaled(features, std):
  return (features / std).reshape(features.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Scores K replicas' generators against a reference set; `score` is jitted by the caller."""
  model: DoppelGANger
  num_samples: int
  reference: dict  # host arrays (see `build`)

  @classmethod
  def build(cls, model: DoppelGANger, num_samples: int, reference: Dataset, train: Dataset,
            held_out: bool) -> "Scorer":
    """reference: the held-out slice (held_out=True) or the training data. train: the training data."""
    cont = [j for j, v in enumerate(reference.feature_vars) if not v.is_categorical]
    ref = dict(
        autocorrelation=np.stack([metrics.mean_autocorrelation(reference, j) for j in cont]) if cont else None,
        midranges=[metrics.series_midranges(reference, j) for j in cont],
        lengths=reference.lengths.astype(np.float32),
        attribute_histograms=[_histogram(reference, j, "attribute") for j, v in enumerate(reference.attribute_vars)
                              if v.is_categorical],
        feature_histograms=[_histogram(reference, j, "feature") for j, v in enumerate(reference.feature_vars)
                            if v.is_categorical])
    ref["midrange_scale"] = [float(np.std(m)) or 1.0 for m in ref["midranges"]]
    if held_out:
      subset = np.random.default_rng(HOLDOUT_SEED).permutation(train.num_samples)[:MEMORISATION_REFERENCE]
      memo = train.subset(np.sort(subset))
      std = metrics.feature_scaling(memo)[1]
      _, held = memorisation.nearest_neighbours(memo, reference)
      ref.update(memo_train=_flat_scaled(memo.features, std), memo_std=std, held_out_median=float(np.median(held)))
    return cls(model, num_samples, jax.tree.map(lambda x: np.asarray(x, np.float32), ref))

  def names(self) -> list[str]:
    """The names of the per-variable scores, in the order `metrics` computes them."""
    s = self.model.schema
    out = [f"autocorrelation_mse/{v.name}" for v in s.feature_vars if not v.is_categorical]
    out += [f"midrange_w1/{v.name}" for v in s.feature_vars if not v.is_categorical]
    out += ["length_w1"] + [f"jsd/{v.name}" for v in s.attribute_vars if v.is_categorical]
    out += [f"jsd/{v.name}" for v in s.feature_vars if v.is_categorical]
    return out

  def metrics(self, decoded: tuple, ref: dict) -> dict:
    """One replica's decoded sample (`decode`) -> {name: scalar}: `names()`, the memorisation ratio
    (with a held-out slice) and the composite score."""
    schema = self.model.schema
    features, lengths, attributes = decoded
    cont = [j for j, v in enumerate(schema.feature_vars) if not v.is_categorical]
    values = [autocorrelation_mse(ref["autocorrelation"][i], mean_autocorrelation(features[:, :, j], lengths))
              for i, j in enumerate(cont)]
    values += [wasserstein1(ref["midranges"][i], midranges(features[:, :, j], lengths)) for i, j in enumerate(cont)]
    values.append(wasserstein1(ref["lengths"], lengths.astype(jnp.float32)))
    cat_attrs = [j for j, v in enumerate(schema.attribute_vars) if v.is_categorical]
    values += [jensen_shannon(h, jnp.zeros(h.shape[0]).at[attributes[:, j].astype(jnp.int32)].add(1.0))
               for h, j in zip(ref["attribute_histograms"], cat_attrs)]
    cat_feats = [j for j, v in enumerate(schema.feature_vars) if v.is_categorical]
    values += [jensen_shannon(h, _feature_histogram(features[:, :, j], lengths, h.shape[0]))
               for h, j in zip(ref["feature_histograms"], cat_feats)]
    out = dict(zip(self.names(), values))
    if "memo_train" in ref:
      q = _flat_scaled(features, ref["memo_std"])
      t = ref["memo_train"]
      nearest = jnp.argmin(jnp.sum(t * t, 1)[None, :] - 2.0 * q @ t.T, axis=1)
      distances = jnp.sum((q - t[nearest]) ** 2, 1)  # the winner's distance, recomputed directly
      # as memorisation_summary: a held-out median of 0 (duplicated series) gives inf, or 1 for exact copies
      median = jnp.median(distances)
      out["memorisation_ratio"] = jnp.where(ref["held_out_median"] > 0, median / ref["held_out_median"],
                                            jnp.where(median > 0, jnp.inf, 1.0))
    out["score"] = self.composite(out, ref)
    return out

  def composite(self, m: dict, ref: dict):
    """The documented composite score (module docstring) from one replica's metrics."""
    schema = self.model.schema
    terms = [jnp.sqrt(v) for k, v in m.items() if k.startswith("autocorrelation_mse/")]
    terms += [m[f"midrange_w1/{v.name}"] / scale for v, scale in
              zip([v for v in schema.feature_vars if not v.is_categorical], ref["midrange_scale"])]
    terms += [m["length_w1"] / schema.max_length] + [v for k, v in m.items() if k.startswith("jsd/")]
    terms = jnp.stack(terms)
    defined = jnp.isfinite(terms)
    score = jnp.sum(jnp.where(defined, terms, 0)) / jnp.maximum(defined.sum(), 1)
    if "memorisation_ratio" in m:
      score = score + jnp.maximum(0.0, 1.0 - m["memorisation_ratio"])
    return score

  def generate(self, generator_params, step):
    """One replica's eval sample in model space; the same noise for every replica at a step."""
    key = jax.random.fold_in(jax.random.key(EVAL_STREAM), step)
    noise = sample_noise(key, self.num_samples, self.model.schema, self.model.cfg)
    return self.model.generator.apply(generator_params, noise)

  def score(self, state: dict, ref: dict, preview: int = 3) -> tuple[dict, dict, tuple]:
    """(K-replica state, reference) -> (state with each replica's best generator updated, {name: [K]},
    the first `preview` decoded series of each replica: features [K, p, T, K], lengths [K, p]).
    Jit it with the state donated; `ref` is `self.reference` on device."""
    def one(replica_state):
      decoded = decode(self.generate(replica_state["params"]["generator"], replica_state["step"]), self.model.schema)
      m = self.metrics(decoded, ref)
      best = replica_state["best"]
      better = m["score"] < best["score"]  # NaN scores never win
      pick = lambda new, old: jnp.where(better, new, old)
      best = dict(generator=jax.tree.map(pick, replica_state["params"]["generator"], best["generator"]),
                  score=pick(m["score"], best["score"]), step=pick(replica_state["step"], best["step"]))
      return dict(replica_state, best=best), m, (decoded[0][:preview], decoded[1][:preview])
    return jax.vmap(one)(state)
