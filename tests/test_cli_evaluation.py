"""The evaluation side of launch.py end to end: a baseline trained and sampled through the same flags as
DoppelGANger, the evaluate mode's report on several synthetic sets, and the S sweep."""
import json

import numpy as np
import pytest

from dg_jax.data.demo import make_demo
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.evaluation import metrics
from dg_jax.sweep import CRITERION, parse_grid, parse_sample_lens, parse_variants, summarise, sweep_table

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
      f"--out={out}", "--posthoc_scores=quick")
  scores = json.loads((out / "metrics.json").read_text())
  assert set(scores) == {"real", "hmm"}  # one column per set, named by file stem
  posthoc_keys = {"discriminative_score", "discriminative_score_std", "predictive_score", "predictive_score_std"}
  # the real data against itself: 0 but for the post-hoc scores (posthoc.py's memorisation artefact)
  assert all(v == 0 for k, v in scores["real"].items() if v is not None and k not in posthoc_keys)
  assert 0 <= scores["hmm"]["discriminative_score"] <= 0.5 and 0 < scores["hmm"]["predictive_score"] < 1
  want = metrics.evaluate(load_npz(real), hmm)
  assert set(scores["hmm"]) == set(want) | posthoc_keys
  for key, value in want.items():
    np.testing.assert_allclose(scores["hmm"][key], value, rtol=1e-9)
  assert "| metric | real | hmm |" in (out / "report.md").read_text()


def test_sweep_mode_with_seeds_a_held_out_file_variants_and_resume(tmp_path, cli):
  """K=2 seeds per variant, each scored (its best checkpoint) against a held-out draw; the tables give
  mean ± std over seeds; variants that differ only in per-replica numbers train as one program; a second
  launch reuses a finished variant of the same resolved config and trains one that switches off the
  auxiliary critic, tested against it, whose replica 1 diverges (NaN batches, tests/fault_launch.py): a
  failed seed, counted, and the sweep goes on."""
  save_npz(make_demo(64, 24, seed=1, variable_lengths=True), str(tmp_path / "test.npz"))  # tiny.py's, another draw
  w = tmp_path / "sweep"
  args = ("--mode=sweep", "--config=configs/tiny.py", f"--workdir={w}", "--config.train.num_steps=10",
          "--config.train.num_seeds=2", "--config.train.eval_every=5", "--config.train.eval_holdout=0",
          "--config.train.max_rollbacks=0", "--config.train.eval_samples=32", "--num_samples=32",
          f"--real_test={tmp_path / 'test.npz'}", "--posthoc_scores=quick")  # eval_samples: scorings 6x cheaper
  # two variants that differ only in the learning rate: one program of 4 replicas, split back per variant
  # replica 3 (fast's second seed) generates flat series (tests/fault_launch.py): a collapsed seed, counted
  log = cli(*args, "--variants=sample_len_2=model.sample_len=2;fast=model.sample_len=2,train.learning_rate=3e-3",
            fault="flat:3")
  assert ("sweep: training sample_len_2, fast as one program of 4 replicas (2 seeds each; they differ only in "
          "train.learning_rate)") in log
  result = json.loads((w / "sweep.json").read_text())
  assert [result["runs"][n]["failed"] for n in ("sample_len_2", "fast")] == [0, 1] and result["ranking"][-1] == "fast"
  assert result["runs"]["fast"]["seeds"][1]["failures"][0].startswith("traffic_bytes: 100% of the series are flat")
  assert "| fast | 1 of 2 |" in (w / "sweep.md").read_text()
  group = json.loads((w / "sample_len_2+fast" / "config.json").read_text())["train"]
  assert group["num_seeds"] == 4 and json.loads(group["per_replica"]) == {"train.learning_rate": [1e-3] * 2 + [3e-3] * 2}
  fast = json.loads((w / "fast" / "sweep_scores.json").read_text())
  assert [s["generated_from/seed"] for s in fast["seeds"]] == [2, 3] and fast["trained_in"] == str(w / "sample_len_2+fast")
  log = cli(*args, "--variants=sample_len_2=model.sample_len=2;no_aux=model.sample_len=2,model.aux_critic=False",
            "--baseline=sample_len_2", fault="nan:1@7")
  assert "sample_len_2 already trained and scored" in log and "sweep: training no_aux (2 seeds)" in log
  assert "sweep: no_aux: diverged: frozen after 0 rollback(s): replica 1 before step 6" in log
  result = json.loads((w / "sweep.json").read_text())
  assert set(result["runs"]) == {"sample_len_2", "no_aux"} and result["num_seeds"] == 2
  assert result["scored_against"] == str(tmp_path / "test.npz") and result["baseline"] == "sample_len_2"
  assert json.loads((w / "no_aux" / "config.json").read_text())["model"]["aux_critic"] is False
  assert [result["runs"][n]["failed"] for n in ("sample_len_2", "no_aux")] == [0, 1]
  assert result["ranking"] == ["sample_len_2", "no_aux"] and result["best"] == "sample_len_2"
  assert result["runs"]["no_aux"]["seeds"][1]["failures"][0] == "diverged: frozen with its state before step 6"
  for name, run in result["runs"].items():
    assert len(run["seeds"]) == 2 and run["seeds"][0] != run["seeds"][1]
    for metric in ("autocorrelation_mse/mean", "length_w1", "jsd/region", "discriminative_score"):
      values = [seed[metric] for seed in run["seeds"]]
      assert run["mean"][metric] == pytest.approx(np.mean(values))  # the failed seed's values count too
      assert run["std"][metric] == pytest.approx(np.std(values, ddof=1))
      assert (run["p_vs_baseline"][metric] is None) == (name == "sample_len_2")
    # each seed was scored from its best checkpoint (scored at steps 5 and 10)
    assert all(seed["generated_from/step"] in (5, 10) for seed in run["seeds"])
  assert f"best {result['best']}" in log
  table = (w / "sweep.md").read_text()
  assert "mean ± std (ddof=1) over 2 seed(s)" in table and " ± " in table.splitlines()[-1]
  assert "| sample_len_2 (best, baseline) | 0 of 2 |" in table and "| no_aux | 1 of 2 |" in table
  assert (w / "sweep.png").read_bytes()[:4] == b"\x89PNG"
  assert sweep_table(result) == table


