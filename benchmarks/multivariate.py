"""Multivariate sets shaped like the literature's benchmarks (TimeGAN, NeurIPS 2019), for issue 21's fidelity
work: windows of 24 records, no metadata, written through the generic npz input.

  sines      TimeGAN's sine set: 10,000 series of 5 features, each sin(f t + p) with f, p ~ U(0, 0.1), scaled
             to [0, 1]: smooth, simple, every feature independent.
  stocklike  a known-answer stand-in for TimeGAN's stock set: one long daily price path (geometric random walk
             with volatility regimes) as Open, High, Low, Close, Adj Close (five almost perfectly correlated
             features) and a heavy-tailed Volume tied to the size of the day's move; min-max scaled over the
             whole path, then every window of 24 days (stride 1), as TimeGAN cuts its stock data.
  sensors    hourly temperature and humidity over 2-7 days (lengths vary) at four kinds of site (an attribute):
             a daily cycle set by the site, a slow drift, 2% noise; smooth, long, with metadata.
  macro      a real one, where statsmodels is installed: US quarterly macro data 1959-2009 (statsmodels'
             macrodata: real GDP, consumption, investment, disposable income, CPI, unemployment), windows of 24
             quarters, stride 1 (180 series: small, a check, not a benchmark).
  msft       a real stock set, where pmdarima is installed (`pip install --no-deps pmdarima`: only its data
             file is read): Microsoft's daily Open, High, Low, Close and Volume (Kaggle's price-volume set,
             split-adjusted, 1986-2017), the last 3685 trading days (as many as TimeGAN's Google set) cut
             as TimeGAN cuts its stock data; the held-out file is the 3685 days before them, cut the same way.

  python benchmarks/multivariate.py --out /tmp/mv   # writes <name>_train.npz and <name>_held_out.npz
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd

from common import ROOT  # noqa: F401  (puts the repository on sys.path)

from dg_jax.data.npz_format import save_npz
from dg_jax.data.schema import Dataset, categorical, continuous

WINDOW = 24


def _dataset(x: np.ndarray, names) -> Dataset:
  n = len(x)
  return Dataset(x.astype(np.float32), np.full(n, x.shape[1]), np.zeros((n, 0)), tuple(map(continuous, names)), ())


def _windows(path: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Every WINDOW-record window of a [L, dim] path, min-max scaled over the path, shuffled."""
  path = (path - path.min(0)) / (path.max(0) - path.min(0))
  x = np.stack([path[i:i + WINDOW] for i in range(len(path) - WINDOW + 1)])
  return x[rng.permutation(len(x))]


def sine_curves(f: np.ndarray, p: np.ndarray, length: int = WINDOW) -> np.ndarray:
  """The sines family: (sin(f t + p) + 1) / 2 for t < length, [...] frequencies and phases -> [..., length]."""
  return (np.sin(f[..., None] * np.arange(length) + p[..., None]) + 1) / 2


def sines(seed: int, n: int = 10_000, dim: int = 5) -> Dataset:
  rng = np.random.default_rng(seed)
  f, p = rng.uniform(0, 0.1, (2, n, dim))
  return _dataset(sine_curves(f, p).transpose(0, 2, 1), [f"s{i}" for i in range(dim)])


def stocklike(seed: int, days: int = 3700) -> Dataset:
  rng = np.random.default_rng(seed)
  vol = 0.01 * np.exp(np.cumsum(rng.normal(0, 0.05, days)).clip(-1.5, 1.5))  # slowly drifting volatility
  ret = 0.0004 + vol * rng.standard_t(4, days) / np.sqrt(2)
  close = 100 * np.exp(np.cumsum(ret))
  open_ = np.concatenate([[close[0]], close[:-1]]) * np.exp(rng.normal(0, 0.3, days) * vol)
  high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.5, days)) * vol)
  low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.5, days)) * vol)
  adj = close * np.linspace(0.9, 1.0, days)  # dividends adjust the past a little
  volume = np.exp(15 + 20 * np.abs(ret - 0.0004) + rng.normal(0, 0.3, days))
  path = np.stack([open_, high, low, close, adj, volume], 1)
  return _dataset(_windows(path, rng), ["open", "high", "low", "close", "adj_close", "volume"])


