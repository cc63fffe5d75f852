"""Model shapes and masks, and the WGAN-GP penalty against known answers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dg_jax import losses
from dg_jax.data import encoding
from dg_jax.data.demo import make_demo
from dg_jax.data.schema import Dataset, categorical, continuous
from dg_jax.models.doppelganger import DoppelGANger, floor_throughout, keep_mask, put_floor_series, sample_noise
from dg_jax.settings import ModelConfig, resolve_sample_len
from dg_jax.train_step import critic_fns, d_loss_fn, g_loss_fn

SMALL = ModelConfig(sample_len=4, attribute_num_units=8, additional_num_units=8, feature_num_units=8,
                    critic_num_layers=1, critic_num_units=8)


@pytest.fixture(scope="module")
def schema():
  return encoding.fit_schema(make_demo(num_samples=20, length=10, variable_lengths=True))


def test_generator_shapes_ranges_and_padding(schema):
  model = DoppelGANger(schema, SMALL)  # T=10 is not a multiple of S=4: 3 LSTM steps, cut to 10
  params = model.init(jax.random.key(0))
  noise = sample_noise(jax.random.key(1), 32, schema, SMALL)
  assert noise["feature"].shape == (3, 32, SMALL.feature_noise_dim)
  out = model.generator.apply(params["generator"], noise)
  assert out["attributes"].shape == (32, schema.attribute_dim) == (32, 5)
  assert out["additional_attributes"].shape == (32, schema.additional_dim) == (32, 4)
  assert out["features"].shape == (32, 10, schema.feature_dim) == (32, 10, 4)
  np.testing.assert_allclose(out["attributes"][:, :3].sum(-1), 1, rtol=1e-5)  # softmax blocks
  assert (out["features"] >= 0).all() and (out["features"] <= 1).all()
  assert model.flatten(out).shape == (32, 10 * 4 + 5 + 4)


def test_records_after_the_first_end_are_masked(schema):
  """Heads forced to say "ends here" at chunk positions 2 and 3 only: every series ends at record 2
  (the first "end"), whatever the noise; records 0..2 are kept, everything after is zero, flags too."""
  schema = dataclasses.replace(schema, min_length=1)  # series may end anywhere
  model = DoppelGANger(schema, SMALL)
  params = model.init(jax.random.key(0))["generator"]
  heads = params["params"]["heads"]
  bias = np.zeros((SMALL.sample_len, schema.feature_dim), np.float32)  # per chunk position, per column
  bias[:, :2] = 3.0  # feature values well inside (0, 1)
  bias[:, 2:] = [8.0, -8.0]  # continues
  bias[2:, 2:] = [-8.0, 8.0]  # ends here at positions 2 and 3 (records 2, 3, 6, 7)
  heads = dict(kernel=jnp.zeros_like(heads["kernel"]), bias=jnp.asarray(bias.reshape(-1)))
  params = dict(params, params=dict(params["params"], heads=heads))
  f = np.asarray(model.generator.apply(params, sample_noise(jax.random.key(1), 16, schema, SMALL))["features"])
  assert (f[:, :3, :2] > 0.9).all() and (f[:, :2, 2] > 0.99).all() and (f[:, 2, 3] > 0.99).all()
  assert not f[:, 3:].any()  # records 3..9 masked, although records 6 and 7 say "ends here" again
  data = encoding.decode(encoding.Encoded(np.zeros((16, schema.attribute_dim), np.float32),
                                          np.full((16, schema.additional_dim), 0.5, np.float32), f), schema)
  assert (data.lengths == 3).all()


def test_keep_mask_known_answer():
  flags = jnp.array([[[.9, .1], [.2, .8], [.9, .1], [.1, .9]],
                     [[.9, .1], [.9, .1], [.9, .1], [.9, .1]]])
  np.testing.assert_array_equal(keep_mask(flags), [[1, 1, 0, 0], [1, 1, 1, 1]])


def test_conditional_and_forced_length(schema):
  model = DoppelGANger(schema, SMALL)
  params = model.init(jax.random.key(0))["generator"]
  given = jnp.asarray(encoding.encode_attributes(np.array([[2, 1]] * 6, float), schema))
  out = model.generator.apply(params, sample_noise(jax.random.key(1), 6, schema, SMALL, 23), given, 23)
  np.testing.assert_array_equal(out["attributes"], given)
  assert out["features"].shape == (6, 23, 4)  # longer than the training T, no masking


def test_per_series_feature_noise(schema):
  """model.feature_noise="per_series": one draw per series, the same at every LSTM step; "per_step" draws afresh."""
  cfg = dataclasses.replace(SMALL, feature_noise="per_series")
  noise = np.asarray(sample_noise(jax.random.key(1), 8, schema, cfg)["feature"])
  assert noise.shape == (3, 8, cfg.feature_noise_dim) and (noise == noise[:1]).all()
  assert len(np.unique(noise[0, :, 0])) == 8
  fresh = np.asarray(sample_noise(jax.random.key(1), 8, schema, SMALL)["feature"])
  assert not np.allclose(fresh[0], fresh[1])
  with pytest.raises(ValueError, match="feature_noise"):
    ModelConfig(feature_noise="per_record")


def test_critic_sees_weighted_record_differences(schema):
  """model.critic_difference_weight=w: after the records, w times each continuous feature's difference between
  neighbouring records (categorical one-hot and flag columns have none); the metadata stays last, where the
  auxiliary critic reads it; w=0 is the paper's input."""
  cfg = dataclasses.replace(SMALL, critic_difference_weight=10.0)
  model = DoppelGANger(schema, cfg)
  out = model.generator.apply(model.init(jax.random.key(0))["generator"], sample_noise(jax.random.key(1), 4, schema, cfg))
  f, x = np.asarray(out["features"]), np.asarray(model.flatten(out))
  np.testing.assert_array_equal(model.schema.continuous_columns, [0, 1])  # the demo's two features, then the flags
  steps = 10.0 * (f[:, 1:, :2] - f[:, :-1, :2]).reshape(4, -1)
  np.testing.assert_allclose(x[:, 40:40 + steps.shape[1]], steps, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(x[:, -model.meta_dim:], np.asarray(DoppelGANger(schema, SMALL).flatten(out))[:, 40:])
  assert x.shape == (4, 10 * 4 + 9 * 2 + model.meta_dim)
  view = np.arange(16.0).reshape(4, 4)  # the schema's min/max view maps the last block, only it
  viewed_schema = dataclasses.replace(schema, min_max_view=tuple(map(tuple, view)))
  viewed = np.asarray(DoppelGANger(viewed_schema, SMALL).flatten(out))
  plain = np.asarray(DoppelGANger(schema, SMALL).flatten(out))
  np.testing.assert_array_equal(viewed[:, :-4], plain[:, :-4])
  np.testing.assert_allclose(viewed[:, -4:], plain[:, -4:] @ view, rtol=1e-5)
  mixed = Dataset(np.stack([np.tile([0.0, 2, 1], (3, 2)), np.ones((3, 6))], -1), np.full(3, 6), np.zeros((3, 0)),
                  (categorical("kind", ["a", "b", "c"]), continuous("level")), ())
  mixed_model = DoppelGANger(encoding.fit_schema(mixed), cfg)
  np.testing.assert_array_equal(mixed_model.schema.continuous_columns, [3])  # after the 3 one-hot columns
  with pytest.raises(ValueError, match="critic_difference_weight"):
    ModelConfig(critic_difference_weight=-1.0)


def test_aux_critic_sees_the_series_means_through_the_level_view(schema):
  """model.aux_critic_levels: with a fitted `level_view` the auxiliary critic sees the metadata, then each
  series' mean of each continuous feature (`series_means` of the min/max as generated, through any view the
  critics have of them) mapped by it, and its gradient reaches the records; without one, the metadata only."""
  model = DoppelGANger(schema, SMALL)
  noise = sample_noise(jax.random.key(1), 4, schema, SMALL)
  out = model.generator.apply(model.init(jax.random.key(0))["generator"], noise)
  x = model.flatten(out)
  np.testing.assert_array_equal(model.aux_view(x), x[:, -model.meta_dim:])
  means = encoding.series_means(np.asarray(out["features"]), np.asarray(out["additional_attributes"]), schema)
  level = np.array([[2.0, 1.0], [0.0, 3.0]])
  for min_max_view in ((), tuple(map(tuple, 2 * np.eye(4)))):
    views = dict(level_view=tuple(map(tuple, level)), min_max_view=min_max_view)
    tied = DoppelGANger(dataclasses.replace(schema, **views), SMALL)
    seen = np.asarray(tied.aux_view(tied.flatten(out)))
    np.testing.assert_array_equal(seen[:, :-2], np.asarray(tied.flatten(out))[:, -model.meta_dim:])
    np.testing.assert_allclose(seen[:, -2:], means @ level, rtol=1e-5, atol=1e-6)
  kernel = tied.init(jax.random.key(0))["aux_critic"]["params"]["MLP_0"]["Dense_0"]["kernel"]
  assert kernel.shape[0] == model.meta_dim + 2
  grad = jax.grad(lambda f: tied.aux_view(tied.flatten(dict(out, features=f)))[:, -2:].sum())(out["features"])
  kept = np.asarray(out["features"][..., -2:].sum(-1)) > 0
  assert (np.abs(np.asarray(grad)[..., :2]).sum(-1)[kept] > 0).all()


def test_step_critic_sees_standardised_differences_with_its_own_penalty(schema):
  """model.step_critic_weight: the scale is the root mean square of the differences between neighbouring
  kept records of the training data, for the smooth features only (second differences smaller than
  first); the step critic sees each smooth feature's differences over it, 0 past a series' end, takes its
  gradient penalty in that view and adds its weighted score to the generator's loss; off without a fitted
  scale (privacy, schemas saved before it) or a smooth feature."""
  lengths = np.array([4, 3])  # T = 4; a is smooth, b zigzags, c never moves
  a, b = [[0.0, 1, 2, 3.5], [5, 6, 7, 0]], [[0.0, 5, 0, 5], [1, 0, 1, 0]]
  data = Dataset(np.stack([a, b, [[1.0] * 4, [1, 1, 1, 0]]], -1), lengths, np.zeros((2, 0)),
                 (continuous("a"), continuous("b"), continuous("c")), ())
  plain = encoding.fit_schema(data, auto_normalize=False)
  enc = encoding.encode(data, plain).features
  kept = np.arange(4)[None, :] < lengths[:, None]
  first = np.diff(enc[..., :3], axis=1) * (kept[:, 1:] & kept[:, :-1])[..., None]  # five kept pairs
  second = np.diff(enc[..., :3], 2, axis=1) * (kept[:, 2:] & kept[:, :-2])[..., None]  # three kept triples
  rms1, rms2 = np.sqrt((first ** 2).sum((0, 1)) / 5), np.sqrt((second ** 2).sum((0, 1)) / 3)
  assert rms2[0] < rms1[0] and rms2[1] > rms1[1]
  moments = encoding.step_moments(enc, plain)
  np.testing.assert_allclose(encoding.step_scale(moments), [rms1[0], 0, 0])
  np.testing.assert_allclose(encoding.step_scale(moments + moments), [rms1[0], 0, 0])  # shares add their moments
  assert encoding.step_scale(encoding.step_moments(enc[:, :2], plain)) == (0.0,) * 3  # no three records in a row
  cfg = dataclasses.replace(SMALL, step_critic_weight=2.0)
  scaled = dataclasses.replace(plain, step_scale=encoding.step_scale(moments))
  model = DoppelGANger(scaled, cfg)
  x = model.flatten(dict(features=jnp.asarray(enc, jnp.float32), attributes=jnp.zeros((2, 0)),
                         additional_attributes=jnp.zeros((2, 0))))
  np.testing.assert_allclose(model.step_view(x), (first[..., :1] / rms1[0]).reshape(2, -1), rtol=1e-5)
  assert scaled == encoding.Schema.from_json(scaled.to_json())
  params = model.init(jax.random.key(0))
  names = [name for *_, name in critic_fns(model, params)]
  assert names == ["", "step_"] and params["step_critic"]["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0] == 3
  fake = x[::-1]
  _, metrics = d_loss_fn(model, 10.0, params, x, fake, jnp.full(2, 0.5))
  step_critic = lambda v: model.critic.apply(params["step_critic"], v)  # noqa: E731
  _, w = losses.critic_loss(step_critic, model.step_view(x), model.step_view(fake), jnp.full(2, 0.5), 10.0)
  np.testing.assert_allclose(metrics["step_w_distance"], w, rtol=1e-5)
  main = -model.critic.apply(params["critic"], fake).mean()
  np.testing.assert_allclose(g_loss_fn(model, params, fake), main - 2.0 * step_critic(model.step_view(fake)).mean(),
                             rtol=1e-5)
  assert not DoppelGANger(plain, cfg).has_step_critic and "step_critic" not in DoppelGANger(plain, cfg).init(
      jax.random.key(0))
  assert not DoppelGANger(dataclasses.replace(plain, step_scale=(0.0,) * 3), cfg).has_step_critic
  with pytest.raises(ValueError, match="step_critic_weight"):
    ModelConfig(step_critic_weight=-1.0)


def test_step_critic_sees_auto_normalised_steps_in_the_data_units_with_the_attributes():
  """With per-series min/max the step critic also sees each smooth feature's steps times the series'
  half-range over the training data's root mean square of that (`unit_step_scale`, fitted like
  `step_scale`), then the attributes: a series' amplitude is judged with its shape and its kind. The
  critics' min/max view is undone first, so the view is the same through any of them."""
  t = np.arange(6.0)
  a = np.array([[0.0], [2], [3]]) + np.array([[1.0], [3], [0.5]]) * np.sin(t / 3)  # smooth, amplitudes 1 / 3 / 0.5
  lengths = np.array([6, 6, 4])
  valid = np.arange(6)[None, :] < lengths[:, None]
  data = Dataset((a * valid)[..., None], lengths, np.array([[0.0], [1], [1]]), (continuous("a"),),
                 (categorical("kind", ["x", "y"]),))
  schema = encoding.fit_schema(data, log_half_range=True)
  enc = encoding.encode(data, schema)
  half = encoding.decode_half(enc.additional_attributes[:, 1::2], schema)
  moments = encoding.step_moments(enc.features, schema, half)
  first = np.diff(enc.features[..., 0], axis=1) * (valid[:, 1:] & valid[:, :-1])  # 5 + 5 + 3 kept pairs
  scale, units = encoding.step_scale(moments), encoding.unit_step_scale(moments)
  np.testing.assert_allclose(units, [np.sqrt(((first * half) ** 2).sum() / 13)])
  assert encoding.unit_step_scale(moments + moments) == units and scale[0] > 0
  assert encoding.unit_step_scale(encoding.step_moments(enc.features, schema)) == ()  # no half-ranges given
  fitted = dataclasses.replace(schema, step_scale=scale, unit_step_scale=units)
  assert fitted == encoding.Schema.from_json(fitted.to_json())
  sample = dict(features=jnp.asarray(enc.features), attributes=jnp.asarray(enc.attributes),
                additional_attributes=jnp.asarray(enc.additional_attributes))
  want = np.concatenate([first / scale[0], first * half / units[0], enc.attributes], -1)
  cfg = dataclasses.replace(SMALL, step_critic_weight=0.3)
  for view in ((), ((2.0, 1), (0, 1))):  # as generated, and through a min/max view the critics see
    model = DoppelGANger(dataclasses.replace(fitted, min_max_view=view), cfg)
    np.testing.assert_allclose(model.step_view(model.flatten(sample)), want, rtol=1e-5, atol=1e-6)
  assert model.init(jax.random.key(0))["step_critic"]["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0] == 5 + 5 + 2


def test_sample_len_auto():
  assert resolve_sample_len(0, 550) == 11 and resolve_sample_len(0, 56) == 1 and resolve_sample_len(0, 2497) == 50
  assert resolve_sample_len(7, 550) == 7


def test_gradient_penalty_linear_critic_closed_form():
  # D(x) = w.x has gradient w everywhere: penalty (||w|| - 1)^2 whatever the inputs and t.
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=12))
  real, fake = jnp.asarray(rng.normal(size=(6, 12))), jnp.asarray(rng.normal(size=(6, 12)))
  t = jnp.asarray(rng.uniform(size=6))
  gp = losses.gradient_penalty(lambda x: x @ w, real, fake, t)
  np.testing.assert_allclose(gp, (np.linalg.norm(w) - 1) ** 2, rtol=1e-5)
  # PacGAN (pack=2): a critic row sees two examples; its gradient is [w1, w2] with w = w1 ++ w2 per example
  packed = losses.gradient_penalty(lambda x: x.reshape(3, 24) @ jnp.concatenate([w, 2 * w]), real, fake, t, pack=2)
  np.testing.assert_allclose(packed, (np.sqrt(5) * np.linalg.norm(w) - 1) ** 2, rtol=1e-5)


def test_gradient_penalty_is_per_example_with_shared_t():
  # D(x) = |x|^2 / 2 has gradient x_hat: the penalty is the mean of (||t_i real_i + (1-t_i) fake_i|| - 1)^2,
  # not (batch-global norm - 1)^2, and one t_i is shared by all of example i's columns.
  rng = np.random.default_rng(1)
  real, fake = rng.normal(size=(5, 7)), 3 * rng.normal(size=(5, 7))
  t = rng.uniform(size=5)
  x_hat = t[:, None] * real + (1 - t[:, None]) * fake
  want = np.mean((np.linalg.norm(x_hat, axis=1) - 1) ** 2)
  got = losses.gradient_penalty(lambda x: 0.5 * jnp.sum(x * x, -1), jnp.asarray(real), jnp.asarray(fake), jnp.asarray(t))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert abs(want - (np.linalg.norm(x_hat) - 1) ** 2) > 1  # a batch-global norm would differ


def test_critic_loss_sign():
  real, fake = jnp.ones((4, 3)), jnp.zeros((4, 3))
  loss, w = losses.critic_loss(lambda x: x.sum(-1), real, fake, jnp.full(4, .5), gp_weight=0.0)
  assert float(w) == 3.0 and float(loss) == -3.0  # the critic lowers its loss by scoring real above fake
  assert float(losses.generator_loss(lambda x: x.sum(-1), fake)) == 0.0


def test_metadata_generators_get_no_gradient_through_the_lstm(schema):
  """§4.3 as in the original: generated attributes and min/max enter the LSTM stop-gradient, so a loss on
  the features alone (what the feature critic sees of the series) moves only the LSTM and its heads."""
  model = DoppelGANger(schema, SMALL)
  params = model.init(jax.random.key(0))["generator"]
  noise = sample_noise(jax.random.key(1), 8, schema, SMALL)
  grads = jax.grad(lambda p: jnp.sum(model.generator.apply(p, noise)["features"] ** 2))(params)["params"]
  for name in ("attribute_mlp", "additional_mlp"):
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads[name])), name
  assert any(np.asarray(g).any() for g in jax.tree.leaves(grads["lstm"]))
  # the metadata part of the critic input still trains them
  meta = jax.grad(lambda p: jnp.sum(model.generator.apply(p, noise)["additional_attributes"] ** 2))(params)["params"]
  assert any(np.asarray(g).any() for g in jax.tree.leaves(meta["additional_mlp"]))


