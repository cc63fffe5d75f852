"""Test setup: 8 virtual CPU devices (set before JAX initialises), the shared data folder, launch.py runs."""
import atexit
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the launch.py runs they start) compile the same tiny steps: share compilations
# through JAX's persistent cache, kept for this test session only.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="dg_jax_test_jit_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# The tests' programs are tiny and compiled once or twice each: compiling dominates the suite. LLVM at -O0
# compiles them about a quarter faster (measured on the suite's slowest tests), and XLA's older loop
# emitters in place of its MLIR fusion emitters take a third less CPU again (a tiny launch.py run from a
# cold cache: 19-22 s of CPU against 28-32 s), at no cost that matters here. Inherited by the launch.py
# processes the tests start; a user's XLA_FLAGS keep their own choice.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import pytest  # noqa: E402
from etils.epath import testing as epath_testing  # noqa: E402

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
sys.path.insert(0, ROOT)  # the repository root
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end runs of several processes (deselect with -m 'not slow')")


def pytest_collection_modifyitems(items):
  """The slow tests first: pytest-xdist's workers then end on short tests, not one of them alone on a long one."""
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def shared_data():
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data folder {SHARED_DATA} is absent (CI always has it)")
  return SHARED_DATA


def start_cli(*args: str, devices: int = 1, log=subprocess.PIPE, fault: str = "") -> subprocess.Popen:
  """Starts `python launch.py ARGS` on `devices` virtual CPU devices; its log (stderr) goes to `log`.
  fault: one fault to inject (tests/fault_launch.py)."""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(devices), PYTHONPATH=ROOT, DG_JAX_FAULT=fault)
  script = os.path.join(ROOT, "tests", "fault_launch.py") if fault else os.path.join(ROOT, "launch.py")
  return subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=env, stdout=log, stderr=log, text=True)


def run_cli(*args: str, devices: int = 1, fault: str = "") -> str:
  """Runs `python launch.py ARGS` on `devices` virtual CPU devices (with `fault`: start_cli's); returns
  its log (stderr)."""
  proc = start_cli(*args, devices=devices, fault=fault)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return err


def run_processes(*args: str, num_processes: int = 2, devices: int = 2, per_process=None,
                  timeout: float = 300, fault: str = "", expect_status: int = 0) -> list[str]:
  """Runs launch.py ARGS as `num_processes` JAX processes on this machine (one mesh over gloo), each
  with `devices` CPU devices and, if given, its own extra flags per_process[i]; returns their logs.
  A run that hangs (processes disagreeing on a collective) fails the test at `timeout`; every process
  must exit with `expect_status`."""
  with socket.socket() as s:  # a free port for the coordinator
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  files = [tempfile.TemporaryFile("w+") for _ in range(num_processes)]  # pipes could fill and block
  procs = [start_cli(*args, *(per_process[i] if per_process else ()), f"--coordinator_address=localhost:{port}",
                     f"--num_processes={num_processes}", f"--process_id={i}", devices=devices, log=files[i],
                     fault=fault)
           for i in range(num_processes)]
  try:
    for p in procs:
      p.wait(timeout=timeout)
  finally:
    for p in procs:
      p.kill()
  logs = []
  for f in files:
    f.seek(0)
    logs.append(f.read())
    f.close()
  for i, (p, log) in enumerate(zip(procs, logs)):
    assert p.returncode == expect_status, f"process {i}:\n{log[-3000:]}"
  return logs


@pytest.fixture
def cli():
  return run_cli


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs://bucket/... served from tmp_path/bucket/...; a plain open() of such a path would fail."""
  monkeypatch.chdir(tmp_path)  # a raw-string write to "gs://..." would create tmp_path/"gs:" instead
  local = lambda p: str(p).replace("gs://", f"{tmp_path}/", 1)  # noqa: E731
  one = lambda fn, path, *a, **k: fn(local(path), *a, **k)  # noqa: E731
  two = lambda fn, src, dst, *a, **k: fn(local(src), local(dst), *a, **k)  # noqa: E731
  names = ("exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat", "walk")
  with epath_testing.mock_epath(**{n: one for n in names}, copy=two, rename=two, replace=two):
    yield tmp_path / "bucket"
  assert not (tmp_path / "gs:").exists()
