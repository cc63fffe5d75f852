"""Hidden Markov model baseline (§5.1.2): a Gaussian HMM (hmmlearn, diagonal covariances) on the
encoded records of all training series.

The HMM emits the feature blocks of each record (continuous values, and one-hot blocks as real
vectors later snapped to their argmax); lengths are drawn from the training lengths' empirical
distribution and attributes from the training rows', both independently of the series. Generation
is our own vectorised sampler on the fitted parameters, so a saved HMM is four arrays.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from hmmlearn.hmm import GaussianHMM

from dg_jax.baselines import common
from dg_jax.data import encoding
from dg_jax.data.schema import Dataset
from dg_jax.settings import train_config


@dataclasses.dataclass(frozen=True)
class HMMConfig:
  num_states: int = 10            # hidden states
  n_iter: int = 50                # EM iterations (at most)
  tol: float = 1e-2               # EM stops when the log-likelihood gains less than this
  min_covar: float = 1e-3         # floor on the emission variances

  def __post_init__(self):
    if self.num_states < 1 or self.n_iter < 1:
      raise ValueError(f"baseline.hmm: need num_states >= 1 and n_iter >= 1; got {self}")


class HMMBaseline(common.Baseline):
  name = "hmm"

  @classmethod
  def fit(cls, data: Dataset, config: ml_collections.ConfigDict) -> "HMMBaseline":
    hp, seed = common.hyperparameters(HMMConfig, config, cls.name), train_config(config).seed
    data = data.validate()
    schema, enc = common.prepare(data, config)
    records = enc.features[..., :-2][data.valid_steps]  # valid steps, series after series; flags left out
    if len(records) < hp.num_states:
      raise ValueError(f"{data.source}: {len(records)} records cannot fit {hp.num_states} HMM states")
    hmm = GaussianHMM(hp.num_states, covariance_type="diag", n_iter=hp.n_iter, tol=hp.tol,
                      min_covar=hp.min_covar, random_state=seed)
    hmm.fit(records, lengths=data.lengths)
    common.log.info("hmm: %d states fitted on %d records in %d EM iterations (converged: %s)",
                    hp.num_states, len(records), hmm.monitor_.iter, hmm.monitor_.converged)
    arrays = dict(startprob=hmm.startprob_, transmat=hmm.transmat_, means=hmm.means_,
                  variances=np.stack([np.diag(c) for c in hmm.covars_]),
                  meta_rows=common.meta_rows(enc), attribute_rows=data.attributes, lengths=data.lengths)
    return cls(schema, config, arrays)

  def _sample(self, num_samples: int, seed: int):
    a = self.arrays
    rng = np.random.default_rng([seed, 1])
    idx = common.draw_rows(len(a["meta_rows"]), num_samples, seed)
    lengths = rng.choice(a["lengths"], num_samples)  # empirical length distribution
    t, (low, high) = self.schema.max_length, encoding.value_range(self.schema.normalization)
    cdf = np.cumsum(a["transmat"], axis=1)
    states = np.empty((num_samples, t), np.int64)
    states[:, 0] = _draw(np.cumsum(a["startprob"])[None], rng.random(num_samples))
    for i in range(1, t):
      states[:, i] = _draw(cdf[states[:, i - 1]], rng.random(num_samples))
    values = a["means"][states] + np.sqrt(a["variances"][states]) * rng.standard_normal(states.shape + a["means"].shape[1:])
    values = np.clip(values, low, high)
    features = np.concatenate([values, encoding.lengths_to_flags(lengths, t)], axis=-1).astype(np.float32)
    meta = a["meta_rows"][idx]
    d = self.schema.attribute_dim
    return encoding.Encoded(meta[:, :d], meta[:, d:], features), a["attribute_rows"][idx]


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Per row, the first index whose cumulative probability exceeds u (inverse-CDF sampling)."""
  return np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)