def sensors(seed: int, n: int = 2000, days: int = 7) -> Dataset:
  """Hourly temperature and humidity at four kinds of site over up to a week (lengths 2-7 days): a daily
  cycle whose level, amplitude and phase depend on the site, a slow drift and 2% noise; humidity falls as
  the temperature rises. Smooth, long, variable lengths, one attribute."""
  rng = np.random.default_rng(seed)
  t = np.arange(24 * days)
  site = rng.integers(0, 4, n)
  level, amplitude = np.array([5, 15, 25, 10.0])[site, None], np.array([3, 6, 4, 8.0])[site, None]
  peak = np.array([14, 15, 13, 16])[site, None]  # the hour of the warmest
  drift = np.cumsum(rng.normal(0, 0.15, (n, len(t))), 1)
  drift = np.apply_along_axis(lambda d: np.convolve(d, np.ones(24) / 24, "same"), 1, drift)  # slow: a day's mean
  cycle = np.sin(2 * np.pi * (t - peak + 6) / 24 + rng.normal(0, 0.2, (n, 1)))
  temperature = level + amplitude * cycle + drift + rng.normal(0, 0.02 * amplitude, (n, len(t)))
  humidity = 60 - 3 * amplitude * cycle - 2 * drift + rng.normal(0, 0.5, (n, len(t)))
  lengths = 24 * rng.integers(2, days + 1, n)
  x = np.stack([temperature, humidity], -1) * (t[None, :, None] < lengths[:, None, None])
  return Dataset(x.astype(np.float32), lengths, site[:, None].astype(float),
                 (continuous("temperature"), continuous("humidity")),
                 (categorical("site", ["coast", "valley", "desert", "mountain"]),))


def macro(seed: int) -> Dataset:
  from statsmodels.datasets import macrodata  # optional: pip install statsmodels
  frame = macrodata.load_pandas().data
  names = ["realgdp", "realcons", "realinv", "realdpi", "cpi", "unemp"]
  return _dataset(_windows(frame[names].to_numpy(np.float64), np.random.default_rng(seed)), names)


def msft(seed: int, days: int = 3685) -> Dataset:
  """seed 0: the last `days` trading days of pmdarima's MSFT file; seed 1: the `days` before them."""
  import importlib.util
  import tarfile
  spec = importlib.util.find_spec("pmdarima")  # locates the package without importing it (or its deps)
  if spec is None:
    raise SystemExit("the msft set reads pmdarima's data file: pip install --no-deps pmdarima")
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "msft.tar.gz")
  with tarfile.open(path) as tar:
    frame = pd.read_csv(tar.extractfile("msft.csv"))
  names = ["Open", "High", "Low", "Close", "Volume"]
  end = len(frame) - seed * days
  window = frame[names].to_numpy(np.float64)[end - days:end]
  return _dataset(_windows(window, np.random.default_rng(seed)), [n.lower() for n in names])


SETS = dict(sines=sines, stocklike=stocklike, macro=macro, msft=msft, sensors=sensors)


def write(name: str, directory: str) -> tuple[str, str]:
  """(training file, held-out file) of a set: seeds 0 and 1 (macro: the same windows, a half each)."""
  os.makedirs(directory, exist_ok=True)
  paths = tuple(os.path.join(directory, f"{name}_{part}.npz") for part in ("train", "held_out"))
  if not all(map(os.path.exists, paths)):
    if name == "macro":
      data = macro(0)
      half = data.num_samples // 2
      parts = data.subset(np.arange(half)), data.subset(np.arange(half, data.num_samples))
    else:
      parts = SETS[name](0), SETS[name](1)
    for part, path in zip(parts, paths):
      save_npz(part, path)
  return paths


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True)
  parser.add_argument("--sets", default="sines,stocklike")
  args = parser.parse_args()
  for name in args.sets.split(","):
    print(*write(name, args.out))
