"""The evaluation side of launch.py end to end: a baseline trained and sampled through the same flags as
DoppelGANger, the evaluate mode's report on several synthetic sets, and the S sweep."""
import json
import os

import numpy as np

from dg_jax.data.demo import make_demo
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.evaluation import metrics
from dg_jax.sweep import parse_sample_lens, sweep_table

TINY_DATA = ["--config.data.demo.num_samples=64", "--config.data.demo.length=24",
             "--config.data.demo.variable_lengths=True"]


def test_baseline_and_evaluate_modes(tmp_path, cli):
  real = str(tmp_path / "real.npz")
  save_npz(make_demo(64, 24, seed=0, variable_lengths=True), real)  # the demo data the runs train on
  cli("--config=configs/baselines.py:hmm", f"--workdir={tmp_path / 'hmm'}", *TINY_DATA,
      "--config.baseline.hmm.n_iter=5")
  cli("--mode=generate", f"--workdir={tmp_path / 'hmm'}", "--num_samples=40", f"--output={tmp_path / 'hmm.npz'}")
  hmm = load_npz(str(tmp_path / "hmm.npz"))
  assert hmm.num_samples == 40 and [v.name for v in hmm.attribute_vars] == ["service", "region"]

  out = tmp_path / "report"
  cli("--mode=evaluate", f"--real={real}", f"--synthetic={real}", f"--synthetic={tmp_path / 'hmm.npz'}",
      f"--out={out}")
  scores = json.loads((out / "metrics.json").read_text())
  assert set(scores) == {"real", "hmm"}  # one column per set, named by file stem
  assert all(v == 0 for k, v in scores["real"].items() if v is not None)  # the real data against itself
  want = metrics.evaluate(load_npz(real), hmm)
  for key, value in scores["hmm"].items():
    np.testing.assert_allclose(value, want[key], rtol=1e-9)
  assert "| metric | real | hmm |" in (out / "report.md").read_text()


def test_sweep_mode(tmp_path, cli):
  w = tmp_path / "sweep"
  log = cli("--mode=sweep", "--config=configs/tiny.py", f"--workdir={w}", "--sample_lens=2,4",
            "--config.train.num_steps=10", "--num_samples=32")
  result = json.loads((w / "sweep.json").read_text())
  assert set(result["runs"]) == {"2", "4"}
  assert all(os.path.isdir(w / f"sample_len_{s}" / "checkpoints") for s in (2, 4))  # one run folder per S
  means = {int(s): r["autocorrelation_mse/mean"] for s, r in result["runs"].items()}
  assert result["best_sample_len"] == min(means, key=means.get)
  assert f"best S={result['best_sample_len']}" in log
  assert (w / "sweep.md").read_text() == sweep_table({s: result["runs"][str(s)] for s in (2, 4)},
                                                      result["best_sample_len"])


def test_parse_sample_lens():
  assert parse_sample_lens("10, 1,5,10") == [1, 5, 10]
  for bad in ("", "0,2", "a"):
    try:
      parse_sample_lens(bad)
    except ValueError as e:
      assert "sample_lens" in str(e)
    else:
      raise AssertionError(f"{bad!r} was accepted")
