"""One trainer per workdir: the lock a trainer takes before it writes anything, and releases on every exit.

Local and shared file systems: an exclusive `flock` on <workdir>/trainer.lock, which holds the holder's
host, pid and start time. The kernel (or the NFS server) releases it when the holder dies, however it
dies; the holder's line left in the file then tells the next trainer that it takes over a stale lock.
Object stores (gs://, s3://), which have no locks: a lease, the same file renewed every
LEASE_SECONDS / 4 by a thread; a lease not renewed for LEASE_SECONDS is stale and is taken over
(hosts' clocks are assumed to agree to well within LEASE_SECONDS).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

from dg_jax import io_utils
from dg_jax.failures import WorkdirBusy

log = logging.getLogger(__name__)
LOCK_FILE = "trainer.lock"
LEASE_SECONDS = 120.0


def _me() -> dict:
  return dict(host=socket.gethostname(), pid=os.getpid(),
              started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), token=uuid.uuid4().hex)


def _describe(holder: dict) -> str:
  return f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')})"


def _busy(workdir: str, holder: dict) -> WorkdirBusy:
  return WorkdirBusy(f"{workdir} is being trained by {_describe(holder)}: wait for it to end or stop it, or "
                     "train in another --workdir (reading the run: --mode=generate/export need no lock)")


class FileLock:
  """flock on a local or shared file system."""

  def __init__(self, workdir: str):
    self.workdir, self.path, self.fd = workdir, os.path.join(workdir, LOCK_FILE), None

  def acquire(self) -> "FileLock":
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = self._read(fd)
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise _busy(self.workdir, holder) from None
      raise
    stale = self._read(fd)
    if stale:
      log.warning("%s: taking over the lock of %s, which ended without releasing it", self.workdir, _describe(stale))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_me()).encode(), 0)
    os.fsync(fd)
    self.fd = fd
    return self

  @staticmethod
  def _read(fd: int) -> dict:
    data = os.pread(fd, 4096, 0)
    try:
      return json.loads(data) if data.strip() else {}
    except ValueError:
      return {"pid": "?", "host": "?", "started": "?"}

  def check(self) -> None:
    pass

  def release(self) -> None:
    if self.fd is not None:
      os.ftruncate(self.fd, 0)  # an empty file: released cleanly, nothing to take over
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None


class Lease:
  """A renewed lease file, for object stores (no locks there)."""

  def __init__(self, workdir: str, seconds: float = LEASE_SECONDS, settle: float = 2.0):
    self.workdir, self.path, self.seconds, self.settle = workdir, io_utils.join(workdir, LOCK_FILE), seconds, settle
    self.me, self.lost, self._stop = _me(), None, threading.Event()

  def _read(self) -> dict:
    try:
      return json.loads(io_utils.read_text(self.path)) if io_utils.exists(self.path) else {}
    except ValueError:
      return {}

  def _write(self) -> None:
    io_utils.write_text(self.path, json.dumps(dict(self.me, renewed=time.time())))

  def acquire(self) -> "Lease":
    holder = self._read()
    if holder and time.time() - holder.get("renewed", 0) < self.seconds:
      raise _busy(self.workdir, holder)
    if holder:
      log.warning("%s: taking over the lease of %s, not renewed for %.0f s", self.workdir, _describe(holder),
                  time.time() - holder.get("renewed", 0))
    self._write()
    time.sleep(self.settle)  # two trainers that wrote at once: the later write wins, the other backs off
    holder = self._read()
    if holder.get("token") != self.me["token"]:
      raise _busy(self.workdir, holder)
    threading.Thread(target=self._renew, daemon=True, name="dg_jax-lease").start()
    return self

  def _renew(self) -> None:
    while not self._stop.wait(self.seconds / 4) and self.renew():
      pass

  def renew(self) -> bool:
    """Renews the lease; False (and `check` raises from then on) if another trainer took it over."""
    holder = self._read()
    if holder.get("token") != self.me["token"]:
      self.lost = holder
      log.error("%s: the lease was taken over by %s", self.workdir, _describe(holder))
      return False
    try:
      self._write()
    except Exception as e:  # noqa: BLE001  (a transient failure: the next renewal may succeed)
      log.warning("%s: renewing the lease failed: %s", self.workdir, e)
    return True

  def check(self) -> None:
    """Raises if another trainer took the lease over (this one stalled for longer than the lease)."""
    if self.lost:
      raise _busy(self.workdir, self.lost)

  def release(self) -> None:
    self._stop.set()
    if self._read().get("token") == self.me["token"]:
      io_utils.remove(self.path)


def acquire(workdir: str):
  """The workdir's lock (FileLock, or Lease on an object store, or where flock is not supported)."""
  if not io_utils.is_remote(workdir):
    try:
      return FileLock(workdir).acquire()
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      log.warning("%s: the file system does not support flock (%s); using a lease file", workdir, e)
  return Lease(workdir).acquire()
