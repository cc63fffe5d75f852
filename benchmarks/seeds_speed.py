"""Replica-steps/s of K seeds trained as one program (train.num_seeds), K = 1, 2, 4, 8 by default.

The paper's settings on the WWT-shaped input (benchmarks/train_speed.py's: 1000 x 550 x 1, S=10), batch
100 per replica; each K runs in a fresh process with one virtual CPU device per core, as launch.py
trains (the mesh is ('seeds', 'data') = (gcd(K, devices), devices / that)). Compile time (the first
dispatch) is excluded; the K values alternate over --repeats rounds and medians are printed, with the
FLOP rate each sustains against this machine's float32 matmul rate: the ceiling a vectorised K meets.

  python benchmarks/seeds_speed.py [--seeds 1,2,4,8] [--repeats 3] [--steps 60]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)


def worker(path: str, num_seeds: int, steps: int) -> dict:
  import jax
  jax.config.update("jax_num_cpu_devices", os.cpu_count())  # as launch.py does on CPU
  from common import Trainer
  from dg_jax.data import encoding
  from dg_jax.data.npz_format import load_npz
  from dg_jax.models.doppelganger import DoppelGANger
  from dg_jax.settings import ModelConfig, TrainConfig
  from train_speed import arithmetic
  data = load_npz(path)
  schema = encoding.fit_schema(data)
  model, tc = DoppelGANger(schema, ModelConfig(sample_len=10)), TrainConfig()
  trainer = Trainer(model, tc, encoding.encode(data, schema), num_seeds)
  start = time.perf_counter()
  trainer.dispatch()
  trainer.finish()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps // trainer.k):
    trainer.dispatch()
  trainer.finish()
  rate = steps // trainer.k * trainer.k / (time.perf_counter() - start)
  out = dict(num_seeds=num_seeds, steps_per_s=rate, replica_steps_per_s=num_seeds * rate, compile_s=compile_s,
             mesh=dict(trainer.mesh.shape))
  if num_seeds == 1:
    out.update(arithmetic(model, tc, trainer))
  return out


def measure(path: str, num_seeds: int, steps: int) -> dict:
  out = subprocess.run([sys.executable, __file__, "--_worker", path, str(num_seeds), str(steps)],
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seeds", default="1,2,4,8", help="the K values, comma-separated")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=60, help="timed training steps per measurement (all K replicas)")
  args = p.parse_args()
  import numpy as np
  from train_speed import make_wwt
  ks = [int(k) for k in args.seeds.split(",")]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "wwt.npz")
    make_wwt(path)
    results = {k: [] for k in ks}
    for r in range(args.repeats):  # alternate the K values, reversing the order every other round
      for k in (ks if r % 2 == 0 else ks[::-1]):
        results[k].append(measure(path, k, args.steps))
  base = results[ks[0]][0]
  gflop, peak = base.get("train_gflop_per_step"), base.get("matmul_gflop_per_s")
  one = float(np.median([x["replica_steps_per_s"] for x in results[ks[0]]]))
  print(f"WWT-shaped input (1000 x 550, S=10), batch 100 per replica; medians of {args.repeats} alternating runs")
  if gflop:
    print(f"one replica-step: {gflop:.2f} GFLOP; this machine's float32 2048x2048 matmul: {peak:.0f} GFLOP/s")
  print(f"{'K':>3} {'mesh (seeds, data)':>19} {'steps/s':>8} {'replica-steps/s':>16} {'vs K=' + str(ks[0]):>8} "
        f"{'GFLOP/s':>8} {'of matmul':>10} {'compile s':>10}")
  for k in ks:
    rate = float(np.median([x["replica_steps_per_s"] for x in results[k]]))
    mesh = results[k][0]["mesh"]
    flops = f"{rate * gflop:8.0f} {rate * gflop / peak:10.0%}" if gflop else ""
    print(f"{k:>3} {str((mesh['seeds'], mesh['data'])):>19} {rate / k:8.2f} {rate:16.2f} {rate / one:7.2f}x {flops} "
          f"{np.median([x['compile_s'] for x in results[k]]):10.1f}")


if __name__ == "__main__":
  if sys.argv[1:2] == ["--_worker"]:
    print(json.dumps(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
  else:
    main()
