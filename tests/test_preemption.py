"""Preemption and crashes: a run stopped by SIGTERM at a random step, or read while it trains and then killed
outright in the middle of a checkpoint save, resumes to the parameters of the run straight through, with one
metrics row per logged step."""
import json
import os
import random
import signal
import time

import jax
import numpy as np
import pytest

from configs import tiny
from dg_jax.checkpoints import Checkpointer
from dg_jax.failures import WorkdirBusy
from dg_jax.sampling import load_generator, restore_run
from dg_jax.train import train_and_evaluate
from dg_jax.train_step import replica
from dg_jax.workdir_lock import LOCK_FILE
from tests.conftest import run_cli, start_cli

pytestmark = pytest.mark.slow

STEPS = 2000  # about 4 s of tiny training on 2 CPU cores: the signal lands mid-run
LOG_EVERY = 50
OVERRIDES = dict(num_steps=STEPS, log_every=LOG_EVERY, lr_decay_start=0.5)  # resumed mid-decay: exact too


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


def saving(workdir) -> bool:
  """Whether Orbax is writing a checkpoint: its temporary folder exists."""
  try:
    return any(".orbax-checkpoint-tmp" in name for name in os.listdir(workdir / "checkpoints"))
  except FileNotFoundError:
    return False


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
  assert "received SIGTERM again: already stopping" in log
  assert_resumes_to_the_straight_run(w, straight)


def test_a_live_run_survives_readers_a_second_trainer_and_a_kill_inside_a_save(tmp_path, straight):
  """While a run trains, a second trainer is refused and reads see complete checkpoints, disturbing
  nothing; then kill -9 lands inside a checkpoint save: the run resumes to the undisturbed run's parameters."""
  w = tmp_path / "w"
  trainer = start_cli(*cli_args(w, 100), devices=2)
  while not (w / "checkpoints" / "100").exists() and trainer.poll() is None:
    time.sleep(0.05)
  c = tiny.get_config()
  c.train.update(OVERRIDES)
  with pytest.raises(WorkdirBusy, match=f"{w} is being trained by pid {trainer.pid} on host "):
    train_and_evaluate(c, str(w))
  reads = [load_generator(str(w))[2].generated_from.step for _ in range(3) if trainer.poll() is None]
  assert len(reads) == 3 and reads == sorted(reads), reads
  while not saving(w) and trainer.poll() is None:
    pass
  trainer.kill()
  _, log = trainer.communicate(timeout=60)
  assert trainer.returncode == -signal.SIGKILL, log[-3000:]  # killed by us: the readers did not crash it
  assert saving(w), "the kill should land inside a save (its temporary folder left behind); retry if it raced"
  steps = [json.loads(line)["step"] for line in (w / "metrics.jsonl").read_text().splitlines()]
  assert steps[-1] > Checkpointer(str(w)).latest_step()  # rows logged past the last complete checkpoint
  assert_resumes_to_the_straight_run(w, straight)  # ... are dropped
  assert not saving(w)  # the resumed trainer (holding the lock) removed the dead save's folder
  assert (w / LOCK_FILE).read_text() == ""  # and released the lock
