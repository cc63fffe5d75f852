"""Each process its own share: peak memory of one process reading a sharded dataset whole vs two
processes reading half each (data.path=PATH-{shard}.npz, train.data_placement=sharded).

The dataset: --series series of --length records (one continuous feature with a weekly cycle, one
4-category attribute) in --shards npz files. One process with 2 CPU devices, then two processes
(gloo collectives) with one device each, train --steps steps of the default config on it, from loading
to the end; each reports its peak resident memory (JAX's own ~0.7 GB included) and the time to its
first step. Both see the same 2 blocks along 'data', so they train the same run.

  python benchmarks/host_share.py [--series 2000000] [--length 50] [--shards 8] [--steps 10]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)


def make_shards(directory: str, series: int, length: int, shards: int) -> str:
  import numpy as np
  from dg_jax.data.npz_format import save_npz
  from dg_jax.data.schema import Dataset, categorical, continuous
  per = -(-series // shards)
  for i in range(shards):
    n = min(per, series - i * per)
    rng = np.random.default_rng(i)
    t = np.arange(length, dtype=np.float32)[None, :]
    x = rng.lognormal(3, 1, (n, 1)).astype(np.float32) * (1 + 0.3 * np.sin(2 * np.pi * t / 7))
    save_npz(Dataset(x[..., None], np.full(n, length), rng.integers(0, 4, (n, 1)).astype(np.float64),
                     (continuous("value"),), (categorical("kind", ("a", "b", "c", "d")),)),
             os.path.join(directory, f"part-{i:05d}.npz"))
  return os.path.join(directory, "part-{shard}.npz")


def worker(pattern: str, workdir: str, steps: int, process: int, processes: int, port: int) -> dict:
  import jax
  if processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", processes, process)
  from configs import default
  from dg_jax.train import train_and_evaluate
  c = default.get_config()
  c.data.path, c.train.num_steps, c.train.log_every, c.train.tensorboard = pattern, steps, steps, False
  start = time.perf_counter()
  train_and_evaluate(c, workdir)
  return dict(process=process, seconds=time.perf_counter() - start,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run(pattern: str, workdir: str, steps: int, processes: int) -> list[dict]:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  devices = str(2 // processes)
  procs = [subprocess.Popen([sys.executable, __file__, "--_worker", pattern, workdir, str(steps), str(i),
                             str(processes), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_NUM_CPU_DEVICES=devices)) for i in range(processes)]
  out = []
  for p in procs:
    stdout, stderr = p.communicate()
    if p.returncode:
      raise RuntimeError(stderr[-3000:])
    out.append(json.loads(stdout.strip().splitlines()[-1]))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--series", type=int, default=2_000_000)
  p.add_argument("--length", type=int, default=50)
  p.add_argument("--shards", type=int, default=8)
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    pattern = make_shards(tmp, args.series, args.length, args.shards)
    print(f"{args.series} series x {args.length} records in {args.shards} npz shards "
          f"({sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e6:.0f} MB, written in "
          f"{time.perf_counter() - start:.0f} s); {args.steps} training steps, default config")
    one = run(pattern, os.path.join(tmp, "one"), args.steps, 1)[0]
    two = run(pattern, os.path.join(tmp, "two"), args.steps, 2)
    print(f"one process, 2 devices, all {args.shards} shards: peak RSS {one['peak_rss_mb']:.0f} MB, "
          f"{one['seconds']:.0f} s")
    for r in two:
      print(f"process {r['process']} of 2, 1 device, {args.shards // 2} shards: peak RSS {r['peak_rss_mb']:.0f} MB "
            f"({r['peak_rss_mb'] / one['peak_rss_mb']:.2f}x), {r['seconds']:.0f} s")


if __name__ == "__main__":
  if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
    print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]),
                            int(sys.argv[7]))))
  else:
    main()
