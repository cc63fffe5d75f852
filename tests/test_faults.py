"""Faults injected into tiny runs (issue "Nothing lost, nothing stuck"): divergence, an unreadable
checkpoint, changed data; and the locks, logs, signal handling and retries they rely on. Kills,
preemption, and readers and a second trainer against a live run: test_preemption.py; a write error on
one of two processes: test_multiprocess.py."""
import json
import logging
import os
import signal
import threading
import time

import jax
import numpy as np
import pytest

from configs import tiny
from dg_jax import io_utils, sharding, workdir_lock
from dg_jax.checkpoints import UNREADABLE_DIR, Checkpointer, save_bundle
from dg_jax.data.demo import make_demo
from dg_jax.data.npz_format import save_npz
from dg_jax.failures import BadInput, WorkdirBusy
from dg_jax.sampling import load_generator, restore_run
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.settings import model_config, train_config
from dg_jax.train import MetricsLog, initial_state_from, load_init_source, train_and_evaluate
from dg_jax.train_step import init_replicas, replica
from tests.conftest import start_cli

close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731


def tiny_config(num_devices=1, **train):
  c = tiny.get_config()
  c.num_devices = num_devices  # 0: all 8 test devices
  c.train.update(train)
  return c


def state_of(workdir):
  return jax.device_get(restore_run(str(workdir))[1])


def strict_rows(workdir):
  """metrics.jsonl as strict JSON: NaN or Infinity tokens fail."""
  def refuse(token):
    raise ValueError(f"non-strict JSON token {token}")
  return [json.loads(line, parse_constant=refuse) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_a_diverging_replica_is_rolled_back_then_frozen_and_the_others_train_on(tmp_path):
  """K=3 with max_rollbacks=1; replica 1's batches of steps 2 and 7 hold NaN (tests/fault_launch.py): it is
  rolled back after steps 1..5, frozen after steps 6..10 with its state before step 6; replicas 0 and 2
  compute exactly the undisturbed run; the run saves everything and ends with status 3 and one line."""
  flags = dict(num_seeds=3, num_steps=15, max_rollbacks=1, checkpoint_every=15)
  straight, w = tmp_path / "straight", tmp_path / "w"
  proc = start_cli("--config=configs/tiny.py", f"--workdir={w}", *(f"--config.train.{k}={v}" for k, v in
                                                                    flags.items()), fault="nan:1@2,7")
  train_and_evaluate(tiny_config(**flags), str(straight))
  _, log = proc.communicate(timeout=300)
  assert proc.returncode == 3, log[-3000:]
  assert "replica 1 (seed 1): non-finite aux_w_distance, d_loss, g_loss, w_distance in steps 1..5: rolled back to " \
         "its state before step 1, those steps skipped, with fresh random streams (rollback 1 of 1)" in log
  assert "in steps 6..10, after 1 rollback(s): frozen with its state before step 6; the other replicas go on" in log
  assert log.strip().splitlines()[-1] == (
      "error: diverged: frozen after 1 rollback(s): replica 1 before step 6; the other 2 replica(s) trained to step "
      f"15. Everything is saved in {w}; to go on with other settings start a new run from it: "
      f"--config.train.init_from={w} (and e.g. a lower --config.train.learning_rate)")
  a, b = state_of(straight), state_of(w)
  for k in (0, 2):
    jax.tree.map(close, replica(a["params"], k), replica(b["params"], k))
  np.testing.assert_array_equal(b["health"]["rollbacks"], [0, 2, 0])
  np.testing.assert_array_equal(b["health"]["frozen_at"], [-1, 5, -1])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(b["params"]))
  rows = strict_rows(w)  # strict JSON: null where replica 1's values were not finite
  assert [r["step"] for r in rows] == [10, 15] and rows[0]["d_loss"][1] is None and rows[0]["d_loss"][0] is not None
  _, params, config = load_generator(str(w))  # by default a replica that did not diverge
  assert config.generated_from.replica == 0


def test_an_unreadable_newest_checkpoint_falls_back_and_resumes_exactly(tmp_path, caplog):
  straight, w = tmp_path / "straight", tmp_path / "w"
  train_and_evaluate(tiny_config(num_steps=30, num_devices=0), str(straight))  # 8 devices, as test_training's
  train_and_evaluate(tiny_config(num_steps=20, num_devices=0), str(w))
  for root, _, files in os.walk(w / "checkpoints" / "20" / "state"):  # a failing disk garbles step 20's arrays
    for name in files:
      (w / root / name).write_bytes(b"garbage")
  listing = sorted(str(p) for p in w.rglob("*"))
  with caplog.at_level(logging.WARNING):
    _, state, _ = restore_run(str(w))  # a reader falls back too, and changes nothing
  assert int(jax.device_get(state["step"])[0]) == 10
  assert f"checkpoint {w / 'checkpoints' / '20'} is unreadable" in caplog.text
  assert sorted(str(p) for p in w.rglob("*")) == listing
  train_and_evaluate(tiny_config(num_steps=30, num_devices=0), str(w))  # sets step 20 aside and redoes it
  assert [p.name.split(".")[0] for p in (w / UNREADABLE_DIR).iterdir()] == ["20"]
  assert Checkpointer(str(w)).steps() == [20, 30]
  jax.tree.map(close, state_of(w)["params"], state_of(straight)["params"])
  assert [r["step"] for r in strict_rows(w)] == [10, 20, 30]


