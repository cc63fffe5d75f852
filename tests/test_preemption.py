"""Preemption and crashes: a run stopped by SIGTERM (or killed outright) at a random step resumes to
the parameters of the run straight through, with one metrics row per logged step."""
import json
import random
import signal
import time

import jax
import numpy as np
import pytest

from configs import tiny
from dg_jax.checkpoints import Checkpointer
from dg_jax.sampling import restore_run
from dg_jax.train import train_and_evaluate
from dg_jax.train_step import replica
from tests.conftest import run_cli, start_cli

pytestmark = pytest.mark.slow

STEPS = 2000  # about 4 s of tiny training on 2 CPU cores: the signal lands mid-run
LOG_EVERY = 50
OVERRIDES = dict(num_steps=STEPS, log_every=LOG_EVERY)


def cli_args(workdir, checkpoint_every):
  return ["--config=configs/tiny.py", f"--workdir={workdir}", f"--config.train.checkpoint_every={checkpoint_every}",
          *(f"--config.train.{k}={v}" for k, v in OVERRIDES.items())]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run, on 2 devices like the CLI runs below."""
  c = tiny.get_config()
  c.train.update(OVERRIDES, checkpoint_every=STEPS)
  c.num_devices = 2
  workdir = str(tmp_path_factory.mktemp("straight"))
  train_and_evaluate(c, workdir)
  return replica(jax.device_get(restore_run(workdir)[1]), 0)


def interrupt(workdir, checkpoint_every, signals):
  """Starts a CLI run, waits for its first metrics row plus a random delay, sends `signals`."""
  proc = start_cli(*cli_args(workdir, checkpoint_every), devices=2)
  deadline = time.time() + 120
  while not (workdir / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  delay = random.uniform(0, 1.0)
  print(f"interrupting after {delay:.2f} s with {signals}")
  time.sleep(delay)
  for s in signals:
    proc.send_signal(s)
    time.sleep(0.05)
  _, log = proc.communicate(timeout=120)
  return proc.returncode, log


def assert_resumes_to_the_straight_run(workdir, straight):
  run_cli(*cli_args(workdir, STEPS), devices=2)
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(set(steps)) and steps[-1] == STEPS  # none repeated
  assert set(range(LOG_EVERY, STEPS + 1, LOG_EVERY)) <= set(steps)  # none lost (a stop adds its own row)
  resumed = replica(jax.device_get(restore_run(str(workdir))[1]), 0)
  assert int(resumed["step"]) == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), resumed, straight)


def test_sigterm_checkpoints_the_step_reached_and_resumes_exactly(tmp_path, straight):
  w = tmp_path / "w"
  # a second SIGTERM arrives while the first is being handled (the dispatch or the save): nothing is lost
  code, log = interrupt(w, STEPS, [signal.SIGTERM, signal.SIGTERM])
  assert code == 128 + signal.SIGTERM, log[-3000:]
  step = Checkpointer(str(w)).latest_step()  # no periodic checkpoint before STEPS: this one is the stop's
  assert step is not None and 0 < step < STEPS and f"stopped at step {step}" in log, log[-3000:]
  assert "received SIGTERM: already stopping" in log
  assert_resumes_to_the_straight_run(w, straight)


def test_a_killed_run_drops_metrics_rows_past_its_checkpoint(tmp_path, straight):
  w = tmp_path / "w"
  code, _ = interrupt(w, 500, [signal.SIGKILL])
  assert code == -signal.SIGKILL
  steps = [json.loads(line)["step"] for line in (w / "metrics.jsonl").read_text().splitlines()]
  saved = Checkpointer(str(w)).latest_step() or 0
  assert steps[-1] > saved, "the kill should fall between two checkpoints; retry if it raced one"
  assert_resumes_to_the_straight_run(w, straight)
