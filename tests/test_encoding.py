import dataclasses
import json

import numpy as np
import pytest

from dg_jax.data import encoding
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.data.schema import DataError, Dataset, categorical, continuous


def random_dataset(seed, n=40, t=30, variable_lengths=True) -> Dataset:
  rng = np.random.default_rng(seed)
  fvars = (continuous("bytes", log1p=True), categorical("state", ["up", "down", "idle"]), continuous("loss"))
  avars = (categorical("isp", ["a", "b", "c", "d"]), continuous("rate"), categorical("tech", ["dsl", "fiber"]))
  lengths = rng.integers(1, t + 1, n) if variable_lengths else np.full(n, t)
  f = np.stack([rng.lognormal(3, 2, (n, t)), rng.integers(0, 3, (n, t)), rng.normal(0, 5, (n, t))], -1)
  f[np.arange(t)[None, :] >= lengths[:, None]] = 0
  a = np.stack([rng.integers(0, 4, n), rng.uniform(-3, 7, n), rng.integers(0, 2, n)], -1)
  return Dataset(f.astype(np.float32), lengths, a, fvars, avars).validate()


def assert_same(a: Dataset, b: Dataset, rtol=1e-4, atol=1e-4):
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_allclose(a.features, b.features, rtol=rtol, atol=atol)
  np.testing.assert_allclose(a.attributes, b.attributes, rtol=rtol, atol=atol)
  assert [v.name for v in a.feature_vars] == [v.name for v in b.feature_vars]
  assert [v.categories for v in a.attribute_vars] == [v.categories for v in b.attribute_vars]


