"""Membership inference: the attack's success rate (known answers) and critic scores of a tiny run."""
import jax
import numpy as np
import pytest

from configs import tiny
from dg_jax.data.loaders import load_dataset
from dg_jax.data.npz_format import save_npz
from dg_jax.data.schema import DataError
from dg_jax.evaluation.membership import attack_success_rate, critic_scores, membership_inference
from dg_jax.data import encoding
from dg_jax.models.doppelganger import Critic, DoppelGANger
from dg_jax.sampling import restore_run
from dg_jax.settings import model_config
from dg_jax.train import fit_schema_from_config, train_and_evaluate
from dg_jax.train_step import replica


def test_attack_success_rate_known_answers():
  assert attack_success_rate([5, 4, 3], [2, 1, 0]) == 1.0   # members score higher: every call right
  assert attack_success_rate([0, 1], [2, 3]) == 0.0         # the reverse: every call wrong
  assert attack_success_rate([1, 1, 1], [1, 1, 1]) == 0.5   # a critic that cannot tell: random guessing
  assert attack_success_rate([3, 1], [2, 0]) == 0.5         # calls 3 and 2: one member, one non-member
  # Cut at 1, tied between a member and a non-member: one call left for the two, half a hit expected.
  assert attack_success_rate([2, 1], [1, 0]) == 0.75
  assert attack_success_rate([5], [1, 2, 3]) == 1.0         # one member among four candidates, found
  assert attack_success_rate([2], [1, 3, 0]) == 0.5         # 3 called member: 1 wrong call + 1 missed of 4
  with pytest.raises(ValueError, match="needs members and non-members"):
    attack_success_rate([], [1.0])
  with pytest.raises(ValueError, match="finite"):
    attack_success_rate([np.nan], [1.0])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  c = tiny.get_config()
  c.train.num_steps = 5
  c.num_devices = 1  # compiles in half the time of the 8 virtual devices
  train_and_evaluate(c, workdir)
  return workdir, load_dataset(c.data)


def test_critic_scores_of_a_trained_run(run):
  workdir, data = run
  scores = critic_scores(workdir, data)
  assert scores.shape == (data.num_samples,) and np.isfinite(scores).all()
  assert np.unique(scores).size > 1
  np.testing.assert_array_equal(critic_scores(workdir, data), scores)  # deterministic
  model, state, _ = restore_run(workdir)
  np.testing.assert_allclose(critic_scores((model, replica(state, 0)["params"]), data, batch_size=7), scores, rtol=1e-5,
                             atol=1e-6)  # batching does not change a sample's score
  np.testing.assert_allclose(critic_scores(workdir, data.subset(np.arange(3, 10))), scores[3:10], rtol=1e-5,
                             atol=1e-6)  # nor does the company it keeps
  with_aux = critic_scores(workdir, data, include_aux=True)
  assert not np.allclose(with_aux, scores)
  with pytest.raises(DataError, match="do not match the schema"):
    critic_scores(workdir, data.__class__(data.features[..., :1], data.lengths, data.attributes,
                                          data.feature_vars[:1], data.attribute_vars))


def test_an_overfit_critic_gives_members_away_and_a_fresh_one_does_not(tmp_path):
  """16 training series, the whole set in every batch for 2000 steps: the critic learns them. Against
  three sets of 16 unseen series from the same distribution the attack is clearly above chance (0.5);
  critics that never trained are not."""
  c = tiny.get_config()
  data = load_dataset(c.data)
  members, unseen = data.subset(np.arange(16)), data.subset(np.arange(16, 64))
  save_npz(members, str(tmp_path / "members.npz"))
  c.data.format, c.data.path = "npz", str(tmp_path / "members.npz")
  # the same training in 20 dispatches, not 400: tiny steps cost little more than their round trips
  c.train.update(num_steps=2000, checkpoint_every=2000, log_every=2000, steps_per_dispatch=100)
  c.num_devices = 1
  train_and_evaluate(c, str(tmp_path / "w"))
  def rate(run, k):
    out = membership_inference(run, members, unseen.subset(np.arange(16 * k, 16 * k + 16)))
    assert set(out) == {"membership/success_rate"}
    return out["membership/success_rate"]
  trained = [rate(str(tmp_path / "w"), k) for k in range(3)]
  model = DoppelGANger(fit_schema_from_config(members, c), model_config(c))
  fresh = [rate(run, k) for run in [(model, model.init(jax.random.key(s))) for s in range(3)] for k in range(3)]
  assert np.mean(trained) > 0.75 and min(trained) > 0.6, trained
  assert 0.3 < np.mean(fresh) < 0.65, fresh


def test_packed_critic_scores_each_sample_as_copies_of_itself(run):
  _, data = run
  c = tiny.get_config()
  c.model.pack = 2
  c.model.aux_critic = False
  model = DoppelGANger(fit_schema_from_config(data, c), model_config(c))
  params = model.init(jax.random.key(0))
  scores = critic_scores((model, params), data.subset(np.arange(5)))
  enc = encoding.encode(data.subset(np.arange(5)), model.schema)
  x = model.flatten(dict(features=enc.features, attributes=enc.attributes,
                         additional_attributes=enc.additional_attributes))
  unpacked = Critic(model.cfg.critic_num_layers, model.cfg.critic_num_units, pack=1)
  direct = unpacked.apply(params["critic"], np.concatenate([x, x], axis=1))  # one row = [x_i, x_i]
  np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="no critic"):
    critic_scores((model, {"generator": params["generator"]}), data)