def test_resume_on_changed_data_is_refused_naming_both_fingerprints(tmp_path):
  path = str(tmp_path / "data.npz")
  save_npz(make_demo(64, 24, seed=0, variable_lengths=True), path)
  c = tiny_config(num_steps=5, checkpoint_every=5)
  c.data.path = path
  train_and_evaluate(c, str(tmp_path / "w"))
  save_npz(make_demo(64, 24, seed=1, variable_lengths=True), path)  # the same file name, other data
  c.train.num_steps = 10
  with pytest.raises(BadInput, match=r"the training data changed since the run began: .* now has fingerprint "
                                     r"[0-9a-f]{32} \(64 series\); the run was trained on [0-9a-f]{32} \(64 series"):
    train_and_evaluate(c, str(tmp_path / "w"))


def test_init_from_another_run_or_its_bundle(tmp_path):
  """train.init_from: the new run's first state holds the source's weights (Adam states only when
  asked), a bundle gives the generator and fresh critics; the run trains and records where it began."""
  a = tmp_path / "a"
  train_and_evaluate(tiny_config(num_steps=10, num_devices=0), str(a))
  source = state_of(a)

  def first_state(init_from, num_seeds=2, **train):
    c = tiny_config(num_seeds=num_seeds, init_from=init_from, **train)
    tc = train_config(c)
    origin = load_init_source(tc, c)
    state, _ = initial_state_from(DoppelGANger(origin["schema"], model_config(c)), tc, origin, sharding.make_mesh(1, num_seeds))
    return jax.device_get(state)
  same = lambda x, y: np.testing.assert_array_equal(x, np.broadcast_to(y, x.shape))  # noqa: E731
  state = first_state(f"{a}@10")  # K=2 from a one-replica run: both replicas start from its weights
  jax.tree.map(same, state["params"], source["params"])
  jax.tree.map(same, state["best"]["generator"], source["params"]["generator"])
  assert int(state["g_opt"][0].count[0]) == 0 and int(state["step"][0]) == 0  # a new run, a fresh Adam
  state = first_state(str(a), init_optimizer=True)
  jax.tree.map(same, state["d_opt"], source["d_opt"])

  model, params, config = load_generator(str(a))
  save_bundle(str(tmp_path / "bundle"), params, model.schema, config.to_json())
  state = first_state(str(tmp_path / "bundle"), num_seeds=1)
  jax.tree.map(same, state["params"]["generator"], source["params"]["generator"])
  fresh = jax.device_get(init_replicas(model, train_config(tiny_config()), 0, 1)[0])
  jax.tree.map(same, state["params"]["critic"], fresh["params"]["critic"])  # critics start afresh

  with pytest.raises(BadInput, match="a bundle, which holds no optimiser state"):
    first_state(str(tmp_path / "bundle"), init_optimizer=True)
  wrong = tiny_config(init_from=str(a))
  wrong.model.feature_num_units = 12
  with pytest.raises(BadInput, match=r"its model differs from config.model \(feature_num_units=16, not 12\)"):
    train_and_evaluate(wrong, str(tmp_path / "d"))
  # train.fixed_parts: the named generator parts keep the source's weights, the others train
  train_and_evaluate(tiny_config(num_steps=5, num_devices=0, init_from=f"{a}@10", fixed_parts="lstm,heads"),
                     str(tmp_path / "b"))
  assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["init_from"] == f"{a}@10"
  assert Checkpointer(str(tmp_path / "b")).latest_step() == 5
  start, end = source["params"]["generator"]["params"], state_of(tmp_path / "b")["params"]["generator"]["params"]
  for part in ("lstm", "heads"):
    jax.tree.map(same, end[part], start[part])
  assert not np.allclose(end["attribute_mlp"]["Dense_0"]["kernel"], start["attribute_mlp"]["Dense_0"]["kernel"])
  with pytest.raises(ValueError, match=r"unknown parts \['head'\]"):
    train_config(tiny_config(fixed_parts="lstm,head", init_from=str(a)))
  with pytest.raises(ValueError, match="needs train.init_from"):
    train_config(tiny_config(fixed_parts="lstm"))


def test_file_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path, caplog):
  lock = workdir_lock.FileLock(str(tmp_path)).acquire()
  second = start_cli("--config=configs/tiny.py", f"--workdir={tmp_path}")
  _, err = second.communicate(timeout=300)
  assert second.returncode == 4, err[-2000:]  # one line naming the holder
  assert err.strip().splitlines()[-1].startswith(f"error: {tmp_path} is being trained by pid {os.getpid()} on host ")
  assert "Traceback" not in err and os.listdir(tmp_path) == [workdir_lock.LOCK_FILE]
  lock.release()
  (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(dict(pid=999999, host="gone", started="earlier")))
  with caplog.at_level(logging.WARNING):
    workdir_lock.FileLock(str(tmp_path)).acquire().release()  # left by a killed trainer: the kernel freed it
  assert "taking over the lock of pid 999999 on host gone (started earlier)" in caplog.text