@pytest.mark.parametrize("min_length", [4, 10])
def test_no_series_is_shorter_than_the_shortest_training_series(schema, min_length):
  """Flags say "continues" before record min_length - 1 whatever the heads say; with min_length == T
  (fixed-length data) every series has length T."""
  schema = dataclasses.replace(schema, min_length=min_length)
  model = DoppelGANger(schema, SMALL)
  params = model.init(jax.random.key(0))["generator"]
  heads = params["params"]["heads"]  # heads that say "ends here" at every record
  bias = np.zeros((SMALL.sample_len, schema.feature_dim), np.float32)
  bias[:, 2:] = [-8.0, 8.0]
  heads = dict(kernel=jnp.zeros_like(heads["kernel"]), bias=jnp.asarray(bias.reshape(-1)))
  params = dict(params, params=dict(params["params"], heads=heads))
  out = model.generator.apply(params, sample_noise(jax.random.key(1), 8, schema, SMALL))
  lengths = encoding.flags_to_lengths(np.asarray(out["features"][..., -2:]))
  assert (lengths == min_length).all()
  if min_length == schema.max_length:  # the real data's flags exactly
    np.testing.assert_array_equal(out["features"][..., -2:], encoding.lengths_to_flags(lengths, schema.max_length))


@pytest.mark.parametrize("normalization,log_half_range", [("zero_one", False), ("minus_one_one", True)])
def test_exact_span_puts_each_series_extremes_where_its_half_range_puts_a_real_one(normalization, log_half_range):
  """A real series normalised by its own widened min and max spans exactly [e, 1 - e] (in [-1, 1]: the
  same points), e = AUTO_NORM_EPS / 2h; with model.exact_span every generated one does too, over the
  records it keeps (and over all of a forced length), whatever the untrained heads emit; with
  model.exact_span_at_generation only when generating, while training's forward pass stays the paper's."""
  data = make_demo(num_samples=20, length=10, variable_lengths=True)
  schema = encoding.fit_schema(data, normalization, log_half_range=log_half_range)
  low, high = encoding.value_range(normalization)

  def span_errors(features, additional, mask):
    cols = schema.continuous_columns
    x, keep = np.asarray(features)[..., cols], np.asarray(mask)[..., None] > 0
    e = encoding.AUTO_NORM_EPS / (2 * encoding.decode_half(np.asarray(additional)[:, 1::2], schema)) * (high - low)
    return (np.abs(np.where(keep, x, np.inf).min(1) - (low + e)).max(),
            np.abs(np.where(keep, x, -np.inf).max(1) - (high - e)).max())

  real = encoding.encode(data, schema)
  assert max(span_errors(real.features, real.additional_attributes, keep_mask(real.features[..., -2:]))) < 1e-5
  model = DoppelGANger(schema, dataclasses.replace(SMALL, exact_span=True))
  params = model.init(jax.random.key(0))["generator"]
  out = model.generator.apply(params, sample_noise(jax.random.key(1), 32, schema, model.cfg))
  mask = keep_mask(out["features"][..., -2:])
  assert max(span_errors(out["features"], out["additional_attributes"], mask)) < 1e-5
  assert not np.asarray(out["features"])[np.asarray(mask) == 0].any()  # zeros after each series' end
  forced = model.generator.apply(params, sample_noise(jax.random.key(1), 8, schema, model.cfg, 23), length=23)
  assert max(span_errors(forced["features"], forced["additional_attributes"], np.ones((8, 23)))) < 1e-5
  plain = DoppelGANger(schema, SMALL).generator.apply(params, sample_noise(jax.random.key(1), 32, schema, SMALL))
  assert min(span_errors(plain["features"], plain["additional_attributes"], mask)) > 0.01  # the paper's model
  at_generation = DoppelGANger(schema, dataclasses.replace(SMALL, exact_span_at_generation=True)).generator
  noise = sample_noise(jax.random.key(1), 32, schema, SMALL)
  np.testing.assert_array_equal(at_generation.apply(params, noise)["features"], out["features"])
  trained, _ = at_generation.apply(params, noise, train=True, mutable=["batch_stats"])
  np.testing.assert_array_equal(trained["features"], plain["features"])
  # auto (the default): rescaled unless features' levels move together (a whiten_levels view was fitted)
  auto = dataclasses.replace(SMALL, exact_span_at_generation="auto")
  np.testing.assert_array_equal(DoppelGANger(schema, auto).generator.apply(params, noise)["features"], out["features"])
  levels = dataclasses.replace(schema, min_max_view=tuple(map(tuple, np.eye(2 * len(schema.continuous_features)))))
  np.testing.assert_array_equal(DoppelGANger(levels, auto).generator.apply(params, noise)["features"], plain["features"])
  assert dataclasses.replace(SMALL, exact_span_at_generation="True").exact_span_at_generation is True  # a CLI override
  with pytest.raises(ValueError, match="exact_span_at_generation must be auto, True or False"):
    dataclasses.replace(SMALL, exact_span_at_generation="sometimes")


