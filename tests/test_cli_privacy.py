"""Private training from launch.py on eight devices, then generation from the private run (one device:
tests/test_experiments.py runs dp_tradeoff.py, whose private runs go through launch.py on one device)."""
import json

import pytest

from dg_jax.data.npz_format import load_npz


def test_private_training_from_the_cli(tmp_path, cli, devices=8):
  w = tmp_path / "w"
  log = cli("--config=configs/tiny.py", f"--workdir={w}", "--config.train.num_steps=10",
            "--config.privacy.enabled=True", "--config.privacy.noise_multiplier=1.0", devices=devices)
  assert f"{devices} device(s)" in log and "DP-SGD critics" in log
  assert "-differentially private after 10 steps" in log
  rows = [json.loads(line) for line in (w / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 10 and 0 < rows[-1]["epsilon"] < float("inf")
  assert json.loads((w / "config.json").read_text())["privacy"]["delta"] == pytest.approx(1 / 640)  # 1/(10 n)
  cli("--mode=generate", f"--workdir={w}", "--num_samples=8", f"--output={tmp_path / 'g.npz'}")
  assert load_npz(str(tmp_path / "g.npz")).num_samples == 8
