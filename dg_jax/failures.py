"""How runs end: exit statuses, the exceptions behind them, stop signals, and failures shared by processes.

Exit statuses of launch.py (README, "Exit statuses"):

  0         success (also: train.max_minutes spent, checkpointed)
  1         crash: an unexpected error (its traceback, then one line) or a failed checkpoint save; the last
            complete checkpoint is kept
  2         bad input: data, flags, a path that is not a run, a refused resume (one line, no traceback)
  3         diverged: every replica, or some of them, frozen after train.max_rollbacks rollbacks
            (everything saved; the others trained on)
  4         the workdir is held by another trainer (one line naming it)
  128 + N   stopped by signal N (143: SIGTERM, 130: SIGINT), checkpointed; the same command resumes.
            A third signal, or one ABORT_AFTER seconds after the first, aborts at once without saving.

With several processes an exception on one of them is announced through JAX's coordination service;
every other process prints the same line and exits with the same status, even when it is blocked in a
collective waiting for the failed one (a watcher thread ends it).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)
EXIT_CRASH, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_BUSY = 1, 2, 3, 4
ABORT_AFTER = 120.0  # seconds after the first stop signal when another one aborts at once


class BadInput(ValueError):
  """Bad input (data, flags, paths, a refused resume): one line naming the file, field and problem."""
  status = EXIT_BAD_INPUT


class WorkdirBusy(RuntimeError):
  """Another trainer holds the workdir's lock."""
  status = EXIT_BUSY


class Diverged(RuntimeError):
  """Replicas were frozen after diverging; raised once everything is saved. `frozen_at`: per replica, the
  step whose state it was frozen with (-1: not frozen); `step`: the step the run reached."""
  status = EXIT_DIVERGED

  def __init__(self, message: str, frozen_at=(), step: int = 0):
    super().__init__(message)
    self.frozen_at, self.step = list(frozen_at), step


class Preempted(Exception):
  """Training stopped on a signal (SIGTERM from a scheduler, or SIGINT) after checkpointing the step reached."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpointed, and the same "
                     "command resumes it")
    self.signum, self.step, self.status = signum, step, 128 + signum


JOINT = (Preempted, Diverged)  # decided together by every process: nothing to announce


def exit_status(error: BaseException) -> int:
  if isinstance(error, KeyboardInterrupt):
    return 128 + signal.SIGINT
  return getattr(error, "status", EXIT_CRASH)


def one_line(error: BaseException) -> str:
  if isinstance(error, KeyboardInterrupt):
    return "error: interrupted (SIGINT)"
  if hasattr(error, "status"):
    return f"error: {error}"
  return f"error: crashed with {type(error).__name__}: {error}"


class StopSignals:
  """While active, SIGTERM and SIGINT do not kill the process: the first asks the loop to stop after the
  dispatch in flight and checkpoint; a second one (during that final save, say) is logged and the save
  still completes; a third, or any one ABORT_AFTER seconds after the first, aborts at once with status
  128 + N, keeping the last complete checkpoint. A watcher thread (woken through signal.set_wakeup_fd)
  does the counting, so this works even while the main thread is blocked in a collective whose peer died."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, abort_after: float = ABORT_AFTER):
    self.received, self.abort_after, self.count, self.first = None, abort_after, 0, None
    self._previous, self._wakeup, self._pipe = {}, None, None

  def _watch(self, read_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
      while data := pipe.read(64):  # b"" once __exit__ closes the write end
        for signum in data:
          self._on_signal(signum)

  def _on_signal(self, signum: int) -> None:
    name, now = signal.Signals(signum).name, time.time()
    self.count += 1
    if self.count == 1:
      self.first, self.received = now, signum
      log.warning("received %s: stopping after the dispatch in flight, then checkpointing (a third signal "
                  "aborts at once)", name)
    elif self.count == 2 and now - self.first < self.abort_after:
      log.warning("received %s again: already stopping; the checkpoint is saved first", name)
    else:
      print(f"error: received {name} {'a third time' if self.count >= 3 else f'{now - self.first:.0f} s after the first'}: "
            "aborting at once without saving (the last complete checkpoint is kept)", file=sys.stderr, flush=True)
      os._exit(128 + signum)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
      return self
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._pipe = (read_fd, write_fd)
    self._wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    self._previous = {s: signal.signal(s, lambda *_: None) for s in self.SIGNALS}  # the watcher acts
    threading.Thread(target=self._watch, args=(read_fd,), daemon=True, name="dg_jax-signals").start()
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    if self._pipe:
      signal.set_wakeup_fd(self._wakeup)
      os.close(self._pipe[1])  # the watcher reads end-of-file, closes its end and returns
      self._pipe = None


# ---- failures shared by the processes of a run ----

FAILURE_KEY = "dg_jax/failure"
ACK_TIMEOUT_MS = 10_000  # how long a failing process waits for the others to take its failure
EXIT_GRACE = 2.0  # and then for them to be gone: a peer that acknowledged exits at once, but if this process
                  # (which may host the coordination service) went first, the peer's JAX client would abort


def watch_peers(poll_seconds: float = 0.5) -> None:
  """Several processes: starts a thread that ends this process, with the same line and status, when
  another process announces a failure."""
  from dg_jax import sharding
  client = sharding.coordination_client()
  if client is None:
    return
  me = sharding.process_index()
  stop = threading.Event()

  def watch():
    while not stop.is_set():
      try:
        value = client.key_value_try_get(FAILURE_KEY)
      except Exception:  # noqa: BLE001  (not set yet, or the service is shutting down)
        value = None
      if value:
        failure = json.loads(value)
        if failure["process"] != me:
          print(f"{failure['line']} (on process {failure['process']}; this is process {me})", file=sys.stderr,
                flush=True)
          try:
            client.key_value_set(f"{FAILURE_KEY}/ack/{me}", "1")
          finally:
            os._exit(failure["status"])
        return
      stop.wait(poll_seconds)
  thread = threading.Thread(target=watch, daemon=True, name="dg_jax-peers")
  thread.start()

  def stop_watching():  # at exit, before JAX's shutdown (registered earlier, so run later): a daemon thread
    stop.set()          # caught inside the client's call as Python finalises aborted the process
    thread.join(5.0)    # ("FATAL: exception not rethrown", status -6) after a run had finished
  atexit.register(stop_watching)


def announce(error: BaseException) -> bool:
  """Several processes: tells the others that this one fails with `error` (they exit with the same line
  and status), and waits a little for them to take it. True if it did: the caller must then leave with
  os._exit, since JAX's shutdown at exit would wait for, then abort on, the peers that are gone."""
  from dg_jax import sharding
  client = sharding.coordination_client()
  if client is None or isinstance(error, JOINT):
    return False
  me = sharding.process_index()
  try:
    client.key_value_set(FAILURE_KEY, json.dumps(dict(process=me, status=exit_status(error), line=one_line(error))))
  except Exception:  # noqa: BLE001  (another process announced first: its failure is the run's)
    return True
  deadline = time.time() + ACK_TIMEOUT_MS / 1000
  for other in range(sharding.process_count()):
    if other != me:
      try:
        client.blocking_key_value_get(f"{FAILURE_KEY}/ack/{other}", max(1, int(1000 * (deadline - time.time()))))
      except Exception:  # noqa: BLE001  (already gone)
        pass
  time.sleep(EXIT_GRACE)
  return True
