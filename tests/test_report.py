"""The evaluation report: metrics.json, the Markdown/HTML table and valid PNG plots."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from dg_jax.data.demo import make_demo
from dg_jax.data.npz_format import save_npz
from dg_jax.data.schema import DataError, categorical
from dg_jax import io_utils
from dg_jax.evaluation import metrics, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# demo data: features traffic_bytes, latency_ms; attributes service, region (categorical)
EXPECTED_PLOTS = {"autocorrelation_traffic_bytes.png", "autocorrelation_latency_ms.png", "attribute_service.png",
                  "attribute_region.png", "lengths.png", "totals_cdf_traffic_bytes_by_service.png",
                  "totals_cdf_latency_ms_by_service.png", "pearson_cdf_traffic_bytes_latency_ms.png"}


def demo(seed, n=12):
  return make_demo(n, 14, seed=seed, variable_lengths=True)


def strict_json(path):
  """Parses JSON, failing on NaN/Infinity (not valid JSON)."""
  def bad(name):
    raise ValueError(f"invalid JSON constant {name}")
  with open(path) as fh:
    return json.load(fh, parse_constant=bad)


def assert_pngs(out_dir, names):
  for name in names:
    data = (out_dir / name).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000, name


def test_single_set_report(tmp_path):
  real, synth = demo(0), demo(1)
  result = report.write_report(real, synth, str(tmp_path), num_examples=2)
  want = metrics.evaluate(real, synth)
  assert strict_json(tmp_path / "metrics.json") == pytest.approx(want)  # flat for one set
  assert result == pytest.approx(want)
  plots = EXPECTED_PLOTS | {"nearest_neighbours_synthetic.png"}
  assert {p.name for p in tmp_path.glob("*.png")} == plots
  assert_pngs(tmp_path, plots)
  md = (tmp_path / "report.md").read_text()
  assert "lower is better" in md and "| metric | synthetic |" in md
  assert "**" not in md.split("## ")[1]  # nothing to compare with: no bold
  html = (tmp_path / "report.html").read_text()
  assert set(re.findall(r"<img src='([^']+)'", html)) == plots
  assert set(re.findall(r"\]\(([^)]+\.png)\)", md)) == plots


def test_several_sets_from_files_nested_bold_and_null(tmp_path):
  real = demo(0)
  flat = dataclasses.replace(demo(2), source="flat")
  flat.features[:] = np.where(np.arange(14)[None, :, None] < flat.lengths[:, None, None], 5.0, 0.0)  # constant
  paths = {"real": tmp_path / "real.npz", "copy": tmp_path / "copy.npz", "flat": tmp_path / "flat.npz"}
  for data, path in ((real, paths["real"]), (real, paths["copy"]), (flat, paths["flat"])):
    save_npz(data, str(path))
  out = tmp_path / "out"
  result = report.evaluate_files(str(paths["real"]), [str(paths["copy"]), str(paths["flat"])], str(out),
                                 extra_metrics={"flat": {"accuracy": 0.9}, "copy": {"accuracy": 0.5}},
                                 higher_is_better=("accuracy",), num_examples=1)
  written = strict_json(out / "metrics.json")
  assert set(written) == {"copy", "flat"}  # named by file stem
  assert written["copy"] == {**{k: 0.0 for k in metrics.evaluate(real, real)}, "accuracy": 0.5}
  # constant series have no autocorrelation or correlation where the real ones do: the generator failed them
  # (null, never left out), and the report says why and names the collapse
  failed = {"autocorrelation_mse/traffic_bytes", "pearson_w1/traffic_bytes,latency_ms"}
  assert all(written["flat"][k] is None and np.isnan(result["flat"][k]) for k in failed)
  text = (out / "report.md").read_text()
  assert "Not computed or failed: at_min_gap/latency_ms (flat): the synthetic data does not define it" in text
  assert "; autocorrelation_mse/latency_ms (flat): the synthetic data does not define it" in text
  assert "collapse (flat): traffic_bytes: 100% of the series are flat (8% of the real ones); latency_ms: 100%" in text
  plots = EXPECTED_PLOTS | {"nearest_neighbours_copy.png", "nearest_neighbours_flat.png"}
  assert {p.name for p in out.glob("*.png")} == plots
  assert_pngs(out, plots)

  metric_table, variability = (out / "report.md").read_text().split("## Variability")
  # the variability table: per feature, real then each set; the flat set's series have no spread at all
  assert "| latency_ms | flat | 0 | 1 | n/a | n/a | n/a |" in variability
  rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:]
          for line in metric_table.splitlines() if line.startswith("| ")}
  assert rows.pop("metric") == ["copy", "flat"]
  assert set(rows) == set(written["copy"]) - {"accuracy"} | {"accuracy (higher is better)"}
  assert rows.pop("accuracy (higher is better)") == ["0.5", "**0.9**"]
  for key, (copy, other) in rows.items():  # the exact copy wins (or ties) every distance
    assert copy == "**0**", key
    value = written["flat"].get(key)
    if value is None:
      assert other == "n/a", key
    elif value == 0:
      assert other == "**0**", key  # a tie: both bold
    else:
      assert other == f"{value:.4g}", key


def test_mismatched_schemas_raise(tmp_path):
  real = demo(0)
  save_npz(real, str(tmp_path / "real.npz"))
  other = dataclasses.replace(real, attribute_vars=(real.attribute_vars[0], categorical("region", ["n", "s"])))
  save_npz(other, str(tmp_path / "renamed_labels.npz"))
  with pytest.raises(DataError, match=r"renamed_labels\.npz.*attribute variables.*region"):
    report.evaluate_files(str(tmp_path / "real.npz"), [str(tmp_path / "renamed_labels.npz")], str(tmp_path / "o"))
  swapped = dataclasses.replace(real, features=real.features[:, :, ::-1].copy(),
                                feature_vars=real.feature_vars[::-1], source="swapped")
  with pytest.raises(DataError, match="swapped: feature variables"):
    report.write_report(real, {"s": swapped}, str(tmp_path / "o"))
  with pytest.raises(ValueError, match="share a file stem"):
    report.evaluate_files(str(tmp_path / "real.npz"), [str(tmp_path / "real.npz"), str(tmp_path / "real.npz")],
                          str(tmp_path / "o"))
  with pytest.raises(ValueError, match="not among"):
    report.write_report(real, real, str(tmp_path / "o"), extra_metrics={"typo": {"x": 1.0}})
  assert not (tmp_path / "o").exists()  # nothing written before the input is checked


def test_total_by_splits_metrics_and_plots(tmp_path):
  real, synth = demo(0), demo(1)
  result = report.write_report(real, synth, str(tmp_path), num_examples=1, total_by="region")
  assert result == pytest.approx(metrics.evaluate(real, synth, total_by="region"), nan_ok=True)
  assert any(k.startswith("total_w1/traffic_bytes/region=") for k in result)
  assert (tmp_path / "totals_cdf_traffic_bytes_by_region.png").exists()
  assert not (tmp_path / "totals_cdf_traffic_bytes_by_service.png").exists()


def test_json_safe():
  value = {"a": [1.5, float("nan"), np.float32(2)], "b": ("x", None, True, np.int64(3)), "c": float("inf")}
  assert io_utils.json_safe(value) == {"a": [1.5, None, 2.0], "b": ["x", None, True, 3], "c": None}
  assert json.dumps(io_utils.json_safe({"n": np.int64(3)})) == '{"n": 3}'