@pytest.mark.parametrize("normalization", encoding.NORMALIZATIONS)
@pytest.mark.parametrize("auto_normalize,log_half_range", [(True, False), (True, True), (False, False)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_random(seed, normalization, auto_normalize, log_half_range):
  data = random_dataset(seed)
  schema = encoding.fit_schema(data, normalization, auto_normalize, log_half_range=log_half_range)
  enc = encoding.encode(data, schema)
  assert enc.attributes.shape == (40, schema.attribute_dim) == (40, 4 + 1 + 2)
  assert enc.additional_attributes.shape == (40, 4 if auto_normalize else 0)
  assert enc.features.shape == (40, 30, schema.feature_dim) == (40, 30, 1 + 3 + 1 + 2)
  lo = 0 if normalization == encoding.ZERO_ONE else -1
  assert enc.features.min() >= lo - 1e-6 and enc.features.max() <= 1 + 1e-6
  assert_same(encoding.decode(enc, schema), data, rtol=2e-4)


def test_gen_flags_and_padding():
  data = random_dataset(3)
  enc = encoding.encode(data, encoding.fit_schema(data))
  flags = enc.features[..., -2:]
  for i, length in enumerate(data.lengths):
    assert (flags[i, :length - 1] == [1, 0]).all()
    np.testing.assert_array_equal(flags[i, length - 1], [0, 1])
    assert not enc.features[i, length:].any()  # everything (flags too) is zero after the end
  np.testing.assert_array_equal(encoding.flags_to_lengths(flags), data.lengths)


def test_flags_to_lengths_soft_and_masked():
  soft = np.array([[[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]],   # ends at step 3
                   [[0.9, 0.1], [0, 0], [0, 0], [0, 0]],                # masked after step 1
                   [[0.6, 0.4]] * 4])                                   # never ends
  np.testing.assert_array_equal(encoding.flags_to_lengths(soft), [3, 1, 4])


def test_auto_normalization_values():
  f = np.array([[[2.0], [4.0], [0.0]]], np.float32)  # length 2: the padding 0 must not count as the min
  data = Dataset(f, np.array([2]), np.zeros((1, 0)), (continuous("x"),), ()).validate()
  schema = encoding.fit_schema(data)
  assert (schema.feature_vars[0].low, schema.feature_vars[0].high) == (2.0, 4.0)
  enc = encoding.encode(data, schema)
  eps = encoding.AUTO_NORM_EPS
  np.testing.assert_allclose(enc.additional_attributes, [[0.5, 0.5 + eps]], rtol=1e-6)
  np.testing.assert_allclose(enc.features[0, :2, 0], [eps / (1 + 2 * eps), (1 + eps) / (1 + 2 * eps)], rtol=1e-5)


@pytest.mark.parametrize("normalization", encoding.NORMALIZATIONS)
def test_generated_ranges_stay_within_the_data_range(normalization):
  """A generated (max+min)/2 and (max-min)/2 can put a series' min below the data's global min; decoded
  values stay within [low, high] (e.g. no negative byte counts)."""
  data = Dataset(np.array([[[2.0], [4.0]]], np.float32), np.array([2]), np.zeros((1, 0)), (continuous("x"),),
                 ()).validate()
  schema = encoding.fit_schema(data, normalization)
  lo, hi = encoding.value_range(normalization)
  flags = np.array([[[1, 0], [0, 1]]], np.float32)
  x = np.array([[[lo], [hi]]], np.float32)  # the series' own min and max
  wide = encoding.Encoded(attributes=np.zeros((1, 0), np.float32),  # mid 0, half 1.5: min -1.5, max 1.5
                          additional_attributes=np.array([[0.0, 1.5]], np.float32),
                          features=np.concatenate([x, flags], -1))
  np.testing.assert_allclose(encoding.decode(wide, schema).features[0, :, 0], [2.0, 4.0])


@pytest.mark.parametrize("normalization", encoding.NORMALIZATIONS)
@pytest.mark.parametrize("log_half_range", [False, True])
def test_series_means_are_the_levels_in_the_model_scale(normalization, log_half_range):
  """`series_means` of encoded series (normalised records, min/max) is each series' mean over its own records
  of the data scaled as a whole (what the min/max block's values are in): the level, not the shape's."""
  rng = np.random.default_rng(0)
  lengths = np.array([6, 2, 4, 1])
  f = rng.normal(size=(4, 6, 2)).astype(np.float32) * [1, 10] + [0, 50]
  f[np.arange(6)[None] >= lengths[:, None]] = 0
  data = Dataset(f, lengths, np.zeros((4, 0)), (continuous("x"), continuous("y")), ()).validate()
  schema = encoding.fit_schema(data, normalization, log_half_range=log_half_range)
  enc = encoding.encode(data, schema)
  scaled = np.stack([encoding._scale(v, f[..., j], normalization) for j, v in enumerate(schema.feature_vars)], -1)
  kept = (np.arange(6)[None] < lengths[:, None])[..., None]
  want = (scaled * kept).sum(1) / lengths[:, None]
  np.testing.assert_allclose(encoding.series_means(enc.features, enc.additional_attributes, schema), want,
                             rtol=1e-5, atol=1e-6)


def test_level_view_magnifies_means_tied_within_kinds():
  """Two features whose series' means are tied within each kind of series (b = -2a + the kind's offset, to
  0.1%), while the kinds lie far apart: the auxiliary critic's view multiplies the tie by MAX_VIEW_GAIN, in the
  means' own units, and leaves the loose direction; shares add up to the same view. Means tied only through
  the kinds (independent within each), unrelated ones and a single feature get none."""
  rng = np.random.default_rng(0)
  n = 30_000
  kind = rng.integers(0, 3, n)
  attributes = np.eye(3)[kind]
  a = rng.uniform(size=n) + 3 * kind
  tied = np.stack([a, -2 * a + 5 * kind + 1e-3 * rng.normal(size=n)], 1)
  view = np.array(encoding.level_view(encoding.level_moments(attributes, tied), 2))
  shares = sum(encoding.level_moments(attributes[i], tied[i]) for i in np.array_split(np.arange(n), 3))
  np.testing.assert_allclose(encoding.level_view(shares, 2), view, rtol=1e-8, atol=1e-8)
  std = np.array([1, 2]) / 12 ** 0.5  # within a kind: a uniform, b = -2a
  together, apart = std * [1, 1], std * [1, -1]  # standardised, the tie is a + b ~ 0
  np.testing.assert_allclose(together @ view, encoding.MAX_VIEW_GAIN * together, rtol=0.02)
  np.testing.assert_allclose(apart @ view, apart, rtol=0.02)
  through_kinds = np.stack([a, rng.uniform(size=n) + 5 * kind], 1)
  assert encoding.level_view(encoding.level_moments(attributes, through_kinds), 2) == ()
  unrelated = rng.normal(size=(n, 2)) * [1, 100]
  assert encoding.level_view(encoding.level_moments(np.zeros((n, 0)), unrelated), 2) == ()
  assert encoding.level_view(encoding.level_moments(attributes, tied[:, :1]), 1) == ()
  assert encoding.level_view(encoding.level_moments(attributes, np.ones((n, 2))), 2) == ()  # nothing varies


@pytest.mark.parametrize("normalization", encoding.NORMALIZATIONS)
@pytest.mark.parametrize("log_half_range", [False, True])
def test_degenerate_series_round_trip(normalization, log_half_range):
  # constant series, single-step series, an all-zero series, and a feature constant over the whole dataset
  f = np.zeros((4, 5, 2), np.float32)
  f[0, :, 0] = 7.0
  f[1, 0, 0] = 3.0
  f[3, :3, 0] = [1, 2, 3]
  f[:, :, 1] = 5.0
  lengths = np.array([5, 1, 5, 3])
  f[np.arange(5)[None] >= lengths[:, None]] = 0
  data = Dataset(f, lengths, np.zeros((4, 0)), (continuous("x"), continuous("c")), ()).validate()
  schema = encoding.fit_schema(data, normalization, log_half_range=log_half_range)
  enc = encoding.encode(data, schema)
  assert np.isfinite(enc.features).all() and np.isfinite(enc.additional_attributes).all()
  assert_same(encoding.decode(enc, schema), data)


def test_schema_json_round_trip():
  data = random_dataset(0)
  schema = encoding.fit_schema(data, encoding.MINUS_ONE_ONE, log_half_range=True)
  assert encoding.Schema.from_json(schema.to_json()) == schema
  # a schema saved before log_half_range existed keeps decoding its runs' linear half-ranges
  old = json.loads(schema.to_json())
  del old["log_half_range"]
  assert encoding.Schema.from_json(json.dumps(old)).log_half_range is False
  viewed = dataclasses.replace(schema, min_max_view=((1.0, 0.5), (0.5, 2.0)))
  assert encoding.Schema.from_json(viewed.to_json()) == viewed and hash(encoding.Schema.from_json(viewed.to_json()))
  assert encoding.Schema.from_json(json.dumps(old)).min_max_view == ()  # saved before it: the paper's view
  tied = dataclasses.replace(schema, level_view=((1.0, 0.5), (0.5, 2.0)))
  assert encoding.Schema.from_json(tied.to_json()) == tied and hash(encoding.Schema.from_json(tied.to_json()))
  del old["level_view"]
  assert encoding.Schema.from_json(json.dumps(old)).level_view == ()  # saved before it: the metadata only


def test_min_max_view_magnifies_levels_that_move_together():
  """Two features whose levels (midranges) move together, within 0.1% of each other: the critics' view
  multiplies the difference of their levels by MAX_VIEW_GAIN (its gain to half the average spread, about
  200, is capped) and leaves their sum and both half-ranges as they are; shares of the data add up to the
  same view; features whose levels are unrelated keep the paper's view."""
  rng = np.random.default_rng(0)
  z, h1, h2 = rng.uniform(size=(3, 20_000))
  x = np.stack([z, h1, z + 1e-3 * rng.normal(size=z.size), h2], 1)  # (midrange, half-range) per feature
  view = np.array(encoding.min_max_view(encoding.min_max_moments(x)))
  shares = sum(encoding.min_max_moments(part) for part in np.array_split(x, 3))
  np.testing.assert_allclose(encoding.min_max_view(shares), view, rtol=1e-9, atol=1e-9)
  apart, together = np.array([1.0, 0, -1, 0]) / 2 ** 0.5, np.array([1.0, 0, 1, 0]) / 2 ** 0.5
  np.testing.assert_allclose(apart @ view, encoding.MAX_VIEW_GAIN * apart, atol=0.01)
  np.testing.assert_allclose(together @ view, together, atol=0.01)
  np.testing.assert_array_equal(view[:, [1, 3]], np.eye(4)[:, [1, 3]])  # half-ranges as generated
  np.testing.assert_allclose(view, view.T)
  unrelated = x.copy()
  unrelated[:, 2] = rng.uniform(size=z.size)
  assert encoding.min_max_view(encoding.min_max_moments(unrelated)) == ()
  assert encoding.min_max_view(encoding.min_max_moments(x[:1])) == ()  # one series: no covariance
  assert encoding.min_max_view(encoding.min_max_moments(np.ones((5, 4)))) == ()  # nothing varies
  assert encoding.min_max_view(encoding.min_max_moments(np.zeros((5, 0)))) == ()  # no min/max block


@pytest.mark.parametrize("normalization", encoding.NORMALIZATIONS)
def test_log_half_range_known_answers(normalization):
  """The smallest half-range (AUTO_NORM_EPS, a constant series) codes 0, the largest (half the value range,
  widened) 1, and a series spanning 1% of the global range sits mid-scale rather than near the sigmoid's flat
  end; the jnp decode (scoring) under jit agrees with numpy's."""
  import jax
  schema = encoding.fit_schema(random_dataset(0), normalization, log_half_range=True)
  lo, hi = encoding.value_range(normalization)
  eps, top = encoding.AUTO_NORM_EPS, (hi - lo) / 2 + encoding.AUTO_NORM_EPS
  np.testing.assert_allclose(encoding.encode_half(np.array([eps, top]), schema), [0, 1], atol=1e-12)
  one_percent = encoding.encode_half(0.01 * (hi - lo) / 2 + eps, schema)
  assert 0.45 < one_percent < 0.55
  codes = np.linspace(0, 1, 7, dtype=np.float32)
  np.testing.assert_allclose(jax.jit(lambda c: encoding.decode_half(c, schema))(codes),
                             encoding.decode_half(codes.astype(np.float64), schema), rtol=1e-5)
  np.testing.assert_allclose(encoding.encode_half(encoding.decode_half(codes.astype(np.float64), schema), schema),
                             codes, atol=1e-7)


def test_log_half_range_spans_the_training_series():
  """Schema.log_half_bounds from `half_range_bounds`: the narrowest training series codes 0 and the widest
  1, so that no generated series can be narrower than the narrowest real one; encoding round-trips, and
  the bounds survive schema.json (a schema saved before them spans the fixed bounds)."""
  a = [[0, .1, .05, 0], [0, .5, .2, .3], [0, 1, .5, .2]]  # ranges 0.1, 0.5, 1 of the feature's [0, 1]
  b = [[10, 12, 11, 11], [10, 14, 12, 12], [11, 13, 12, 12]]  # 0.5, 1, 0.5 of its [10, 14]
  data = Dataset(np.stack([a, b], -1).astype(np.float32), np.full(3, 4), np.zeros((3, 0)),
                 (continuous("a"), continuous("b")), ()).validate()
  schema = encoding.fit_schema(data, log_half_range=True)
  low, high = encoding.half_range_bounds(data, schema)
  eps = encoding.AUTO_NORM_EPS
  assert (low, high) == pytest.approx((0.05 + eps, 0.5 + eps), abs=1e-7)
  fitted = dataclasses.replace(schema, log_half_bounds=(low, high))
  np.testing.assert_allclose(encoding.encode_half(np.array([low, high]), fitted), [0, 1], atol=1e-12)
  assert encoding.encode_half(low / 2, fitted) == 0  # narrower than any training series: the narrowest
  assert_same(encoding.decode(encoding.encode(data, fitted), fitted), data)
  assert encoding.Schema.from_json(fitted.to_json()) == fitted
  old = json.loads(fitted.to_json())
  del old["log_half_bounds"]
  assert encoding.Schema.from_json(json.dumps(old)) == schema


def test_log1p_config_and_negative_error():
  data = random_dataset(0)
  rates = data.attributes.copy()
  rates[:, 1] = np.abs(rates[:, 1]) * 100
  data = dataclasses.replace(data, attributes=rates)
  schema = encoding.fit_schema(data, log1p=["rate"])
  assert schema.attribute_vars[1].log1p and schema.attribute_vars[1].high == pytest.approx(np.log1p(rates[:, 1].max()))
  assert_same(encoding.decode(encoding.encode(data, schema), schema), data)
  rates[0, 1] = -1
  with pytest.raises(DataError, match="'rate' uses log1p but has negative"):
    encoding.fit_schema(dataclasses.replace(data, attributes=rates), log1p=["rate"])
  with pytest.raises(DataError, match="unknown variables"):
    encoding.fit_schema(data, log1p=["nope"])


def test_encode_rejects_incompatible_data():
  data = random_dataset(0)
  schema = encoding.fit_schema(data)
  other = dataclasses.replace(data, attribute_vars=(categorical("isp", ["a", "b", "c", "x"]),) +
                              data.attribute_vars[1:], source="new.npz")
  with pytest.raises(DataError, match=r"new.npz: attribute 'isp'.*unknown: \['x'\]"):
    encoding.encode(other, schema)
  longer = random_dataset(0, t=31)
  with pytest.raises(DataError, match="longer than the schema's T = 30"):
    encoding.encode(longer, schema)


def test_clip_to_a_schema_fitted_elsewhere():
  """train.init_from's schema comes from other data: values beyond its ranges are clipped to their
  ends (in original units, log1p variables too), counted per series; padding and categories untouched."""
  data = random_dataset(0)
  schema = encoding.fit_schema(data)
  assert encoding.clip_to_schema(data, schema) == (data, {})  # fitted on this data: nothing to clip
  wider = dataclasses.replace(data, features=data.features.copy(), attributes=data.attributes.copy())
  wider.features[0, 0, 0] = data.features[..., 0].max() * 10  # bytes (log1p)
  wider.features[1, :data.lengths[1], 2] -= 100  # loss: a whole series below the range
  wider.attributes[:3, 1] = 99  # rate
  clipped, counts = encoding.clip_to_schema(wider, schema)
  assert counts == {"bytes": 1, "loss": 1, "rate": 3}
  np.testing.assert_allclose(clipped.features[0, 0, 0], data.features[..., 0].max(), rtol=1e-5)
  np.testing.assert_allclose(clipped.features[1, :data.lengths[1], 2], data.features[..., 2].min(), rtol=1e-5)
  np.testing.assert_allclose(clipped.attributes[:3, 1], data.attributes[:, 1].max())
  np.testing.assert_array_equal(clipped.features[..., 1], data.features[..., 1])
  assert (clipped.features[1, data.lengths[1]:] == 0).all()
  encoded = encoding.encode(clipped, schema)
  assert encoded.additional_attributes.min() >= 0 and encoded.additional_attributes.max() <= 1 + 1e-6


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.features.__setitem__((0, 0, 0), np.nan), "feature 'bytes' has 1 NaN"),
    (lambda d: d.attributes.__setitem__((0, 1), np.inf), "attribute 'rate' has 1 NaN or infinite"),
    (lambda d: d.attributes.__setitem__((0, 0), 4), "attribute 'isp' has value 4.0 outside its 4 categories"),
    (lambda d: d.features.__setitem__((0, 0, 1), 1.5), "feature 'state' has value 1.5 outside"),
    (lambda d: d.lengths.__setitem__(0, 0), r"lengths must lie in \[1, T=30\]"),
    (lambda d: d.lengths.__setitem__(0, 31), r"lengths must lie in \[1, T=30\]"),
])
def test_validation_errors(mutate, message):
  data = dataclasses.replace(random_dataset(0), source="in.npz")
  data.lengths[0] = 10
  data.features[0, 10:] = 0
  mutate(data)
  with pytest.raises(DataError, match="in.npz: " + message):
    data.validate()


