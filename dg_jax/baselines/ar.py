"""Nonlinear auto-regressive baseline (§5.1.2, Appendix B): R_t = f(A, R_{t-1}, ..., R_{t-p}), f an MLP."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from dg_jax.baselines.next_record import NextRecordBaseline, shift_right
from dg_jax.models.doppelganger import MLP


@dataclasses.dataclass(frozen=True)
class ARConfig:
  order: int = 3                  # p: records the MLP sees
  num_layers: int = 4             # hidden layers of the MLP
  num_units: int = 200
  noise_scale: float = 1.0        # generation noise, in units of the residual std (0 = none)
  sample_discrete: bool = True    # draw categorical blocks and flags from the softmax (False: argmax)

  def __post_init__(self):
    if self.order < 1 or self.num_layers < 0 or self.num_units < 1 or self.noise_scale < 0:
      raise ValueError(f"baseline.ar: need order >= 1, num_layers >= 0, num_units >= 1, noise_scale >= 0; got {self}")


class ARNet(nn.Module):
  """The MLP on [meta ++ R_{t-1} ++ ... ++ R_{t-p}] (records before the start are zeros)."""
  order: int
  num_layers: int
  num_units: int
  record_dim: int

  def setup(self):
    self.mlp = MLP(self.num_layers, self.num_units, self.record_dim)

  def teacher_forced(self, meta, prev):
    """All steps at once: prev [B, T, F] holds R_{t-1} at t; lags are further shifts of it."""
    lags = [shift_right(prev, k) for k in range(self.order)]
    meta = jnp.broadcast_to(meta[:, None], (meta.shape[0], prev.shape[1], meta.shape[1]))
    return self.mlp(jnp.concatenate([meta] + lags, axis=-1))

  def step(self, window, meta, record):
    """window [B, p, F]: R_{t-2}, ..., R_{t-p-1}, newest first; record: R_{t-1}."""
    window = jnp.concatenate([record[:, None], window[:, :-1]], axis=1)
    return window, self.mlp(jnp.concatenate([meta, window.reshape(window.shape[0], -1)], axis=-1))


class ARBaseline(NextRecordBaseline):
  name = "ar"
  hp_class = ARConfig

  @classmethod
  def _net(cls, hp: ARConfig, record_dim: int) -> ARNet:
    return ARNet(hp.order, hp.num_layers, hp.num_units, record_dim)

  @classmethod
  def _initial_state(cls, hp: ARConfig, batch_size: int, record_dim: int):
    return jnp.zeros((batch_size, hp.order, record_dim))
