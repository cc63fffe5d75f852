"""TimeGAN's discriminative and predictive scores (dg_jax/evaluation/posthoc.py) on known answers."""
import dataclasses

import numpy as np

from dg_jax.data.schema import Dataset, continuous
from dg_jax.evaluation import posthoc


def sines(n: int, seed: int, length: int = 24, dims: int = 6) -> Dataset:
  """Sines of random frequency and phase; the last column repeats the first one record later, so the
  predictive task (the last column from the others one record before) has an answer."""
  rng = np.random.default_rng(seed)
  t = np.arange(length + 1)[None, :, None]
  x = np.sin(rng.uniform(0.1, 0.5, (n, 1, dims)) * t + rng.uniform(0, 2 * np.pi, (n, 1, dims)))
  x[:, 1:, -1] = x[:, :-1, 0]
  return Dataset(x[:, 1:].astype(np.float32), np.full(n, length), np.zeros((n, 0)),
                 tuple(continuous(f"s{i}") for i in range(dims)), ()).validate()


def test_known_answers():
  """Another draw of the same process: the classifier cannot tell it from the real set; the identical set:
  close to 0 too, above it by the module docstring's memorisation artefact; series shuffled in time: it
  almost always can, and a predictor trained on them learnt nothing that holds on real data, unlike one
  trained on the real series. (500 steps, not the published 2000/5000: tolerances allow for that.)"""
  real = sines(256, 0)
  shuffled = dataclasses.replace(real, features=real.features[:, np.random.default_rng(0).permutation(24)])
  settings = posthoc.Settings(discriminator_steps=500, predictor_steps=500, repeats=2)
  same, bad = (posthoc.posthoc_scores(real, s, settings) for s in (real, shuffled))
  assert same["discriminative_score"] < 0.2 and bad["discriminative_score"] > 0.3, (same, bad)
  assert posthoc.discriminative_score(real, sines(256, 1), settings)[0] < 0.1
  assert same["predictive_score"] < 0.12 and bad["predictive_score"] > 2 * same["predictive_score"], (same, bad)
  nan = dataclasses.replace(real, features=np.full_like(real.features, np.nan))
  assert all(np.isnan(v) for v in posthoc.posthoc_scores(real, nan, settings).values())


def test_sets_of_unequal_size_score_by_balanced_accuracy():
  """Series the classifier cannot tell apart score 0 however many of each there are: constant series in
  both sets get one logit, so one class for all, and each class's accuracy weighs half (pooled over 13
  and 90 test series it would be 13/103 or 90/103, a score of 0.37)."""
  flat = sines(64, 0)
  flat = dataclasses.replace(flat, features=np.full_like(flat.features, 0.5))
  many = dataclasses.replace(flat, features=np.full((448, 24, 6), 0.5, np.float32), lengths=np.full(448, 24),
                             attributes=np.zeros((448, 0)))
  settings = posthoc.Settings(discriminator_steps=50, repeats=2)
  assert posthoc.discriminative_score(flat, many, settings) == (0.0, 0.0)