def test_validation_shape_and_padding_errors():
  data = dataclasses.replace(random_dataset(0, variable_lengths=False), source="x.npz")
  with pytest.raises(DataError, match="x.npz: attributes must have shape"):
    dataclasses.replace(data, attributes=data.attributes[:5]).validate()
  with pytest.raises(DataError, match="x.npz: the dataset is empty"):
    data.subset(slice(0, 0)).validate()
  with pytest.raises(DataError, match="x.npz: features have 3 columns but 2 feature"):
    dataclasses.replace(data, feature_vars=data.feature_vars[:2]).validate()
  short = data.lengths.copy()
  short[2] = 4
  with pytest.raises(DataError, match="x.npz: feature 'bytes' has non-zero values after the end of sample 2"):
    dataclasses.replace(data, lengths=short).validate()


def test_npz_round_trip(tmp_path):
  data = random_dataset(5)
  path = tmp_path / "d.npz"
  save_npz(data, path)
  back = load_npz(path)
  assert_same(back, data, rtol=0, atol=0)
  assert back.feature_vars[0].log1p and back.attribute_vars[0].categories == ("a", "b", "c", "d")
  assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temp files left behind


def test_npz_errors(tmp_path):
  with pytest.raises(DataError, match="no such file"):
    load_npz(tmp_path / "missing.npz")
  np.savez(tmp_path / "bad.npz", features=np.zeros((2, 3, 1)), lengths=np.array([3, 3]))
  with pytest.raises(DataError, match=r"bad.npz: missing arrays \['attributes'"):
    load_npz(tmp_path / "bad.npz")
  np.savez(tmp_path / "kind.npz", features=np.zeros((2, 3, 1)), lengths=np.array([3, 3]),
           attributes=np.zeros((2, 0)), feature_types=np.array(["ordinal"]), attribute_types=np.array([], str))
  with pytest.raises(DataError, match="kind.npz: feature 'feature_0' has type 'ordinal'"):
    load_npz(tmp_path / "kind.npz")


