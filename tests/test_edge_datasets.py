"""Datasets beyond the paper's three, end to end on a tiny model: no metadata (with and without
auto-normalisation), categorical-only and mixed features, one-record series (T=1) and T not a
multiple of S. Each trains, resumes, generates (also conditionally where there are attributes),
exports a bundle and is evaluated; the cases whose critics differ also train with DP."""
import json

import numpy as np
import pytest

from configs import tiny
from dg_jax.checkpoints import load_bundle, save_bundle
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.data.schema import CATEGORICAL, CONTINUOUS, Dataset, Variable
from dg_jax.evaluation.report import write_report
from dg_jax.sampling import generate, load_generator
from dg_jax.train import train_and_evaluate

N = 48


def sines(t: int = 12, attributes: bool = False) -> Dataset:
  rng = np.random.default_rng(0)
  phase = rng.uniform(0, 6, N)
  x = np.sin(np.arange(t)[None] / 2 + phase[:, None]) + 0.1 * rng.normal(size=(N, t))
  attrs, avars = np.zeros((N, 0)), ()
  if attributes:
    attrs = np.stack([(phase > 3).astype(float), rng.uniform(0, 1, N)], 1)
    avars = (Variable("half", CATEGORICAL, ("low", "high")), Variable("u", CONTINUOUS))
  return Dataset(x[..., None].astype(np.float32), np.full(N, t), attrs, (Variable("x", CONTINUOUS),), avars)


def states(continuous: bool) -> Dataset:
  """A 3-state sequence (each series cycles from its own start), variable lengths, one attribute; with
  `continuous` a load that is exactly 0 when idle (a third of the records: floor flags)."""
  rng = np.random.default_rng(1)
  t = 10
  start = rng.integers(0, 3, N)
  codes = (start[:, None] + np.arange(t)[None]) % 3
  lengths = rng.integers(4, t + 1, N)
  cols = [codes]
  fvars = [Variable("state", CATEGORICAL, ("idle", "busy", "down"))]
  if continuous:
    cols.append(np.where(codes == 0, 0.0, codes * 10.0 + rng.uniform(0, 1, (N, t))))
    fvars.append(Variable("load", CONTINUOUS))
  features = np.stack(cols, -1).astype(np.float32)
  features[np.arange(t)[None] >= lengths[:, None]] = 0
  return Dataset(features, lengths, start[:, None].astype(float), tuple(fvars),
                 (Variable("start", CATEGORICAL, ("a", "b", "c")),))


CASES = {
    "no_metadata": (lambda: sines(), {}),
    "no_metadata_no_auto_normalize": (lambda: sines(), {"data.auto_normalize": False}),
    "categorical_only": (lambda: states(False), {}),
    "categorical_and_continuous": (lambda: states(True), {}),
    "one_record_series": (lambda: sines(t=1, attributes=True), {"model.sample_len": 1}),
    "t_not_a_multiple_of_s": (lambda: sines(t=10, attributes=True), {"model.sample_len": 4}),
}
# DP-SGD where the critics differ: no auxiliary critic, categorical features only, one record
DP_CASES = ("no_metadata_no_auto_normalize", "categorical_only", "one_record_series")


def config_for(path, overrides, **train):
  c = tiny.get_config()
  c.data.format, c.data.path = "npz", str(path)
  c.train.update(dict(num_steps=10, checkpoint_every=10, log_every=10), **train)
  c.num_devices = 1  # compiles faster than the tests' 8 virtual devices (1 vs 8 is tested elsewhere)
  for name, value in overrides.items():
    section, field = name.split(".")
    c[section][field] = value
  return c


@pytest.mark.parametrize("case", sorted(CASES))
def test_edge_dataset_end_to_end(case, tmp_path):
  make, overrides = CASES[case]
  data = make().validate()
  save_npz(data, str(tmp_path / "data.npz"))
  w = str(tmp_path / "w")
  train_and_evaluate(config_for(tmp_path / "data.npz", overrides, num_steps=5, checkpoint_every=5), w)
  out = train_and_evaluate(config_for(tmp_path / "data.npz", overrides), w)  # resume
  assert out["step"] == 10 and all(np.isfinite(v) for v in out.values())

  model, params, config = load_generator(w)
  synthetic = generate(model, params, 30, seed=1).validate()
  assert synthetic.features.shape == (30, data.max_length, len(data.feature_vars))
  assert synthetic.attributes.shape == (30, len(data.attribute_vars))
  assert synthetic.lengths.min() >= data.lengths.min()  # never shorter than what training showed
  if (data.lengths == data.max_length).all():
    assert (synthetic.lengths == data.max_length).all()  # fixed-length data: fixed-length samples
  if case == "categorical_and_continuous":  # idle loads are exactly 0: generated with floor flags
    assert model.schema.floored == (1,) and (synthetic.features[..., 1][synthetic.valid_steps] == 0).any()
  if data.attribute_vars:  # conditional generation keeps the given rows
    rows = data.attributes[:7]
    cond = generate(model, params, 0, seed=1, attributes=rows)
    np.testing.assert_allclose(cond.attributes[:, [v.is_categorical for v in data.attribute_vars]],
                               rows[:, [v.is_categorical for v in data.attribute_vars]])
  save_bundle(str(tmp_path / "b"), params, model.schema, config.to_json())
  bundle_params, schema, _ = load_bundle(str(tmp_path / "b"))
  from dg_jax.models.doppelganger import DoppelGANger
  from dg_jax.settings import model_config
  again = generate(DoppelGANger(schema, model_config(config)), bundle_params, 30, seed=1)
  np.testing.assert_array_equal(again.features, synthetic.features)

  if case in DP_CASES:
    dp = config_for(tmp_path / "data.npz", overrides)
    dp.privacy.enabled, dp.privacy.noise_multiplier = True, 1.0
    assert np.isfinite(train_and_evaluate(dp, str(tmp_path / "dp"))["epsilon"])

  scores = write_report(data, synthetic, str(tmp_path / "report"))
  written = json.loads((tmp_path / "report" / "metrics.json").read_text())
  assert all(v is not None and np.isfinite(v) for v in written.values()), written
  assert set(written) == set(scores)
  assert load_npz(str(tmp_path / "data.npz")).num_samples == N


