"""Scoring while training (train.eval_every): every replica's generator, scored on device.

At each scoring every replica generates train.eval_samples series from the same fixed noise
(key(EVAL_STREAM), the same for every replica and every scoring: common random numbers, so two scores
differ only by the generators), decodes them on device to original units and compares them with a
reference set by jnp versions of the cheap §5 metrics of dg_jax/evaluation/metrics.py (same
definitions; tests/test_seeds.py checks that they agree on the same samples). No sample leaves the
device for this.

  autocorrelation_mse/<f>  per continuous feature whose reference series define it (2+ varying records)
  midrange_w1/<f>          W1 of the per-series (max+min)/2, per continuous feature
  length_w1                W1 of the series lengths
  jsd/<a>, jsd/<f>         per categorical attribute, and per categorical feature (records' histogram)
  spread_log_ratio/<f>     |ln| of the median within-series std over the reference's, per continuous feature
  diff2_log_ratio/<f>      |ln| of the std of second differences over the reference's (jitter), per
                           continuous feature (both where the reference's value is not 0)
  flat_share/<f>           the share of generated series that are flat (metrics.flat_share)
  at_min/<f>               the median share of a varying generated series' records at its minimum
                           (metrics.at_min_share; logged, not a term: zero-inflated series)
  memorisation_ratio       median distance of generated series to their nearest training series (all of
                           them, in chunks on device) over that of unseen real series: the held-out slice,
                           or without one, each training series' distance to the nearest other one (leave
                           one out); both medians over up to MEMORISATION_QUERIES series. Below 1 = closer
                           to the training data than unseen real series are
  failed                   1 where the generator failed (below)

Which terms count is decided by the reference alone. A generator fails, and scores inf (the worst, so
it is never kept as the best), when a term the reference defines is not finite for its sample, when its
sample holds a non-finite value, or when it collapsed (metrics.failures: a continuous feature flat in
COLLAPSE_MARGIN more of its series than of the reference's, or a categorical variable reduced to one
category where the reference has several). Otherwise, lower is better:

  score = mean(sqrt(autocorrelation_mse), midrange_w1 / std of the reference's midranges,
               length_w1 / T, jsd, spread_log_ratio, diff2_log_ratio)  +  max(0, 1 - memorisation_ratio)

Each fidelity term is on a 0-to-about-1 scale, and the penalty makes a generator that sits closer to
the training series than unseen data does lose to one that does not, so choosing the best checkpoint
does not reward copying.

The best generator (kept per replica in the training state, `best`, so checkpointed beside the latest
one) is chosen by screening and confirmation, so that one lucky sample does not make a best: a
generator whose score beats the best's screening score is scored again on a second fixed noise set,
CONFIRM_FACTOR times as large (key(CONFIRM_STREAM)), and kept only if that confirming score beats the
best's. `best.score` is the confirming score.
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dg_jax.data import encoding
from dg_jax.data.schema import Dataset
from dg_jax.evaluation import metrics
from dg_jax.models.doppelganger import DoppelGANger, sample_noise
from dg_jax.train_step import NOISE_SPECS

log = logging.getLogger(__name__)
EVAL_STREAM = 0x5c07e  # seed of the scoring noise, apart from every run's keys
CONFIRM_STREAM = 0xc0f1  # seed of the noise that confirms a new best
CONFIRM_FACTOR = 2  # the confirming sample has this many times train.eval_samples series
MIN_HOLDOUT = 20  # fewer held-out series than this: no slice is held out (tiny sets)
MEMORISATION_QUERIES = 2000  # unseen real series whose nearest-neighbour distances give the reference median
MEMORISATION_CHUNK = 4096  # training series per block of the on-device nearest-neighbour search
FLAT_ALARM = 0.05  # the log names a feature flat in this share more of the generated series than of the reference's
ALARM_FACTOR = 1.5  # ... or whose within-series spread or second differences are off by more than this factor
AT_MIN_ALARM = 0.25  # ... or whose varying series sit at their minimum for this share of records more or less
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
  for j, (var, block) in enumerate(zip(schema.feature_vars, blocks)):
    if var.is_categorical:
      cols.append(block.argmax(-1).astype(jnp.float32))
      continue
    y = block[..., 0]
    if schema.auto_normalize:
      x01 = y if schema.normalization == encoding.ZERO_ONE else (y + 1) / 2
      mid, half = additional[:, 2 * c:2 * c + 1], encoding.decode_half(additional[:, 2 * c + 1:2 * c + 2], schema)
      y = jnp.clip(x01 * (2 * half) + (mid - half), *encoding.value_range(schema.normalization))
    cols.append(unscale(var, schema.put_at_floor(y, blocks, j, jnp.where)))
    c += 1
  features = jnp.where(_valid(lengths, schema.max_length)[..., None], jnp.stack(cols, -1), 0.0)
  attrs = [b.argmax(-1).astype(jnp.float32) if v.is_categorical else unscale(v, b[:, 0])
           for v, b in zip(schema.attribute_vars, split(sample["attributes"], schema.attribute_heads))]
  attributes = jnp.stack(attrs, 1) if attrs else jnp.zeros((lengths.shape[0], 0))
  return features, lengths, attributes


def _centred(x, lengths):
  """One feature [n, T] with each series' mean over its valid records removed (0 after the end)."""
  valid = _valid(lengths, x.shape[1])
  return jnp.where(valid, x - jnp.where(valid, x, 0).sum(1, keepdims=True) / lengths[:, None], 0.0)


