"""launch.py's process-level settings: JAX's persistent compilation cache, what it imports."""
import os
import subprocess
import sys

from conftest import ROOT


def launch(workdir, *args, home):
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # conftest's cache
  env.update(JAX_NUM_CPU_DEVICES="1", PYTHONPATH=ROOT, HOME=str(home))
  r = subprocess.run([sys.executable, "launch.py", "--config=configs/tiny.py", "--config.train.num_steps=5",
                      f"--workdir={workdir}", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]


def test_compile_cache_is_on_by_default_filled_once_and_reused(tmp_path):
  cache = tmp_path / "home" / ".cache" / "dg_jax" / "xla"  # the default: a per-user folder
  launch(tmp_path / "a", home=tmp_path / "home")
  steps = lambda: sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_train_dispatch"))  # noqa: E731
  entries = steps()
  assert entries, sorted(p.name for p in cache.iterdir())
  launch(tmp_path / "b", home=tmp_path / "home")  # the same program: read, not written again
  # (smaller programs compiling near launch.py's 1 s threshold may be kept by one launch and not the other)
  assert steps() == entries


def test_devices_mode_reports_processes_and_devices(capsys):
  import launch
  launch._devices()
  assert capsys.readouterr().out.startswith("process 0 of 1: 8 local and 8 global device(s), cpu")


def test_runs_without_privacy_do_not_load_the_privacy_accountant():
  """dp_accounting loads much of scipy, 1.5-2.5 s of CPU in every launch.py process: only private runs import it."""
  code = ("import sys, launch, dg_jax.train, dg_jax.sampling, dg_jax.sweep, dg_jax.retrain; "
          "assert 'dp_accounting' not in sys.modules and 'scipy.stats' not in sys.modules")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