def test_api_fit_on_a_long_frame_without_attributes(tmp_path):
  import pandas as pd
  from dg_jax.api import DoppelGANgerModel
  data = sines()
  frame = pd.DataFrame([dict(id=i, t=t, x=float(data.features[i, t, 0])) for i in range(N) for t in range(12)])
  c = tiny.get_config()
  c.train.num_steps = 10
  model = DoppelGANgerModel.fit(frame, str(tmp_path / "w"), config=c,
                                frame_options=dict(id_column="id", time_column="t", attribute_columns=[]))
  out = model.generate(5, seed=0)
  assert out.features.shape == (5, 12, 1) and out.attributes.shape == (5, 0)


@pytest.mark.parametrize("real", ["/dev/null", "missing.npz", "truncated.npz"])
def test_cli_bad_input_ends_with_one_line(tmp_path, real):
  import subprocess
  import sys
  from tests.conftest import ROOT
  save_npz(sines(), str(tmp_path / "ok.npz"))
  (tmp_path / "truncated.npz").write_bytes((tmp_path / "ok.npz").read_bytes()[:100])
  path = real if real.startswith("/") else str(tmp_path / real)
  r = subprocess.run([sys.executable, "launch.py", "--mode=evaluate", f"--real={path}",
                      f"--synthetic={tmp_path / 'ok.npz'}", f"--out={tmp_path / 'out'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith(f"error: {path}: ") and "Traceback" not in r.stderr


@pytest.mark.parametrize("case", ["one_record_series", "categorical_only"])
def test_cli_sweep_refuses_data_without_autocorrelation_in_one_line(tmp_path, case):
  """The S sweep ranks S by autocorrelation: T=1 or categorical-only data end with one line, exit 2."""
  import subprocess
  import sys
  from tests.conftest import ROOT
  path = str(tmp_path / "data.npz")
  save_npz(CASES[case][0]().validate(), path)
  r = subprocess.run([sys.executable, "launch.py", "--mode=sweep", "--config=configs/tiny.py",
                      f"--config.data.path={path}", f"--workdir={tmp_path / 'w'}", "--sample_lens=1"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {path}: the sweep ranks variants by the autocorrelation") and "Traceback" not in r.stderr


def labels(data: Dataset) -> list[np.ndarray]:
  """Each feature and attribute column in the user's terms: category labels, or values."""
  valid = np.arange(data.max_length)[None] < data.lengths[:, None]
  out = []
  for values, variables in ((data.features[valid], data.feature_vars), (data.attributes, data.attribute_vars)):
    for j, v in enumerate(variables):
      col = values[:, j]
      out.append(np.array(v.categories)[col.astype(int)] if v.is_categorical else np.round(col, 4))
  return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_edge_dataset_csv_round_trips(case, tmp_path):
  from dg_jax.data import frames
  data = CASES[case][0]().validate()
  names = [v.name for v in data.attribute_vars]
  categorical = [v.name for v in data.feature_vars + data.attribute_vars if v.is_categorical]
  frames.write_csv_long(data, str(tmp_path / "long.csv"))
  long = frames.read_csv_long(str(tmp_path / "long.csv"), "id", "step", names, categorical=categorical)
  frames.write_csv_wide(data, str(tmp_path / "wide.csv"), id_column="id")
  wide = frames.read_csv_wide(str(tmp_path / "wide.csv"), frames.wide_columns(data), id_column="id",
                              attribute_columns=names, categorical=categorical)
  for back in (long, wide):
    np.testing.assert_array_equal(back.lengths, data.lengths)
    for a, b in zip(labels(back), labels(data)):
      np.testing.assert_array_equal(a, b)
