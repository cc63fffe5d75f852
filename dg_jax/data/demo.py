"""A seeded synthetic dataset with the structure DoppelGANger is built for, so dg_jax runs offline.

Daily traffic of network services: categorical metadata (service, region) set the level and the
shape of the series; weekly and yearly cycles; levels spanning orders of magnitude; a second
feature (latency) correlated with traffic; optionally variable lengths (services that stop).
"""
from __future__ import annotations

import numpy as np

from dg_jax.data.schema import Dataset, categorical, continuous

SERVICES = ("video", "web", "backup")
REGIONS = ("north", "south")
# Per service: log10 of the median daily bytes, weekly profile (Mon..Sun, multiplicative, in log space).
_LEVEL = {"video": 9.0, "web": 7.0, "backup": 5.0}
_WEEKLY = {"video": [-.15, -.15, -.1, -.1, 0, .35, .3], "web": [.2, .25, .25, .2, .1, -.5, -.5],
           "backup": [0, 0, 0, 0, 0, 0, 1.2]}


def make_demo(num_samples: int = 1000, length: int = 550, seed: int = 0,
              variable_lengths: bool = False) -> Dataset:
  rng = np.random.default_rng(seed)
  service = rng.choice(len(SERVICES), num_samples, p=[0.3, 0.5, 0.2])
  region = rng.choice(len(REGIONS), num_samples, p=[0.6, 0.4])
  day = np.arange(length)[None, :] + rng.integers(0, 7, num_samples)[:, None]  # random weekday of day 0

  level = np.array([_LEVEL[SERVICES[s]] for s in service]) * np.log(10) + rng.normal(0, 1.2, num_samples)
  weekly = np.array([_WEEKLY[SERVICES[s]] for s in service])[np.arange(num_samples)[:, None], day % 7]
  # Yearly cycle, half a year apart between regions; its amplitude varies per series.
  phase = np.where(region == 0, 0.0, np.pi)[:, None]
  yearly = rng.uniform(0.2, 0.6, (num_samples, 1)) * np.sin(2 * np.pi * day / 365.25 + phase)
  noise = np.zeros((num_samples, length))
  eps = rng.normal(0, 0.15, (num_samples, length))
  for t in range(1, length):  # AR(1) day-to-day noise
    noise[:, t] = 0.7 * noise[:, t - 1] + eps[:, t]
  log_traffic = level[:, None] + weekly + yearly + noise
  traffic = np.exp(log_traffic)
  # Latency grows with load relative to the series' own level: correlated with traffic over time.
  base_latency = np.where(region == 0, 20.0, 45.0)[:, None] * rng.uniform(0.8, 1.25, (num_samples, 1))
  latency = base_latency * (1 + 0.5 * np.tanh(log_traffic - level[:, None])) + rng.gamma(2, 1, (num_samples, length))

  if variable_lengths:  # bimodal: short-lived services and ones that run (almost) the whole period
    short = rng.random(num_samples) < 0.35
    lengths = np.where(short, rng.integers(7, max(8, length // 5), num_samples),
                       rng.integers(int(length * 0.8), length + 1, num_samples))
    lengths = np.clip(lengths, 1, length)
  else:
    lengths = np.full(num_samples, length)
  features = np.stack([traffic, latency], axis=-1).astype(np.float32)
  features[np.arange(length)[None, :] >= lengths[:, None]] = 0
  return Dataset(features, lengths, np.stack([service, region], axis=1).astype(np.float64),
                 (continuous("traffic_bytes", log1p=True), continuous("latency_ms")),
                 (categorical("service", SERVICES), categorical("region", REGIONS)),
                 source=f"demo(num_samples={num_samples}, length={length}, seed={seed})").validate()
