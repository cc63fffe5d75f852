"""WGAN-GP losses (Appendix B, eq. 1).

The gradient penalty interpolates each example with one weight t ~ U[0,1] shared by all of its
inputs (features, flags, attributes, additional attributes) and takes the gradient norm per
critic row jointly over all of them.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array,
                     t: jax.Array, pack: int = 1) -> jax.Array:
  """mean over critic rows of (||d critic / d x_hat||_2 - 1)^2 with x_hat = t*real + (1-t)*fake.

  real, fake: [B, D] flattened examples; t: [B]. With PacGAN packing, a critic row holds `pack`
  examples and its gradient norm runs over all of them.
  """
  x_hat = t[:, None] * real + (1 - t[:, None]) * fake
  grads = jax.grad(lambda x: critic(x).sum())(x_hat)
  grads = grads.reshape(grads.shape[0] // pack, -1)
  norms = jnp.sqrt(jnp.sum(grads * grads, axis=-1) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def critic_loss(critic, real, fake, t, gp_weight, pack=1):
  """Critic minimises E[D(fake)] - E[D(real)] + lambda * GP; returns (loss, wasserstein estimate)."""
  w_distance = jnp.mean(critic(real)) - jnp.mean(critic(fake))
  return -w_distance + gp_weight * gradient_penalty(critic, real, fake, t, pack), w_distance


def generator_loss(critic, fake):
  return -jnp.mean(critic(fake))
