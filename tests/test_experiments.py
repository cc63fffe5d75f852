"""The experiment scripts run end to end (tiny budgets: what they compute is tested elsewhere)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import ROOT


def run_script(name, *args):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="1", PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_compare_baselines(tmp_path, shared_data):
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  from common import mba_splits
  from dg_jax.data.npz_format import load_npz, save_npz
  splits = mba_splits(str(tmp_path))
  train = load_npz(splits["train"])
  save_npz(train.subset(np.arange(0, train.num_samples, 4)), str(tmp_path / "train.npz"))  # fits 2.5x faster
  out = run_script("compare_baselines.py", "--models=hmm", f"--out={tmp_path}", f"--train={tmp_path / 'train.npz'}",
                   f"--test={splits['test']}")
  assert "| metric | hmm |" in out
  scores = json.loads((tmp_path / "report" / "metrics.json").read_text())
  assert scores["jsd/technology"] < 0.05 and "downstream/accuracy/mlp" in scores  # HMM replays attribute rows
  assert json.loads((tmp_path / "summary.json").read_text())["hmm"]["train_seconds"] > 0


SMALL = ("--extra=--config.model.critic_num_units=16", "--extra=--config.model.feature_num_units=16",
         "--extra=--config.model.critic_num_layers=1", "--extra=--config.model.attribute_num_units=16",
         "--extra=--config.model.additional_num_units=16")


def test_dp_tradeoff(tmp_path, shared_data):
  out = run_script("dp_tradeoff.py", "--epsilons=1000", "--steps=4", f"--out={tmp_path / 'dp'}", *SMALL,
                   "--extra=--config.model.sample_len=8", "--extra=--config.train.steps_per_dispatch=4")  # 7 LSTM steps
  rows = {r["run"]: r for r in json.loads((tmp_path / "dp" / "dp.json").read_text())["rows"]}
  assert rows["non-private"]["epsilon"] is None and 0 < rows["epsilon=1000"]["epsilon"] <= 1000
  assert (tmp_path / "dp" / "dp_autocorrelation.png").stat().st_size > 1000 and "| epsilon=1000 |" in out


def test_membership(tmp_path, shared_data):
  run_script("membership.py", "--sizes=20", "--steps=4", f"--out={tmp_path / 'mi'}", *SMALL)
  (row,) = json.loads((tmp_path / "mi" / "membership.json").read_text())["rows"]
  assert row["size"] == 20 and row["epochs"] == 4  # 4 steps of a batch of 20 over 20 series
  # the reported rate is the attack on the run's own members against the 20 series it never saw
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  from membership import mba_pool
  from dg_jax.data.npz_format import load_npz
  from dg_jax.evaluation.membership import membership_inference
  pool = mba_pool()
  order = np.random.default_rng(0).permutation(pool.num_samples)
  members = load_npz(str(tmp_path / "mi" / "size_20" / "members.npz"))
  np.testing.assert_array_equal(members.features, pool.subset(order[:20]).features)
  run = str(tmp_path / "mi" / "size_20" / "run")
  assert row["success_rate"] == membership_inference(run, members, pool.subset(order[-20:]))["membership/success_rate"]


def test_dp_pretrain(tmp_path):
  """--noise_multipliers: the recipe at a given noise, no epsilon budget (the table gives what it spends);
  --sampling=poisson: its private runs Poisson-sampled (noise calibrated to an epsilon: test_dp_tradeoff)."""
  run_script("dp_pretrain.py", "--recipes=dp-finetune", "--noise_multipliers=2.5", "--steps=4", "--public_steps=4",
             "--n_private=60", "--n_holdout=20", "--n_public=40", "--length=24", "--offset=5", "--eval_samples=20",
             f"--out={tmp_path}", *SMALL, "--extra=--config.train.batch_size=20", "--extra=--config.model.sample_len=4",
             "--extra=--config.train.steps_per_dispatch=4", "--sampling=poisson")
  result = json.loads((tmp_path / "dp_pretrain_noise_poisson.json").read_text())
  (row,) = result["rows"]
  assert row["recipe"] == "dp-finetune" and row["noise_multiplier"] == 2.5 and row["steps"] == 4
  assert 0 < row["epsilon"] and len(row["replicas"]) == 2
  assert all(0 <= r["membership"] <= 1 and r["attribute_jsd"] >= 0 for r in row["replicas"])
  # fine-tuning started from the public run, whose data is declared public and left out of the account
  config = json.loads((Path(row["workdir"]) / "config.json").read_text())
  assert config["train"]["init_from"] == result["public"] and config["privacy"]["sampling"] == "poisson"
  assert "| dp-finetune |" in (tmp_path / "dp_pretrain_noise_poisson.md").read_text()