def test_auto_log_picks_heavy_tailed_variables_and_round_trips(tmp_path):
  """log1p=auto: byte counts spanning decades -> log1p, signed heavy tails -> asinh, a loss rate in
  [0, 1] and a normal variable -> unchanged; encode/decode and npz keep the choice exactly."""
  rng = np.random.default_rng(0)
  n, t = 50, 20
  f = np.stack([rng.lognormal(8, 2.5, (n, t)), rng.uniform(0, 1, (n, t)),
                rng.choice([-1, 1], (n, t)) * rng.lognormal(6, 2, (n, t)), rng.normal(50, 5, (n, t))], -1)
  fvars = tuple(continuous(name) for name in ("bytes", "loss_rate", "net_flow", "temperature"))
  data = Dataset(f.astype(np.float32), np.full(n, t), np.zeros((n, 0)), fvars, ()).validate()
  schema = encoding.fit_schema(data, auto_log=True)
  assert [(v.log1p, v.asinh) for v in schema.feature_vars] == [(True, False), (False, False), (False, True),
                                                                (False, False)]
  assert not any(v.log1p or v.asinh for v in encoding.fit_schema(data).feature_vars)  # off unless asked
  back = encoding.decode(encoding.encode(data, schema), schema)
  np.testing.assert_allclose(back.features, data.features, rtol=2e-4, atol=1e-3)
  save_npz(back, str(tmp_path / "x.npz"))
  assert [(v.log1p, v.asinh) for v in load_npz(str(tmp_path / "x.npz")).feature_vars] == \
      [(v.log1p, v.asinh) for v in schema.feature_vars]
  assert encoding.Schema.from_json(schema.to_json()) == schema