def test_sweep_counts_a_collapsed_seed_and_ranks_failures_last():
  def seed(acf, failures=()):
    return {"autocorrelation_mse/mean": acf, "length_w1": 1.0, "failures": list(failures)}
  runs = {"base": [seed(0.3), seed(0.4), seed(0.5)],
          "collapsing": [seed(0.01), seed(0.02), seed(0.2, ["x: 90% of the series are flat (0% of the real ones)"])],
          "nan": [seed(0.2), seed(float("nan")), seed(None)]}
  summary = summarise(runs, "base")
  assert [summary[n]["failed"] for n in runs] == [0, 1, 2]
  # the collapsed seed's values count in its mean; undefined values are left out, and counted as failures
  assert summary["collapsing"]["mean"]["autocorrelation_mse/mean"] == pytest.approx(0.23 / 3)
  assert summary["nan"]["mean"]["autocorrelation_mse/mean"] == 0.2 and summary["nan"]["std"][CRITERION] is None
  assert summary["base"]["std"][CRITERION] == pytest.approx(0.1)  # ddof=1
  result = dict(scored_against="t", num_seeds=3, baseline="base", best="base", ranking=["base", "collapsing", "nan"],
                cut_short={}, runs={n: dict(summary[n], seeds=runs[n]) for n in runs})
  rows = sweep_table(result).splitlines()[-3:]
  assert rows[0].startswith("| base (best, baseline) | 0 of 3 |") and "| 1 of 3 |" in rows[1]
  assert "| 2 of 3 |" in rows[2]
  # with 3 seeds per variant no rank test reaches p < 0.05: no marker; 4 and 4 fully separated do
  assert summary["collapsing"]["p_vs_baseline"][CRITERION] == pytest.approx(0.1) and " *" not in rows[1]
  four = summarise({"a": [seed(v) for v in (1, 2, 3, 4)], "b": [seed(v) for v in (5, 6, 7, 8)]}, "a")
  assert four["b"]["p_vs_baseline"][CRITERION] < 0.05


def test_parse_variants_and_grid():
  from configs import tiny
  variants = parse_variants("paper=;no_aux=model.aux_critic=False,train.learning_rate=1e-4")
  assert [v.name for v in variants] == ["paper", "no_aux"] and variants[0].settings == ()
  c = variants[1].apply(tiny.get_config())
  assert c.model.aux_critic is False and c.train.learning_rate == 1e-4
  grid = parse_grid("model.sample_len=1,2;train.d_rounds=1,2")
  assert [v.name for v in grid] == ["sample_len_1__d_rounds_1", "sample_len_1__d_rounds_2",
                                    "sample_len_2__d_rounds_1", "sample_len_2__d_rounds_2"]
  assert grid[3].apply(tiny.get_config()).train.d_rounds == 2
  for bad, match in (("a=model.aux_critc=False", "model.aux_critc is not a config field"),
                     ("a=model.aux_critic=maybe", "not a valid bool"), ("a=;a=", "distinct names"),
                     ("a/b=", "distinct names"), ("a=model.aux_critic", "field=value")):
    with pytest.raises(ValueError, match=match):
      [v.apply(tiny.get_config()) for v in parse_variants(bad)]


def test_parse_sample_lens():
  assert parse_sample_lens("10, 1,5,10") == [1, 5, 10]
  for bad in ("", "0,2", "a"):
    try:
      parse_sample_lens(bad)
    except ValueError as e:
      assert "sample_lens" in str(e)
    else:
      raise AssertionError(f"{bad!r} was accepted")