def mean_autocorrelation(x, lengths):
  """metrics.mean_autocorrelation of one feature [n, T] in jnp."""
  n, t = x.shape
  valid = _valid(lengths, t)
  hi, lo = _extrema(x, lengths)
  varying = hi > lo
  x = _centred(x, lengths)
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


def _extrema(x, lengths):
  """Each series' (max, min) over its valid records of one feature [n, T]."""
  valid = _valid(lengths, x.shape[1])
  return jnp.where(valid, x, -jnp.inf).max(1), jnp.where(valid, x, jnp.inf).min(1)


def midranges(x, lengths):
  hi, lo = _extrema(x, lengths)
  return (hi + lo) / 2


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


def reference_median(train_flat: np.ndarray, held_out_flat: np.ndarray | None, chunk: int = 8192) -> float:
  """The median distance of unseen real series to their nearest training series: up to
  MEMORISATION_QUERIES held-out series against all training series, or, without held-out series,
  training series against all the others (leave one out). Blocks of `chunk` training rows at a time."""
  queries = held_out_flat if held_out_flat is not None else train_flat
  rows = np.sort(np.random.default_rng(HOLDOUT_SEED).permutation(len(queries))[:MEMORISATION_QUERIES])
  q = queries[rows].astype(np.float64)
  q_sq, nearest = np.sum(q * q, 1), np.full(len(rows), np.inf)
  for start in range(0, len(train_flat), chunk):
    t = train_flat[start:start + chunk].astype(np.float64)
    d = q_sq[:, None] + np.sum(t * t, 1)[None, :] - 2.0 * q @ t.T
    if held_out_flat is None:  # not itself
      d[rows[:, None] == np.arange(start, start + len(t))[None, :]] = np.inf
    nearest = np.minimum(nearest, d.min(1))
  return float(np.median(np.maximum(nearest, 0.0)))