@pytest.mark.parametrize("normalization", encoding.NORMALIZATIONS)
def test_series_at_the_floor_throughout_are_generated_as_real_ones_encode(normalization):
  """model.floor_series_flags: where a series' flag (argmax) says "at the floor throughout", its min/max block and
  records are written exactly as a real such series encodes, so the critics see no difference there, and it
  decodes exactly at the floor; the other series keep what the heads emit."""
  rng = np.random.default_rng(0)
  loss = np.where(rng.uniform(size=(20, 10)) < 0.2, rng.uniform(0.1, 1, (20, 10)), 0.0)
  loss[:8] = 0  # 8 series of 20 never leave the floor
  data = Dataset(loss[..., None].astype(np.float32), np.full(20, 10), np.zeros((20, 0)), (continuous("loss"),), ())
  schema = encoding.fit_schema(data, normalization)
  counts = encoding.floor_counts(data, schema)
  schema = dataclasses.replace(schema, floored=encoding.floored_features(counts, schema),
                               series_floored=encoding.floored_features(counts, schema, series=True))
  assert schema.series_floored == (0,) and schema.additional_dim == 4
  real = encoding.encode(data, schema)
  at = floor_throughout(jnp.asarray(real.additional_attributes), schema)
  np.testing.assert_array_equal(at[:, 0], (loss == 0).all(1))
  additional, features = put_floor_series(jnp.asarray(real.additional_attributes), jnp.asarray(real.features), at, schema)
  np.testing.assert_allclose(additional, real.additional_attributes, atol=1e-6)
  np.testing.assert_allclose(features, real.features, atol=1e-6)

  model = DoppelGANger(schema, SMALL)
  out = model.generator.apply(model.init(jax.random.key(0))["generator"], sample_noise(jax.random.key(1), 64, schema, SMALL))
  at = np.asarray(floor_throughout(out["additional_attributes"], schema)[:, 0])
  assert 0 < at.sum() < 64  # untrained: both kinds
  fake = encoding.decode(encoding.Encoded(*(np.asarray(out[k]) for k in ("attributes", "additional_attributes", "features"))),
                         schema)
  assert (fake.features[at] == 0).all() and (fake.features[~at] > 0).any()
  np.testing.assert_allclose(np.asarray(out["additional_attributes"])[at, :2],
                             np.broadcast_to(real.additional_attributes[0, :2], (at.sum(), 2)), atol=1e-6)
