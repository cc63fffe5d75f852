"""Training steps/s and generation samples/s at the paper's settings, dg_jax vs gretel's DGAN.

Settings (both sides): batch 100, 1x100 LSTM, 2x100 attribute MLP, auxiliary critic, auto-normalisation,
Adam 1e-3 / 0.5, gradient penalty 10, 1 critic + 1 generator update per step; dg_jax's critics are the
paper's 4x200, gretel's its fixed 5x200. Inputs: a WWT-shaped set (1000 series x 550 steps x 1 feature,
3 categorical attributes of 9/3/2 categories, S=10) and MBA (600 x 56 x 2, attributes of 15/5/53
categories, automatic S=1, which gretel needs to divide T as well). The two implementations alternate
--repeats times on the same data; medians are printed. dg_jax splits the batch over one virtual CPU
device per core, as launch.py does on CPU. Also printed: XLA's FLOP counts of a step and of a generated
series, and this machine's float32 matmul rate, i.e. what a speed target asks of the hardware.

  python benchmarks/train_speed.py [--repeats 3] [--steps 200] [--skip_gretel]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from common import SHARED_DATA  # noqa: E402  (puts the repository on sys.path)


def make_wwt(path: str, seed: int = 0) -> None:
  """The WWT-shaped set: 1000 series x 550 daily steps of page views (weekly and yearly cycles, levels
  spanning orders of magnitude, no log1p flag), 3 categorical attributes of 9/3/2 categories."""
  import numpy as np
  from dg_jax.data.npz_format import save_npz
  from dg_jax.data.schema import Dataset, categorical, continuous
  rng = np.random.default_rng(seed)
  n, t = 1000, 550
  day = np.arange(t)[None, :]
  level = rng.lognormal(5, 2, (n, 1))
  views = level * (1 + 0.3 * np.sin(2 * np.pi * day / 7) + 0.3 * np.sin(2 * np.pi * day / 365)) \
      * rng.lognormal(0, 0.3, (n, t))
  attrs = np.stack([rng.integers(0, 9, n), rng.integers(0, 3, n), rng.integers(0, 2, n)], 1).astype(float)
  save_npz(Dataset(views[..., None].astype(np.float32), np.full(n, t), attrs, (continuous("views"),),
                   (categorical("domain", range(9)), categorical("access", range(3)), categorical("agent", range(2)))),
           path)


def make_inputs(directory: str) -> dict:
  from dg_jax.data.dg_format import load_dg_folder
  from dg_jax.data.npz_format import save_npz
  paths = dict(wwt=(os.path.join(directory, "wwt.npz"), 10), mba=(os.path.join(directory, "mba.npz"), 1))
  make_wwt(paths["wwt"][0])
  save_npz(load_dg_folder(os.path.join(SHARED_DATA, "mba")), paths["mba"][0])
  return paths


def measure_dg_jax(path: str, sample_len: int, steps: int, num_generate: int) -> dict:
  """Runs in a fresh process so that its CPU device count is set before JAX starts."""
  out = subprocess.run([sys.executable, __file__, "--_dg_jax_worker", path, str(sample_len), str(steps),
                        str(num_generate)], capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  import json
  return json.loads(out.stdout.strip().splitlines()[-1])


def dg_jax_worker(path: str, sample_len: int, steps: int, num_generate: int) -> None:
  import json
  import time
  import jax
  jax.config.update("jax_num_cpu_devices", os.cpu_count())
  from dg_jax.data import encoding
  from dg_jax.data.npz_format import load_npz
  from dg_jax.models.doppelganger import DoppelGANger
  from dg_jax.sampling import generate, generate_encoded
  from dg_jax.settings import ModelConfig, TrainConfig
  from common import Trainer
  from dg_jax.train_step import replica

  data = load_npz(path)
  schema = encoding.fit_schema(data)
  enc = encoding.encode(data, schema)
  model, tc = DoppelGANger(schema, ModelConfig(sample_len=sample_len)), TrainConfig()
  trainer = Trainer(model, tc, enc)
  k = tc.steps_per_dispatch

  def run(num):
    for _ in range(num // k):
      trainer.dispatch()
    trainer.finish()
  start = time.perf_counter()
  run(k)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  run(steps)
  train_rate = steps // k * k / (time.perf_counter() - start)
  compiles = trainer.step._cache_size()  # 1: the step never recompiled after its first call
  state = replica(jax.device_get(trainer.state), 0)
  params = state["params"]["generator"]
  flops = arithmetic(model, tc, trainer)
  generate_encoded(model, params, 1000, chunk_size=1000)  # compile
  start = time.perf_counter()
  generate_encoded(model, params, num_generate, chunk_size=1000)
  net_rate = num_generate / (time.perf_counter() - start)
  start = time.perf_counter()
  generate(model, params, num_generate, chunk_size=1000)
  e2e_rate = num_generate / (time.perf_counter() - start)
  print(json.dumps(dict(train_steps_per_s=train_rate, compile_s=compile_s, step_compilations=compiles,
                        generate_samples_per_s=e2e_rate, generate_net_samples_per_s=net_rate,
                        devices=jax.device_count(), **flops)))


def arithmetic(model, tc, trainer) -> dict:
  """XLA's FLOP count of one training step (global batch) and of one generated series, and this
  machine's float32 matmul rate: what a speed target asks of the hardware.

  Counted on the lowered, unoptimised program with the LSTM loop fully unrolled (a loop body
  counts once); the compiled program does slightly more (3.23 vs 2.81 GFLOP per WWT step).
  """
  import time
  import jax
  import jax.numpy as jnp
  import numpy as np
  from dg_jax import sharding
  from dg_jax.models.doppelganger import DoppelGANger, num_rollout_steps, sample_noise
  from dg_jax.train_step import make_train_step, replica
  unrolled = DoppelGANger(model.schema, model.cfg, unroll=num_rollout_steps(model.schema.max_length, model.sample_len))
  mesh = sharding.make_mesh(1)
  step = jax.jit(make_train_step(unrolled, tc, mesh))
  one_batch = sharding.shard_batches(trainer.host_batches(1), mesh)
  single, keys = jax.device_put((trainer.state, trainer.keys), sharding.replicated(mesh))
  train_flops = step.lower(single, one_batch, keys).cost_analysis()["flops"]
  n = 100
  noise = sample_noise(keys[0], n, model.schema, model.cfg)
  gen = jax.jit(unrolled.generator.apply).lower(replica(single, 0)["params"]["generator"], noise)
  a = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  times = []
  for _ in range(5):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return dict(train_gflop_per_step=train_flops / 1e9, generate_mflop_per_series=gen.cost_analysis()["flops"] / n / 1e6,
              matmul_gflop_per_s=2 * 2048 ** 3 / np.median(times) / 1e9)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=200, help="timed training steps per measurement")
  p.add_argument("--num_generate", type=int, default=5000)
  p.add_argument("--skip_gretel", action="store_true")
  args = p.parse_args()
  import numpy as np
  from gretel_env import run_in_gretel
  with tempfile.TemporaryDirectory() as tmp:
    inputs = make_inputs(tmp)
    for name, (path, s) in inputs.items():
      results = {"dg_jax": [], "gretel": []}
      for _ in range(args.repeats):  # alternate the two implementations
        results["dg_jax"].append(measure_dg_jax(path, s, args.steps, args.num_generate))
        if not args.skip_gretel:
          results["gretel"].append(run_in_gretel(
              ["--input", path, "--mode", "speed", "--sample-len", str(s), "--steps", str(args.steps),
               "--num-generate", str(args.num_generate)], echo_stderr=False))
      print(f"\n{name} (S={s}): medians of {args.repeats} alternating runs")
      med = {impl: {k: float(np.median([r[k] for r in rs])) for k in
                    ("train_steps_per_s", "generate_samples_per_s", "generate_net_samples_per_s")}
             for impl, rs in results.items() if rs}
      for impl, m in med.items():
        print(f"  {impl:<7} train {m['train_steps_per_s']:7.2f} steps/s   generate {m['generate_samples_per_s']:9.0f} "
              f"samples/s (network only {m['generate_net_samples_per_s']:9.0f})")
      if "gretel" in med:
        r = {k: med["dg_jax"][k] / med["gretel"][k] for k in med["dg_jax"]}
        print(f"  ratio   train {r['train_steps_per_s']:.2f}x   generate {r['generate_samples_per_s']:.2f}x "
              f"(network only {r['generate_net_samples_per_s']:.2f}x)")
      first = results["dg_jax"][0]
      train_gf, gen_mf = first["train_gflop_per_step"], first["generate_mflop_per_series"]
      peak = float(np.median([x["matmul_gflop_per_s"] for x in results["dg_jax"]]))
      print(f"  arithmetic: {train_gf:.2f} GFLOP per training step, {gen_mf:.2f} MFLOP per generated series; "
            f"this machine's float32 2048x2048 matmul: {peak:.0f} GFLOP/s")
      print(f"  dg_jax sustains {med['dg_jax']['train_steps_per_s'] * train_gf:.0f} GFLOP/s training, "
            f"{med['dg_jax']['generate_net_samples_per_s'] * gen_mf / 1e3:.0f} GFLOP/s generating")
      if "gretel" in med:
        print(f"  5x gretel's training would need {5 * med['gretel']['train_steps_per_s'] * train_gf:.0f} GFLOP/s, "
              f"10x its generation {10 * med['gretel']['generate_samples_per_s'] * gen_mf / 1e3:.0f} GFLOP/s")
      print(f"  dg_jax step compilations: {[x['step_compilations'] for x in results['dg_jax']]}, "
            f"devices {results['dg_jax'][0]['devices']}, first dispatch (compile) "
            f"{np.median([x['compile_s'] for x in results['dg_jax']]):.1f}s")


if __name__ == "__main__":
  if sys.argv[1:2] == ["--_dg_jax_worker"]:
    dg_jax_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
  else:
    main()