def nearest_distances(queries, train, chunk: int = MEMORISATION_CHUNK):
  """[Q] squared distance of each query to its nearest row of `train` ([n, D]), scanning blocks of
  `chunk` training rows on device (padding rows never win)."""
  n = train.shape[0]
  blocks = -(-n // chunk)
  padded = jnp.pad(train, ((0, blocks * chunk - n), (0, 0))).reshape(blocks, chunk, -1)
  valid = (jnp.arange(blocks * chunk) < n).reshape(blocks, chunk)
  q_sq = jnp.sum(queries * queries, 1)

  def block(best, xs):
    rows, ok = xs
    d = q_sq[:, None] + jnp.sum(rows * rows, 1)[None, :] - 2.0 * queries @ rows.T
    return jnp.minimum(best, jnp.where(ok[None, :], d, jnp.inf).min(1)), None
  best, _ = jax.lax.scan(block, jnp.full(queries.shape[0], jnp.inf), (padded, valid))
  return jnp.maximum(best, 0.0)


def series_ranges(x, lengths):
  hi, lo = _extrema(x, lengths)
  return hi - lo


def series_spreads(x, lengths):
  """metrics.series_spreads of one feature [n, T] in jnp."""
  x = _centred(x, lengths)
  return jnp.sqrt(jnp.sum(x * x, 1) / lengths)


def difference_spread(x, lengths, order: int):
  """metrics.difference_spread of one feature [n, T] in jnp."""
  d, valid = jnp.diff(x, order, axis=1), _valid(lengths, x.shape[1])[:, order:]
  count = jnp.maximum(valid.sum(1), 1)
  mean = jnp.where(valid, d, 0).sum(1) / count
  rough = jnp.sqrt(jnp.where(valid, (d - mean[:, None]) ** 2, 0).sum(1) / count)
  spread = series_spreads(x, lengths)
  ok = (lengths > order) & (spread > 0)
  return jnp.nanmedian(jnp.where(ok, rough / jnp.where(ok, spread, 1.0), jnp.nan))


def at_min_share(x, lengths, tolerance):
  """metrics.at_min_share of one feature [n, T] in jnp."""
  hi, lo = _extrema(x, lengths)
  near = (_valid(lengths, x.shape[1]) & (x - lo[:, None] <= metrics.AT_MIN * (hi - lo)[:, None])).sum(1) / lengths
  return jnp.nanmedian(jnp.where(hi - lo > tolerance, near, jnp.nan))


def log_ratio(synthetic, real):
  """metrics.log_ratio in jnp (real > 0 here)."""
  return jnp.abs(jnp.log(synthetic) - jnp.log(real))


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Scores K replicas' generators against a reference set; `score` is jitted by the caller.
  `acf_features`: the continuous features whose reference autocorrelation is defined; `several`:
  for each categorical attribute, then each categorical feature, whether the reference has 2+ categories."""
  model: DoppelGANger
  num_samples: int
  reference: dict  # host arrays (see `build`)
  acf_features: tuple
  several: tuple
  varying: tuple  # the continuous features whose reference series vary (spread_log_ratio)
  rough: tuple  # those whose reference second differences vary (diff2_log_ratio)
  mesh: jax.sharding.Mesh | None = None  # with one: each replica's sample rows split over its 'data' devices

  @classmethod
  def build(cls, model: DoppelGANger, num_samples: int, reference: Dataset, train: Dataset,
            held_out: bool, mesh: jax.sharding.Mesh | None = None) -> "Scorer":
    """reference: the held-out slice (held_out=True) or the training data. train: the training data.
    mesh: the training mesh, over whose 'data' axis each replica's scoring is split."""
    cont = [j for j, v in enumerate(reference.feature_vars) if not v.is_categorical]
    curves = {j: metrics.mean_autocorrelation(reference, j) for j in cont}
    acf = tuple(j for j in cont if np.isfinite(curves[j][1:]).any())
    tolerance = [metrics.flat_tolerance(reference, j) for j in cont]
    stats = {j: metrics.variability(reference, j, tol) for j, tol in zip(cont, tolerance)}
    varying = tuple(j for j in cont if stats[j]["spread"] > 0)
    rough = tuple(j for j in cont if stats[j]["diff2"] > 0)
    ref = dict(
        autocorrelation=np.stack([curves[j] for j in acf]) if acf else None,
        midranges=[metrics.series_midranges(reference, j) for j in cont],
        lengths=reference.lengths.astype(np.float32),
        attribute_histograms=[_histogram(reference, j, "attribute") for j, v in enumerate(reference.attribute_vars)
                              if v.is_categorical],
        feature_histograms=[_histogram(reference, j, "feature") for j, v in enumerate(reference.feature_vars)
                            if v.is_categorical],
        flat_tolerance=np.array(tolerance),
        flat_share=np.array([stats[j]["flat_share"] for j in cont]),
        at_min=np.array([stats[j]["at_min"] for j in cont]),
        spread=np.array([stats[j]["spread"] for j in varying]), diff2=np.array([stats[j]["diff2"] for j in rough]))
    ref["midrange_scale"] = [float(np.std(m)) or 1.0 for m in ref["midranges"]]
    several = tuple(bool((h > 0).sum() > 1) for h in ref["attribute_histograms"] + ref["feature_histograms"])
    std = metrics.feature_scaling(train)[1]
    memo_train = _flat_scaled(train.features, std).astype(np.float32)
    ref.update(memo_train=memo_train, memo_std=std, held_out_median=reference_median(
        memo_train, _flat_scaled(reference.features, std) if held_out else None))
    return cls(model, num_samples, jax.tree.map(lambda x: np.asarray(x, np.float32), ref), acf, several, varying,
               rough, mesh)

  def names(self) -> list[str]:
    """The names of the composite's per-variable terms, in the order `metrics` computes them."""
    s = self.model.schema
    out = [f"autocorrelation_mse/{s.feature_vars[j].name}" for j in self.acf_features]
    out += [f"midrange_w1/{v.name}" for v in s.feature_vars if not v.is_categorical]
    out += ["length_w1"] + [f"jsd/{v.name}" for v in s.attribute_vars if v.is_categorical]
    out += [f"jsd/{v.name}" for v in s.feature_vars if v.is_categorical]
    out += [f"spread_log_ratio/{s.feature_vars[j].name}" for j in self.varying]
    out += [f"diff2_log_ratio/{s.feature_vars[j].name}" for j in self.rough]
    return out

  def metrics(self, decoded: tuple, ref: dict) -> dict:
    """One replica's decoded sample (`decode`) -> {name: scalar}: `names()`, flat_share/<f>, at_min/<f>, the
    memorisation ratio, `failed` and the composite score (inf when failed)."""
    schema = self.model.schema
    features, lengths, attributes = decoded
    cont = [j for j, v in enumerate(schema.feature_vars) if not v.is_categorical]
    values = [autocorrelation_mse(ref["autocorrelation"][i], mean_autocorrelation(features[:, :, j], lengths))
              for i, j in enumerate(self.acf_features)]
    values += [wasserstein1(ref["midranges"][i], midranges(features[:, :, j], lengths)) for i, j in enumerate(cont)]
    values.append(wasserstein1(ref["lengths"], lengths.astype(jnp.float32)))
    cat_attrs = [j for j, v in enumerate(schema.attribute_vars) if v.is_categorical]
    histograms = [jnp.zeros(h.shape[0]).at[attributes[:, j].astype(jnp.int32)].add(1.0)
                  for h, j in zip(ref["attribute_histograms"], cat_attrs)]
    cat_feats = [j for j, v in enumerate(schema.feature_vars) if v.is_categorical]
    histograms += [_feature_histogram(features[:, :, j], lengths, h.shape[0])
                   for h, j in zip(ref["feature_histograms"], cat_feats)]
    values += [jensen_shannon(h, g) for h, g in zip(ref["attribute_histograms"] + ref["feature_histograms"],
                                                     histograms)]
    values += [log_ratio(jnp.median(series_spreads(features[:, :, j], lengths)), ref["spread"][i])
               for i, j in enumerate(self.varying)]
    values += [log_ratio(difference_spread(features[:, :, j], lengths, 2), ref["diff2"][i])
               for i, j in enumerate(self.rough)]
    out = dict(zip(self.names(), values))
    flat = [jnp.mean(series_ranges(features[:, :, j], lengths) <= ref["flat_tolerance"][i]) for i, j in enumerate(cont)]
    out.update({f"flat_share/{schema.feature_vars[j].name}": f for j, f in zip(cont, flat)})
    out.update({f"at_min/{schema.feature_vars[j].name}":
                at_min_share(features[:, :, j], lengths, ref["flat_tolerance"][i]) for i, j in enumerate(cont)})
    median = jnp.median(nearest_distances(_flat_scaled(features, ref["memo_std"]), ref["memo_train"]))
    # as memorisation_summary: a reference median of 0 (duplicated series) gives inf, or 1 for exact copies
    out["memorisation_ratio"] = jnp.where(ref["held_out_median"] > 0, median / ref["held_out_median"],
                                          jnp.where(median > 0, jnp.inf, 1.0))
    collapsed = [f > s + metrics.COLLAPSE_MARGIN for f, s in zip(flat, ref["flat_share"])]
    collapsed += [jnp.sum(g > 0) == 1 for g, several in zip(histograms, self.several) if several]
    failed = ~(jnp.isfinite(features).all() & jnp.isfinite(attributes).all()
               & jnp.isfinite(jnp.stack(values)).all() & ~jnp.any(jnp.stack(collapsed + [False])))
    out["failed"] = failed.astype(jnp.float32)
    out["score"] = jnp.where(failed, jnp.inf, self.composite(out, ref))
    return out

  def alarms(self, scores: dict) -> dict[tuple[int, str, str], str]:
    """{(replica, feature, what): line} for each continuous feature of each replica that is flat in
    FLAT_ALARM more of the generated series than of the reference's ("collapse"), whose spread or
    roughness is off by more than ALARM_FACTOR, or whose varying series sit at their minimum for AT_MIN_ALARM
    more or less of their records ("at the minimum": a loss rate at 0 but for a spike generated as bumps):
    from one scoring's host metrics ({name: [K]})."""
    schema, out = self.model.schema, {}
    cont = [v.name for v in schema.feature_vars if not v.is_categorical]
    for r in range(len(scores["score"])):
      for name, ref_flat in zip(cont, self.reference["flat_share"]):
        flat = scores[f"flat_share/{name}"][r]
        if flat > ref_flat + FLAT_ALARM:
          out[r, name, "collapse"] = (
              f"replica {r}: {name} is flat in {flat:.0%} of the generated series ({ref_flat:.0%} of the "
              "reference's): the feature is collapsing (data.log_half_range=True may help: docs/design.md)")
      for name, ref_at_min in zip(cont, self.reference["at_min"]):
        at_min = scores[f"at_min/{name}"][r]
        if abs(at_min - ref_at_min) > AT_MIN_ALARM:  # NaN (no varying series) compares False
          out[r, name, "at the minimum"] = (
              f"replica {r}: {name}: its varying generated series sit at their minimum for {at_min:.0%} of their "
              f"records (the reference's for {ref_at_min:.0%})")
      for key, what in (("spread_log_ratio", "within-series spread"),
                        ("diff2_log_ratio", "spread of second differences (roughness)")):
        for name in cont:
          ratios = scores.get(f"{key}/{name}")  # absent where the reference does not define it
          if ratios is not None and ratios[r] > np.log(ALARM_FACTOR):
            out[r, name, what] = (f"replica {r}: {name}: {what} off by a factor of {np.exp(ratios[r]):.3g} from "
                                  "the reference's")
    return out

  def composite(self, m: dict, ref: dict):
    """The documented composite score (module docstring) of one replica's metrics that did not fail."""
    schema = self.model.schema
    terms = [jnp.sqrt(m[name]) for name in self.names() if name.startswith("autocorrelation_mse/")]
    terms += [m[f"midrange_w1/{v.name}"] / scale for v, scale in
              zip([v for v in schema.feature_vars if not v.is_categorical], ref["midrange_scale"])]
    terms += [m["length_w1"] / schema.max_length]
    terms += [m[name] for name in self.names() if name.startswith(("jsd/", "spread_log_ratio/", "diff2_log_ratio/"))]
    return jnp.mean(jnp.stack(terms)) + jnp.maximum(0.0, 1.0 - m["memorisation_ratio"])

  def sample(self, generator_params, stream: int, num_samples: int):
    """One replica's sample decoded to original units, from the fixed noise of `stream`."""
    noise = sample_noise(jax.random.key(stream), num_samples, self.model.schema, self.model.cfg)
    if self.mesh is not None:  # each device generates (and XLA then scores) its share of the rows
      noise = {name: jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, NOISE_SPECS[name]))
               for name, x in noise.items()}
    out = self.model.generator.apply(generator_params, noise)
    if self.mesh is not None:  # then whole again: XLA's CPU FFT (autocorrelation) refuses rows split over devices
      out = jax.lax.with_sharding_constraint(out, NamedSharding(self.mesh, P()))
    return decode(out, self.model.schema)

  def score(self, state: dict, ref: dict, preview: int = 3) -> tuple[dict, dict, tuple]:
    """(K-replica state, reference) -> (state with each replica's best generator updated, {name: [K]}
    (`metrics`, and `confirmed`: the confirming score, inf where none was needed), the first `preview`
    decoded series of each replica: features [K, p, T, K], lengths [K, p]).
    Jit it with the state donated; `ref` is `self.reference` on device."""
    generators, best = state["params"]["generator"], state["best"]

    def screen(generator):
      decoded = self.sample(generator, EVAL_STREAM, self.num_samples)
      return self.metrics(decoded, ref), (decoded[0][:preview], decoded[1][:preview])
    m, previews = jax.vmap(screen)(generators)
    candidate = m["score"] < best["screen"]  # inf (failed) never is
    confirm = lambda: jax.vmap(lambda g: self.metrics(  # noqa: E731
        self.sample(g, CONFIRM_STREAM, CONFIRM_FACTOR * self.num_samples), ref)["score"])(generators)
    confirmed = jax.lax.cond(candidate.any(), confirm, lambda: jnp.full_like(m["score"], jnp.inf))
    keep = candidate & (confirmed < best["score"])
    pick = lambda new, old: jnp.where(keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)  # noqa: E731
    best = dict(generator=jax.tree.map(pick, generators, best["generator"]), score=pick(confirmed, best["score"]),
                screen=pick(m["score"], best["screen"]), step=pick(state["step"], best["step"]))
    return dict(state, best=best), dict(m, confirmed=confirmed), previews