def test_log1p_auto_from_the_config():
  """data.log1p="auto" reaches fit_schema from the training config; names still work as before; so does
  data.log_half_range, a bad value of which is a clear error."""
  from configs import tiny
  from dg_jax.data.demo import make_demo
  from dg_jax.train import fit_schema_from_config
  demo = make_demo(64, 24, seed=0)
  plain = dataclasses.replace(demo, feature_vars=tuple(dataclasses.replace(v, log1p=False) for v in demo.feature_vars))
  c = tiny.get_config()
  c.data.log1p = "auto"
  assert [v.log1p for v in fit_schema_from_config(plain, c).feature_vars] == [True, False]  # traffic_bytes only
  c.data.log1p = "latency_ms"
  assert [v.log1p for v in fit_schema_from_config(plain, c).feature_vars] == [False, True]
  c.data.log_half_range = "True"  # as --config.data.log_half_range=True arrives
  assert fit_schema_from_config(plain, c).log_half_range
  c.data.log_half_range = "sometimes"
  with pytest.raises(ValueError, match="data.log_half_range must be auto, True or False, got 'sometimes'"):
    fit_schema_from_config(plain, c)


def test_log_half_range_auto():
  """"auto" picks the log code when a feature's series each span a small share of its global range (windows of
  a long trend), the paper's linear code when they span much of it or are small because the feature is
  heavy-tailed (most series near 1, a few near 1e4); without auto-normalisation, none."""
  t, n = 24, 200
  rng = np.random.default_rng(0)
  trend = np.linspace(0, 1, n)[:, None] + 0.001 * rng.normal(size=(n, t))  # each window ~0.3% of the range
  wide = rng.uniform(size=(n, t))
  names = (continuous("wide"), continuous("trend"))
  data = Dataset(np.stack([wide, trend], -1), np.full(n, t), np.zeros((n, 0)), names, ()).validate()
  schema = encoding.fit_schema(data, log_half_range="auto")
  assert schema.log_half_range and encoding.narrow_series(data, schema) == ["trend"]
  only_wide = Dataset(wide[..., None], np.full(n, t), np.zeros((n, 0)), names[:1], ()).validate()
  assert not encoding.fit_schema(only_wide, log_half_range="auto").log_half_range
  tail = (1 + rng.uniform(size=(n, t))) * np.where(np.arange(n) < n - 10, 1.0, 1e4)[:, None]
  heavy = Dataset(np.stack([wide, tail], -1), np.full(n, t), np.zeros((n, 0)), names, ()).validate()
  assert not encoding.fit_schema(heavy, log_half_range="auto").log_half_range
  assert not encoding.fit_schema(data, auto_normalize=False, log_half_range="auto").log_half_range


