"""Streamed generation to shards vs in-memory generation: samples/s and peak memory, side by side.

A WWT-shaped generator (benchmarks/train_speed.py's set: 550 steps, 1 feature, 3 categorical attributes,
S=10; its initial weights: generation costs the same trained or not) generates N series of one seed
  memory   sampling.generate + one npz file (what --output=F.npz does), N = each --sizes value
  parquet  shards.generate_to_shards to DIR.parquet (--output=DIR.parquet), 8192 series per shard
  npz      the same into PATH-{shard}.npz
Each case runs in a fresh process (its own peak RSS, one virtual CPU device per core, as launch.py);
the cases alternate over --repeats rounds and medians are printed. A last check reads the Parquet
shards of the smallest size back with pandas and compares them with the in-memory result.

  python benchmarks/generate_shards.py [--sizes 20000,100000] [--repeats 2] [--cases memory,parquet,npz]
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

CASES = ("memory", "parquet", "npz")


def make_bundle(directory: str) -> str:
  import jax
  from configs import default
  from dg_jax.checkpoints import save_bundle
  from dg_jax.data import encoding
  from dg_jax.data.npz_format import load_npz
  from dg_jax.models.doppelganger import DoppelGANger
  from dg_jax.settings import model_config, train_config
  from dg_jax.train_step import init_state
  from train_speed import make_wwt
  make_wwt(os.path.join(directory, "wwt.npz"))
  config = default.get_config()
  config.model.sample_len = 10
  schema = encoding.fit_schema(load_npz(os.path.join(directory, "wwt.npz")))
  model = DoppelGANger(schema, model_config(config))
  state, _ = init_state(model, train_config(config), 0)
  bundle = os.path.join(directory, "bundle")
  save_bundle(bundle, jax.device_get(state["params"]["generator"]), schema, config.to_json())
  return bundle


def worker(case: str, bundle: str, num: int, out: str) -> dict:
  import jax
  jax.config.update("jax_num_cpu_devices", os.cpu_count())
  from dg_jax import sampling, shards
  model, params, _ = sampling.load_generator(bundle=bundle)
  for local in (False, True):  # compile both chunk programs (all devices; this process's) outside the timing
    sampling.generate_encoded(model, params, 512, chunk_size=512, local=local)
  start = time.perf_counter()
  if case == "memory":
    sampling.write_outputs(sampling.generate(model, params, num, seed=1), out + ".npz")
  else:
    target = out + ".parquet" if case == "parquet" else out + "-{shard}.npz"
    shards.generate_to_shards(model, params, num, 1, target, dict(source=bundle))
  seconds = time.perf_counter() - start
  return dict(case=case, num=num, samples_per_s=num / seconds,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def measure(case: str, bundle: str, num: int, out: str) -> dict:
  r = subprocess.run([sys.executable, __file__, "--_worker", case, bundle, str(num), out], capture_output=True,
                     text=True)
  if r.returncode:
    raise RuntimeError(r.stderr[-3000:])
  return json.loads(r.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--sizes", default="20000,100000")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--cases", default=",".join(CASES), help="of " + ", ".join(CASES) + " (memory first, if at all)")
  args = p.parse_args()
  cases = tuple(args.cases.split(","))
  import numpy as np
  sizes = [int(s) for s in args.sizes.split(",")]
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    bundle = make_bundle(tmp)
    for r in range(args.repeats):
      for num in sizes:
        for case in (cases if r % 2 == 0 else cases[::-1]):
          out = os.path.join(tmp, f"{case}-{num}-{r}")
          results.setdefault((case, num), []).append(measure(case, bundle, num, out))
    print(f"WWT-shaped generator (550 steps, S=10), {os.cpu_count()} CPU devices; medians of {args.repeats} "
          "alternating runs, each in a fresh process")
    print(f"{'series':>8}  {'case':<8} {'series/s':>9} {'vs memory':>9} {'peak RSS MB':>12}")
    for num in sizes:
      base = np.median([x["samples_per_s"] for x in results[("memory", num)]]) if "memory" in cases else np.nan
      for case in cases:
        rate = np.median([x["samples_per_s"] for x in results[(case, num)]])
        rss = np.median([x["peak_rss_mb"] for x in results[(case, num)]])
        print(f"{num:>8}  {case:<8} {rate:>9.0f} {rate / base:>8.2f}x {rss:>12.0f}")
    import pandas as pd
    from dg_jax.data.frames import to_long_frame
    from dg_jax.data.npz_format import load_npz
    num = sizes[0]
    if not {"memory", "parquet"} <= set(cases):
      return
    memory = to_long_frame(load_npz(os.path.join(tmp, f"memory-{num}-0.npz")))
    shards = pd.read_parquet(os.path.join(tmp, f"parquet-{num}-0.parquet"))
    keys = ["id", "step", "domain", "access", "agent"]
    same = memory[keys].equals(shards[keys]) and np.allclose(memory["views"], shards["views"], rtol=1e-5)
    print(f"the Parquet shards of {num} series ({len(shards)} rows), read back with pandas, equal the in-memory "
          f"result (ids, steps and labels exactly, values to float32 rounding): {same}")


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
    print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
  else:
    main()