def test_lease_on_an_object_store(fake_bucket, caplog):
  lease = workdir_lock.Lease("gs://bucket/run", seconds=60, settle=0).acquire()
  held = json.loads((fake_bucket / "run" / workdir_lock.LOCK_FILE).read_text())
  assert held["pid"] == os.getpid() and held["token"] == lease.me["token"]
  with pytest.raises(WorkdirBusy, match="is being trained by pid"):
    workdir_lock.Lease("gs://bucket/run", seconds=60, settle=0).acquire()
  lease.check()
  held["renewed"] -= 120  # its holder stopped renewing two minutes ago
  (fake_bucket / "run" / workdir_lock.LOCK_FILE).write_text(json.dumps(held))
  with caplog.at_level(logging.WARNING):
    taker = workdir_lock.Lease("gs://bucket/run", seconds=60, settle=0).acquire()
  assert "taking over the lease of pid" in caplog.text
  assert not lease.renew()  # the stalled holder's next renewal finds the taker's lease: it stops
  with pytest.raises(WorkdirBusy, match="is being trained by pid"):
    lease.check()
  lease.release()  # not the holder any more: leaves the taker's lease alone
  assert (fake_bucket / "run" / workdir_lock.LOCK_FILE).exists()
  taker.release()
  assert not (fake_bucket / "run" / workdir_lock.LOCK_FILE).exists()


def test_metrics_log_appends_strict_json_and_drops_a_cut_line_on_resume(tmp_path):
  log = MetricsLog(str(tmp_path), 0, enabled=True, tensorboard=False)
  log.append(dict(step=10, d_loss=1.5, g_loss=float("nan")))
  log.append(dict(step=20, d_loss=[1.0, float("inf")]))
  with open(tmp_path / "metrics.jsonl", "a") as fh:
    fh.write('{"step": 30, "d_lo')  # a kill in the middle of a row
  assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[:2]] == [10, 20]
  MetricsLog(str(tmp_path), 20, enabled=True, tensorboard=False)  # the resume from step 20
  rows = strict_rows(tmp_path)
  assert rows == [dict(step=10, d_loss=1.5, g_loss=None), dict(step=20, d_loss=[1.0, None])]


def test_remote_writes_retry_transient_failures(fake_bucket, monkeypatch, caplog):
  monkeypatch.setattr(time, "sleep", lambda s: None)
  calls = []

  def flaky():
    calls.append(1)
    if len(calls) <= 2:
      raise ConnectionError("503 Service Unavailable")
    return "done"
  with caplog.at_level(logging.WARNING):
    assert io_utils.retry_remote(flaky, "an upload") == "done"
  assert len(calls) == 3 and caplog.text.count("an upload failed (ConnectionError: 503 Service Unavailable)") == 2
  calls.clear()
  with pytest.raises(ConnectionError):
    io_utils.retry_remote(flaky, "an upload", attempts=2)
  io_utils.write_text("gs://bucket/run/x.json", "{}")  # an upload goes through retry_remote
  assert (fake_bucket / "run" / "x.json").read_text() == "{}"


def test_reading_a_path_that_is_not_a_run_creates_nothing(tmp_path):
  with pytest.raises(BadInput, match="not a training run"):
    restore_run(str(tmp_path / "typo"))
  assert not (tmp_path / "typo").exists()


def test_a_third_signal_aborts_at_once_even_while_the_main_thread_is_busy(monkeypatch, caplog):
  """The signal watcher runs in its own thread: a main thread stuck elsewhere (a collective whose peer
  died) still gets the first signal's stop request, the second's notice, and the third's abort."""
  from dg_jax import failures
  aborted = threading.Event()
  monkeypatch.setattr(failures.os, "_exit", lambda status: (aborted.status.append(status), aborted.set()))
  aborted.status, before = [], signal.getsignal(signal.SIGTERM)
  with caplog.at_level(logging.WARNING), failures.StopSignals() as signals:
    for count in range(3):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.2)
      assert signals.received == signal.SIGTERM and signals.count == count + 1
    assert aborted.wait(5) and aborted.status == [128 + signal.SIGTERM]
  assert "received SIGTERM again: already stopping" in caplog.text
  assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_a_save_orbax_skips_is_an_error_not_a_checkpointed_line(tmp_path):
  from dg_jax.checkpoints import CheckpointError
  from dg_jax.data.loaders import load_dataset
  from dg_jax.train import fit_schema_from_config
  c = tiny.get_config()
  schema = fit_schema_from_config(load_dataset(c.data), c)
  ckpt = Checkpointer(str(tmp_path), writer=True)
  state, key = dict(w=np.ones(2, np.float32)), jax.random.key(0)
  ckpt.save(5, state, key, c.to_json(), schema)
  ckpt.wait()
  with pytest.raises(CheckpointError, match=r"the checkpoint of step 3 was not saved \(Orbax skipped it; the kept "
                                            r"steps are \[5\]\)"):
    ckpt.save(3, state, key, c.to_json(), schema)
  ckpt.close()