@pytest.mark.parametrize("normalization,auto_normalize", [(encoding.ZERO_ONE, True), (encoding.MINUS_ONE_ONE, False)])
def test_floor_flags_known_answers_and_round_trip(normalization, auto_normalize):
  """model.floor_flags: a feature at its minimum in a tenth of the records or more gets a flag per record,
  one-hot as the data's, and (model.floor_series_flags, with auto-normalisation) one per series when a tenth
  of the series never leave it; decoding (on the host and on device) puts a flagged record exactly at the
  minimum, whatever its continuous value, and an unflagged one where that value says."""
  import jax
  from dg_jax import scoring
  data = random_dataset(4)
  loss, low = data.features[..., 2], data.features[..., 2][data.valid_steps].min()
  data.features[..., 2] = np.where(loss < 2, low, loss) * data.valid_steps  # 65% at the minimum; bytes once
  data.features[:5, :, 2] = low * data.valid_steps[:5]  # 5 series of 40 at it throughout
  schema = encoding.fit_schema(data, normalization, auto_normalize)
  counts = encoding.floor_counts(data, schema)
  at = (data.features[..., 2] == low)[data.valid_steps].sum()
  throughout = ((data.features[..., 2] == low) | ~data.valid_steps).all(1)
  assert throughout[:5].all() and throughout.sum() < 8  # and a short series or two by chance
  np.testing.assert_array_equal(counts, [[1, at], [data.valid_steps.sum()] * 2, [0, throughout.sum()], [40, 40]])
  halves = [encoding.floor_counts(data.subset(np.arange(i, 40, 2)), schema) for i in (0, 1)]
  np.testing.assert_array_equal(halves[0] + halves[1], counts)  # processes' shares add theirs
  assert encoding.floored_features(counts, schema, series=True) == (2,)
  assert encoding.floored_features(counts * [[1], [1], [0], [1]], schema, series=True) == ()
  schema = dataclasses.replace(schema, floored=encoding.floored_features(counts, schema),
                               series_floored=(2,) if auto_normalize else ())
  assert schema.floored == (2,) and encoding.Schema.from_json(schema.to_json()) == schema
  enc = encoding.encode(data, schema)
  if auto_normalize:  # after the min/max block: [1, 0] leaves the floor, [0, 1] at it throughout
    assert enc.additional_attributes.shape == (40, schema.additional_dim) == (40, 2 * 2 + 2)
    np.testing.assert_array_equal(enc.additional_attributes[:, 4:], np.eye(2)[throughout.astype(int)])
    np.testing.assert_array_equal(schema.half_codes(enc.additional_attributes), enc.additional_attributes[:, [1, 3]])
  assert enc.features.shape[-1] == schema.feature_dim == 1 + 3 + 1 + 2 + 2
  flags = enc.features[..., -4:-2]
  np.testing.assert_array_equal(flags[..., 1], (data.features[..., 2] == low) & data.valid_steps)
  np.testing.assert_array_equal(flags.sum(-1), data.valid_steps)
  assert_same(encoding.decode(enc, schema), data, rtol=2e-4)
  # soft flags, and continuous values that disagree with them: the flag decides
  soft = enc.features.copy()
  soft[..., 4] = 0.5
  soft[..., -4:-2] = np.where(flags[..., 1:] > 0, [0.3, 0.7], [0.6, 0.4]) * data.valid_steps[..., None]
  back = encoding.decode(dataclasses.replace(enc, features=soft), schema)
  assert (back.features[..., 2][flags[..., 1] > 0] == low).all()
  assert (back.features[..., 2][(flags[..., 0] > 0)] > low + 1e-3).all()
  on_device, _, _ = jax.device_get(jax.jit(scoring.decode, static_argnums=1)(dict(features=soft, attributes=enc.attributes,
                                                       additional_attributes=enc.additional_attributes), schema))
  np.testing.assert_allclose(on_device, back.features, rtol=1e-4, atol=1e-3)
  assert (on_device[..., 2][flags[..., 1] > 0] == low).all()
  # a minimum reached by one record of eight is no point mass
  few = Dataset(np.arange(8, dtype=np.float32).reshape(2, 4, 1), np.full(2, 4), np.zeros((2, 0)), (continuous("x"),), ())
  assert encoding.floored_features(encoding.floor_counts(few, encoding.fit_schema(few)), schema) == ()
