"""RNN baseline (§5.1.2, Appendix B): a 1-layer LSTM fed [A, R_{t-1}] at every step, predicting R_t."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dg_jax.baselines.next_record import NextRecordBaseline


@dataclasses.dataclass(frozen=True)
class RNNConfig:
  num_units: int = 100            # LSTM units
  noise_scale: float = 1.0        # generation noise, in units of the residual std (0 = none)
  sample_discrete: bool = True    # draw categorical blocks and flags from the softmax (False: argmax)

  def __post_init__(self):
    if self.num_units < 1 or self.noise_scale < 0:
      raise ValueError(f"baseline.rnn: need num_units >= 1 and noise_scale >= 0; got {self}")


def lstm_cell(w_hh: jax.Array, carry, x_proj: jax.Array):
  """One LSTM step given the input's projection x_proj [B, 4H]; carry = (h, c)."""
  h, c = carry
  i, f, g, o = jnp.split(x_proj + h @ w_hh, 4, axis=-1)
  c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)  # +1: the usual forget bias
  h = jax.nn.sigmoid(o) * jnp.tanh(c)
  return (h, c), h


class LSTMNet(nn.Module):
  """Input projection (with bias) and output head outside the time loop; the loop is the recurrence."""
  num_units: int
  record_dim: int

  def setup(self):
    self.input = nn.Dense(4 * self.num_units)
    self.w_hh = self.param("w_hh", nn.initializers.orthogonal(), (self.num_units, 4 * self.num_units))
    self.head = nn.Dense(self.record_dim)

  def teacher_forced(self, meta, prev):
    b, t, _ = prev.shape
    meta = jnp.broadcast_to(meta[:, None], (b, t, meta.shape[1]))
    x = jnp.swapaxes(self.input(jnp.concatenate([meta, prev], axis=-1)), 0, 1)  # [T, B, 4H]
    zeros = jnp.zeros((b, self.num_units), x.dtype)
    w_hh = self.w_hh
    _, hs = jax.lax.scan(lambda carry, x_t: lstm_cell(w_hh, carry, x_t), (zeros, zeros), x)
    return self.head(jnp.swapaxes(hs, 0, 1))

  def step(self, carry, meta, record):
    carry, h = lstm_cell(self.w_hh, carry, self.input(jnp.concatenate([meta, record], axis=-1)))
    return carry, self.head(h)


class RNNBaseline(NextRecordBaseline):
  name = "rnn"
  hp_class = RNNConfig

  @classmethod
  def _net(cls, hp: RNNConfig, record_dim: int) -> LSTMNet:
    return LSTMNet(hp.num_units, record_dim)

  @classmethod
  def _initial_state(cls, hp: RNNConfig, batch_size: int, record_dim: int):
    zeros = jnp.zeros((batch_size, hp.num_units))
    return zeros, zeros
