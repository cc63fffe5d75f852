"""How dg_jax scales with series length and with the number of series (default config, this machine).

Long series: 1000 synthetic daily-ish series (one continuous feature with weekly and yearly cycles,
one categorical attribute) at T = 550, 2000 and 8760 (a year of hourly readings), automatic S
(T/S near 50). Printed per T: S, compile time, training steps/s and the process's peak memory.
Many series: a WWT-sized set, 145,000 x 550 (about 320 MB of float32), written to an npz file,
then timed from loading to the end of the first training dispatch: load, schema + encoding, first
dispatch (compilation included), and the peak memory. Batches are gathered by index from the encoded
arrays each step (dg_jax/data/batching.py), so nothing is copied per epoch.

Each case runs in a fresh process (its own peak memory, its own CPU device count).

  python benchmarks/scale.py [--lengths 550,2000,8760] [--many 145000] [--steps 50]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)


def make_dataset(n: int, t: int, seed: int = 0):
  import numpy as np
  from dg_jax.data.schema import Dataset, categorical, continuous
  rng = np.random.default_rng(seed)
  hours = np.arange(t, dtype=np.float32)[None, :]
  level = rng.lognormal(3, 1, (n, 1)).astype(np.float32)
  x = level * (1 + 0.3 * np.sin(2 * np.pi * hours / 168) + 0.3 * np.sin(2 * np.pi * hours / 8760))
  x *= rng.lognormal(0, 0.2, (n, t)).astype(np.float32)
  kind = rng.integers(0, 4, n).astype(np.float64)[:, None]
  return Dataset(x[..., None].astype(np.float32), np.full(n, t), kind, (continuous("value"),),
                 (categorical("kind", ("a", "b", "c", "d")),))


def worker(case: str, path: str, steps: int) -> dict:
  import jax
  jax.config.update("jax_num_cpu_devices", os.cpu_count())  # as launch.py does on CPU
  from dg_jax.data import encoding
  from dg_jax.data.npz_format import load_npz
  from dg_jax.models.doppelganger import DoppelGANger
  from dg_jax.settings import ModelConfig, TrainConfig
  from common import Trainer

  out = {}
  start = time.perf_counter()
  data = load_npz(path)
  out["load_s"] = time.perf_counter() - start
  start = time.perf_counter()
  schema = encoding.fit_schema(data)
  enc = encoding.encode(data, schema)
  out["encode_s"] = time.perf_counter() - start
  del data
  model, tc = DoppelGANger(schema, ModelConfig()), TrainConfig()
  trainer = Trainer(model, tc, enc)
  k = tc.steps_per_dispatch
  dispatch = trainer.dispatch
  start = time.perf_counter()
  dispatch()
  trainer.finish()
  out["first_dispatch_s"] = time.perf_counter() - start
  if case == "length":
    start = time.perf_counter()
    for _ in range(steps // k):
      dispatch()
    trainer.finish()
    out["steps_per_s"] = steps // k * k / (time.perf_counter() - start)
  out.update(sample_len=model.sample_len, num_series=enc.num_samples, length=schema.max_length,
             peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  return out


def run_case(case: str, path: str, steps: int) -> dict:
  r = subprocess.run([sys.executable, __file__, "--_worker", case, path, str(steps)], capture_output=True, text=True)
  if r.returncode:
    raise RuntimeError(r.stderr[-3000:])
  return json.loads(r.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--lengths", default="550,2000,8760")
  p.add_argument("--many", type=int, default=145_000, help="series in the many-series case (0 = skip)")
  p.add_argument("--steps", type=int, default=50, help="timed training steps per length")
  p.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._worker:
    case, path, steps = args._worker
    print(json.dumps(worker(case, path, int(steps))))
    return
  from dg_jax.data.npz_format import save_npz
  with tempfile.TemporaryDirectory() as tmp:
    print("| T | S | compile + first dispatch (s) | steps/s | peak memory (MB) |\n|---|---|---|---|---|", flush=True)
    for t in (int(x) for x in args.lengths.split(",")):
      path = os.path.join(tmp, f"t{t}.npz")
      save_npz(make_dataset(1000, t), path)
      r = run_case("length", path, args.steps)
      print(f"| {t} | {r['sample_len']} | {r['first_dispatch_s']:.1f} | {r['steps_per_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} |", flush=True)
    if args.many:
      path = os.path.join(tmp, "many.npz")
      start = time.perf_counter()
      save_npz(make_dataset(args.many, 550), path)
      written = time.perf_counter() - start
      r = run_case("many", path, 0)
      print(f"\n{args.many} x 550 series (npz written in {written:.0f} s, {os.path.getsize(path) / 2**20:.0f} MB): "
            f"load {r['load_s']:.1f} s, schema + encoding {r['encode_s']:.1f} s, first dispatch "
            f"{r['first_dispatch_s']:.1f} s; peak memory {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
  main()
