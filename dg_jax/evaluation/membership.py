"""Membership inference (§6.2, Figure 15): the white-box attack of LOGAN [53].

The attacker scores candidate samples with the trained critic (higher = "looks real" = more likely seen
in training) and calls the top-scoring ones members. With as many members as non-members among the
candidates, the success rate (fraction of correct calls) is 0.5 for random guessing and 1 for a model
that gives itself away completely.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dg_jax.data import encoding
from dg_jax.data.schema import Dataset
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.train_step import critic_fns, critic_params


def attack_success_rate(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
  """Fraction of correct calls when the len(member_scores) top-scoring candidates are called members.

  Ties at the cut are broken at random and the expected rate is returned, so equal scores give 0.5.
  """
  m, o = np.asarray(member_scores, np.float64).ravel(), np.asarray(nonmember_scores, np.float64).ravel()
  if m.size == 0 or o.size == 0:
    raise ValueError(f"attack_success_rate: needs members and non-members, got {m.size} and {o.size}")
  if not (np.isfinite(m).all() and np.isfinite(o).all()):
    raise ValueError("attack_success_rate: scores must be finite")
  scores = np.concatenate([m, o])
  cut = np.sort(scores)[::-1][m.size - 1]  # the lowest score still called a member
  slots = m.size - np.sum(scores > cut)  # member calls left for the candidates tied at the cut
  tied_members, tied = np.sum(m == cut), np.sum(scores == cut)
  hits = np.sum(m > cut) + slots * tied_members / tied  # members called members (expected)
  # m.size calls of "member": the rest of them hit non-members; the other non-members are hits too.
  return float((2 * hits + o.size - m.size) / scores.size)


def _model_and_params(run: str | tuple[DoppelGANger, dict]) -> tuple[DoppelGANger, dict]:
  if isinstance(run, str):
    from dg_jax.sampling import restore_run
    from dg_jax.train_step import replica
    model, state, _ = restore_run(run)
    return model, replica(state, 0)["params"]  # replica 0 of a train.num_seeds run
  return run


def critic_scores(run: str | tuple[DoppelGANger, dict], dataset: Dataset, include_aux: bool = False,
                  batch_size: int = 1024) -> np.ndarray:
  """[n] critic scores of `dataset`'s samples, encoded with the run's schema.

  run: a training workdir (its latest checkpoint) or (model, params) with the critics' params.
  include_aux: add the other critics' weighted scores (auxiliary, step), as the generator's loss does.
  With PacGAN packing, each sample is scored as a pack of `pack` copies of itself.
  """
  model, params = _model_and_params(run)
  if "critic" not in params:
    raise ValueError("critic_scores: params hold no critic (a generator-only bundle cannot be attacked "
                     "this way; pass a training workdir)")
  if batch_size < 1:
    raise ValueError(f"critic_scores: batch_size must be >= 1, got {batch_size}")
  enc = encoding.encode(dataset, model.schema)  # checks variables, categories and T
  d_params = critic_params(params)
  arrays = (enc.features, enc.attributes, enc.additional_attributes)
  parts = [np.asarray(_score(model, include_aux, d_params, *(a[s:s + batch_size] for a in arrays)))
           for s in range(0, enc.num_samples, batch_size)]
  return np.concatenate(parts).astype(np.float64)


@functools.partial(jax.jit, static_argnums=(0, 1))  # compiled once per model, not once per call
def _score(model: DoppelGANger, include_aux: bool, d_params, features, attributes, additional):
  x = model.flatten(dict(features=features, attributes=attributes, additional_attributes=additional))
  x = jnp.repeat(x, model.cfg.pack, axis=0)  # each critic row: `pack` copies of one sample
  return sum(weight * fn(view(x)) for weight, view, fn, _ in critic_fns(model, d_params)[:None if include_aux else 1])


def membership_inference(run: str | tuple[DoppelGANger, dict], members: Dataset, nonmembers: Dataset,
                         include_aux: bool = False) -> dict[str, float]:
  """`membership/success_rate` of the critic attack on training members vs unseen real samples
  (use equally many of each, as the paper)."""
  run = _model_and_params(run)  # restore a workdir once
  rate = attack_success_rate(critic_scores(run, members, include_aux), critic_scores(run, nonmembers, include_aux))
  return {"membership/success_rate": rate}
