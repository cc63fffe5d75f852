"""Replica-steps/s of K seeds trained as one program (train.num_seeds), K = 1, 2, 4, 8 by default, with
the data on device and host-fed (train.data_placement).

The paper's settings on the WWT-shaped input (benchmarks/train_speed.py's: 1000 x 550 x 1, S=10), batch
100 per replica; each (K, placement) runs in a fresh process with one virtual CPU device per core, as
launch.py trains (the mesh is ('seeds', 'data') = (gcd(K, devices), devices / that)), and dispatches as
train.py does (each dispatch's metrics read while the next one runs). Compile time (the first dispatch)
is excluded. Printed: medians over --repeats rounds in which the cases alternate; the FLOP rate each
sustains against this machine's float32 matmul rate (the ceiling a vectorised K meets); and the host
CPU time per step: the CPU time of the Python thread that builds and dispatches the batches (XLA
computes on threads of its own), i.e. what the host spends that the devices wait on.

  python benchmarks/seeds_speed.py [--seeds 1,2,4,8] [--placements device,host] [--repeats 3] [--steps 60]
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


def worker(path: str, num_seeds: int, steps: int, placement: str) -> dict:
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
  trainer = Trainer(model, tc, encoding.encode(data, schema), num_seeds, placement=placement)
  start = time.perf_counter()
  trainer.dispatch()
  trainer.finish()
  compile_s = time.perf_counter() - start
  start, host = time.perf_counter(), time.thread_time()
  for _ in range(steps // trainer.k):
    trainer.dispatch()
  trainer.finish()
  done = steps // trainer.k * trainer.k
  rate = done / (time.perf_counter() - start)
  out = dict(num_seeds=num_seeds, placement=trainer.feed.placement, steps_per_s=rate,
             replica_steps_per_s=num_seeds * rate, compile_s=compile_s, mesh=dict(trainer.mesh.shape),
             host_ms_per_step=1e3 * (time.thread_time() - host) / done)
  if num_seeds == 1:
    out.update(arithmetic(model, tc, trainer))
  return out


def measure(path: str, num_seeds: int, steps: int, placement: str) -> dict:
  out = subprocess.run([sys.executable, __file__, "--_worker", path, str(num_seeds), str(steps), placement],
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seeds", default="1,2,4,8", help="the K values, comma-separated")
  p.add_argument("--placements", default="device,host", help="train.data_placement values, comma-separated")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=60, help="timed training steps per measurement (all K replicas)")
  args = p.parse_args()
  import numpy as np
  from train_speed import make_wwt
  cases = [(k, placement) for placement in args.placements.split(",") for k in map(int, args.seeds.split(","))]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "wwt.npz")
    make_wwt(path)
    results = {case: [] for case in cases}
    for r in range(args.repeats):  # alternate the cases, reversing the order every other round
      for case in (cases if r % 2 == 0 else cases[::-1]):
        results[case].append(measure(path, case[0], args.steps, case[1]))
  base = next(x for x in results[cases[0]] if "train_gflop_per_step" in x)
  gflop, peak = base["train_gflop_per_step"], base["matmul_gflop_per_s"]
  median = lambda case, name: float(np.median([x[name] for x in results[case]]))  # noqa: E731
  print(f"WWT-shaped input (1000 x 550, S=10), batch 100 per replica; medians of {args.repeats} alternating runs")
  print(f"one replica-step: {gflop:.2f} GFLOP; this machine's float32 2048x2048 matmul: {peak:.0f} GFLOP/s")
  print(f"{'K':>3} {'data':>7} {'mesh (seeds, data)':>19} {'steps/s':>8} {'replica-steps/s':>16} {'vs K=1':>7} "
        f"{'GFLOP/s':>8} {'of matmul':>10} {'host ms/step':>13} {'compile s':>10}")
  for case in cases:
    k, placement = case
    rate = median(case, "replica_steps_per_s")
    one = median((1, placement), "replica_steps_per_s") if (1, placement) in results else float("nan")
    mesh = results[case][0]["mesh"]
    print(f"{k:>3} {placement:>7} {str((mesh['seeds'], mesh['data'])):>19} {rate / k:8.2f} {rate:16.2f} "
          f"{rate / one:6.2f}x {rate * gflop:8.0f} {rate * gflop / peak:10.0%} "
          f"{median(case, 'host_ms_per_step'):13.2f} {median(case, 'compile_s'):10.1f}")


if __name__ == "__main__":
  if sys.argv[1:2] == ["--_worker"]:
    print(json.dumps(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
  else:
    main()
