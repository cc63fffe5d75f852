"""Training steps/s without privacy, with DP-SGD on fixed-size batches and on Poisson-sampled ones, and
with DP-BandMF (8 bands, cyclic Poisson sampling).

The default config on demo traffic (20,000 series x 550 days, as the private set of
experiments/dp_pretrain.py), batch 100, noise multiplier 1 (the speed does not depend on it); Poisson
batches hold the capacity dg_jax chooses for this n, B, noise and step count.
Each variant runs --steps steps in its own launch.py process, the variants alternate --repeats times,
and the median steps/s of each run's second half (compilation excluded) is printed.

  python benchmarks/dp_speed.py [--steps 100] [--repeats 3] [--variants "dp poisson,dp bandmf 8"]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from common import launch

VARIANTS = {
    "non-private": [],
    "dp fixed": ["--config.privacy.enabled=True", "--config.privacy.noise_multiplier=1"],
    "dp poisson": ["--config.privacy.enabled=True", "--config.privacy.noise_multiplier=1",
                   "--config.privacy.sampling=poisson"],
    "dp bandmf 8": ["--config.privacy.enabled=True", "--config.privacy.noise_multiplier=1",
                    "--config.privacy.sampling=poisson", "--config.privacy.bands=8"],
}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS to run")
  args = p.parse_args()
  variants = {name: VARIANTS[name] for name in args.variants.split(",")}
  from dg_jax.data.demo import make_demo
  from dg_jax.data.npz_format import save_npz
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "demo.npz")
    save_npz(make_demo(20_000, 550, seed=0), data)
    rates, capacity = {name: [] for name in variants}, {}
    for r in range(args.repeats):
      for name, flags in variants.items():
        workdir = os.path.join(tmp, f"{name.replace(' ', '_')}_{r}")
        launch("--config=configs/default.py", f"--workdir={workdir}", f"--config.data.path={data}",
               f"--config.train.num_steps={args.steps}", f"--config.train.log_every={args.steps // 2}",
               "--config.privacy.secret_seed=False", *flags)
        with open(os.path.join(workdir, "metrics.jsonl")) as fh:
          rates[name].append(json.loads(fh.read().strip().splitlines()[-1])["steps_per_s"])
        with open(os.path.join(workdir, "config.json")) as fh:
          capacity[name] = json.load(fh)["privacy"].get("capacity")
        print(f"{name} run {r}: {rates[name][-1]:.2f} steps/s", flush=True)
  base = statistics.median(rates[next(iter(rates))])
  print(f"\n| variant | steps/s (median of {args.repeats}) | time per step vs {next(iter(rates))} |\n| --- | --- | --- |")
  for name, values in rates.items():
    median = statistics.median(values)
    print(f"| {name}{f' (capacity {capacity[name]})' if capacity[name] else ''} | {median:.2f} | {base / median:.2f}x |")


if __name__ == "__main__":
  main()
