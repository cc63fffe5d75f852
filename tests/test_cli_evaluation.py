"""The evaluation side of launch.py end to end: a baseline trained and sampled through the same flags as
DoppelGANger, the evaluate mode's report on several synthetic sets, and the S sweep."""
import json
import os

import numpy as np
import pytest

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


def test_sweep_mode_with_seeds_a_held_out_file_and_resume(tmp_path, cli):
  """K=2 seeds per S, each scored (its best checkpoint) against a held-out draw; the tables give mean ± std
  over seeds; a launch with one more S (as after an interrupted sweep) reuses the finished one."""
  save_npz(make_demo(64, 24, seed=1, variable_lengths=True), str(tmp_path / "test.npz"))  # tiny.py's, another draw
  w = tmp_path / "sweep"
  args = ("--mode=sweep", "--config=configs/tiny.py", f"--workdir={w}", "--config.train.num_steps=10",
          "--config.train.num_seeds=2", "--config.train.eval_every=5", "--config.train.eval_holdout=0",
          "--num_samples=32", f"--real_test={tmp_path / 'test.npz'}")
  log = cli(*args, "--sample_lens=2")
  assert "sweep: training S=2 (2 seeds)" in log
  log = cli(*args, "--sample_lens=2,4")
  assert "S=2 already trained and scored" in log and "sweep: training S=4 (2 seeds)" in log
  result = json.loads((w / "sweep.json").read_text())
  assert set(result["runs"]) == {"2", "4"} and result["num_seeds"] == 2
  assert result["scored_against"] == str(tmp_path / "test.npz")
  assert all(os.path.isdir(w / f"sample_len_{s}" / "checkpoints") for s in (2, 4))  # one run folder per S
  for s in ("2", "4"):
    run = result["runs"][s]
    assert len(run["seeds"]) == 2 and run["seeds"][0] != run["seeds"][1]
    for name in ("autocorrelation_mse/mean", "length_w1", "jsd/region"):
      values = [seed[name] for seed in run["seeds"]]
      assert run["mean"][name] == pytest.approx(np.mean(values)) and run["std"][name] == pytest.approx(np.std(values))
    # each seed was scored from its best checkpoint (scored at steps 5 and 10)
    assert all(seed["generated_from/step"] in (5, 10) for seed in run["seeds"])
  means = {int(s): r["mean"]["autocorrelation_mse/mean"] for s, r in result["runs"].items()}
  assert result["best_sample_len"] == min(means, key=means.get)
  assert f"best S={result['best_sample_len']}" in log
  table = (w / "sweep.md").read_text()
  assert "mean ± std over 2 seed(s)" in table and " ± " in table.splitlines()[-1]
  assert (w / "sweep.png").read_bytes()[:4] == b"\x89PNG"
  assert sweep_table({int(s): r for s, r in result["runs"].items()}, result["best_sample_len"],
                     str(tmp_path / "test.npz"), 2) == table


def test_parse_sample_lens():
  assert parse_sample_lens("10, 1,5,10") == [1, 5, 10]
  for bad in ("", "0,2", "a"):
    try:
      parse_sample_lens(bad)
    except ValueError as e:
      assert "sample_lens" in str(e)
    else:
      raise AssertionError(f"{bad!r} was accepted")
