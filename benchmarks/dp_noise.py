"""How much noise DP-BandMF (privacy.bands, with jax-privacy's strategy) saves against DP-SGD at the same
epsilon, by jax-privacy's analysis for linear SGD (issue 20; measured with Adam: experiments/dp_pretrain.py --bands).

For n training series, batches of B and T steps, prints per epsilon: the noise multiplier dg_jax
calibrates today (RDP accountant, batches drawn without replacement, replace-one neighbours), and,
within jax-privacy's own analysis (PLD accountant, zero-out neighbours, Poisson sampling), the noise
multiplier and the RMS noise of the running gradient sum (the prefix-sum workload that matrix-
factorisation mechanisms minimise) of amplified banded matrix factorisation with b bands, relative to
DP-SGD (b = 1) at the same expected batch size:

  .venv/bin/python benchmarks/dp_noise.py --steps=1000
"""
from __future__ import annotations

import argparse

import common  # noqa: F401  (puts the repository on sys.path)

from dg_jax.privacy import calibrate_noise, default_delta


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--num_examples", type=int, default=20_000)
  p.add_argument("--batch_size", type=int, default=100)
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--epsilons", default="1,4,10")
  p.add_argument("--bands", default="1,2,4,8,16,32,64")
  args = p.parse_args()
  import dp_accounting
  import jax.numpy as jnp
  from jax_privacy.experimental.accounting import amplified_bandmf_event
  from jax_privacy.matrix_factorization import toeplitz
  n, batch, steps = args.num_examples, args.batch_size, args.steps
  delta = default_delta(n)
  print(f"n={n} B={batch} T={steps} delta={delta:.3g}")
  for eps in (float(e) for e in args.epsilons.split(",")):
    ours = calibrate_noise(n, batch, 1, steps, eps, delta)
    cells, base = [f"epsilon {eps:g}: dg_jax noise {ours:.3f}"], None
    for b in (int(b) for b in args.bands.split(",")):
      accountant = lambda: dp_accounting.pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_SPECIAL)  # noqa: E731
      event = lambda s: amplified_bandmf_event(s, steps, num_bands=b, sampling_prob=min(1.0, batch * b / n))  # noqa: E731
      sigma = dp_accounting.calibrate_dp_mechanism(accountant, event, eps, delta)
      coef = jnp.ones(1) if b == 1 else toeplitz.optimize_banded_toeplitz(n=steps, bands=b, max_optimizer_steps=300)
      error = sigma * float(jnp.sqrt(jnp.mean(toeplitz.per_query_error(strategy_coef=coef, n=steps))
                                     * toeplitz.sensitivity_squared(coef, steps)))
      base = base or error
      cells.append(f"b={b}: noise {sigma:.3f}, sum RMS {error / base:.2f}x")
    print(" | ".join(cells), flush=True)


if __name__ == "__main__":
  main()
