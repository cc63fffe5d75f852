"""A throwaway venv holding gretel-synthetics' PyTorch DGAN, the side-by-side peer of dg_jax.

gretel-synthetics is never a dependency of dg_jax: it lives in its own venv
(default `.bench/gretel-venv` under the repository root, git-ignored) and runs
`benchmarks/gretel_peer.py` in a subprocess that answers with one JSON line.

Why the recipe is what it is: gretel-synthetics 0.22.20 declares `rdt<1.3`,
which has no Python 3.11 build, so it is installed with `--no-deps`; its
timeseries DGAN needs only torch (installed first), numpy<1.24, pandas<2,
scipy<1.11 (gretel uses `scipy.stats.mode(...).mode[0]`) and
category-encoders 2.4.0.

Standard library only: JAX benchmarks import this module.

    from benchmarks.gretel_env import ensure_gretel_venv, run_in_gretel
    py = ensure_gretel_venv()                      # builds once, then a no-op
    result = run_in_gretel(["--input", "x.npz", "--sample-len", "10",
                            "--mode", "speed", "--steps", "20"])
    result["train_steps_per_s"]

Command line: `python benchmarks/gretel_env.py` builds (or checks) the venv and
prints its python; `python benchmarks/gretel_env.py -- ARGS...` also runs
gretel_peer.py with ARGS and prints its JSON result.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import venv

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_VENV = ".bench/gretel-venv"
PEER_SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "gretel_peer.py")

# Each step is one `pip install` call, in this order (torch first).
INSTALL_STEPS: tuple[tuple[str, ...], ...] = (
    ("torch==2.13.0",),
    ("numpy<1.24", "pandas<2", "scipy<1.11", "category-encoders==2.4.0"),
    ("--no-deps", "gretel-synthetics==0.22.20"),
)
_MARKER = ".dg_jax_gretel_ready.json"
_IMPORT_CHECK = ("import torch, numpy, pandas, scipy, category_encoders; "
                 "import gretel_synthetics.timeseries_dgan.dgan; "
                 "print(torch.__version__, numpy.__version__)")


class GretelPeerError(RuntimeError):
  """The gretel venv could not be built, or gretel_peer.py failed or printed no JSON result."""


def _log(msg: str) -> None:
  print(f"[gretel_env] {msg}", file=sys.stderr, flush=True)


def _resolve(path: str) -> str:
  """Relative paths are taken against the repository root, not the working directory."""
  path = os.fspath(path)
  return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def venv_python(path: str = DEFAULT_VENV) -> str:
  """The python executable inside the venv at `path` (it may not exist yet)."""
  return os.path.join(_resolve(path), "bin", "python")


def _recipe() -> dict:
  return {"steps": [list(s) for s in INSTALL_STEPS], "python": "%d.%d" % sys.version_info[:2]}


def _is_ready(root: str, python: str) -> bool:
  marker = os.path.join(root, _MARKER)
  if not (os.path.exists(python) and os.path.exists(marker)):
    return False
  try:
    with open(marker) as fh:
      return json.load(fh).get("recipe") == _recipe()
  except (OSError, ValueError):
    return False


def ensure_gretel_venv(path: str = DEFAULT_VENV, *, base_python: str | None = None,
                       rebuild: bool = False, quiet: bool = False) -> str:
  """Creates the gretel venv at `path` if it is missing or incomplete; returns its python executable.

  Idempotent: a finished venv carries a marker file recording the install recipe,
  and a later call with the same recipe only checks that the marker and python
  exist. An interrupted build (no marker) is finished on the next call;
  `rebuild=True` deletes the venv and starts over. `base_python` (default: the
  running interpreter, which must be CPython 3.11 for the torch wheel) only
  matters when the venv is created. Progress goes to stderr.
  """
  root = _resolve(path)
  python = venv_python(root)
  if rebuild and os.path.exists(root):
    _log(f"removing {root}")
    shutil.rmtree(root)
  if _is_ready(root, python):
    return python

  t0 = time.time()
  if not os.path.exists(python):
    _log(f"creating venv {root}")
    os.makedirs(os.path.dirname(root), exist_ok=True)
    if base_python is None or os.path.realpath(base_python) == os.path.realpath(sys.executable):
      venv.EnvBuilder(with_pip=True, clear=True).create(root)
    else:
      subprocess.run([base_python, "-m", "venv", "--clear", root], check=True)
  marker = os.path.join(root, _MARKER)
  if os.path.exists(marker):
    os.remove(marker)
  env = _clean_env()
  for step in INSTALL_STEPS:
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", *step]
    _log("$ " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=env, stdout=None if not quiet else subprocess.DEVNULL,
                          stderr=subprocess.STDOUT if not quiet else subprocess.PIPE, text=True)
    if proc.returncode != 0:
      tail = (proc.stderr or "")[-3000:] if quiet else "(see pip output above)"
      raise GretelPeerError(f"pip install {' '.join(step)} failed with exit code {proc.returncode}: {tail}")
  check = subprocess.run([python, "-c", _IMPORT_CHECK], env=env, capture_output=True, text=True)
  if check.returncode != 0:
    raise GretelPeerError(f"the gretel venv at {root} was installed but its imports fail:\n{check.stderr[-3000:]}")
  with open(marker, "w") as fh:
    json.dump({"recipe": _recipe(), "versions": check.stdout.strip()}, fh)
  _log(f"gretel venv ready in {time.time() - t0:.0f}s (torch, numpy = {check.stdout.strip()})")
  return python


def _clean_env(extra: dict | None = None) -> dict:
  """The caller's environment without what would leak the caller's Python packages into the venv."""
  env = dict(os.environ)
  for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
    env.pop(key, None)
  env["PYTHONNOUSERSITE"] = "1"
  if extra:
    env.update({k: str(v) for k, v in extra.items()})
  return env


def run_in_gretel(script_args, *, venv_path: str = DEFAULT_VENV, timeout: float | None = None,
                  env: dict | None = None, echo_stderr: bool = True, ensure: bool = True) -> dict:
  """Runs `benchmarks/gretel_peer.py *script_args` with the gretel venv's python; returns its JSON result.

  `script_args` are gretel_peer.py's command-line arguments (strings or numbers).
  The result is the last non-empty stdout line, parsed as JSON. `ensure=True`
  builds the venv first if needed. The child's stderr (gretel/torch warnings,
  progress) is passed through to ours when `echo_stderr`, else captured and
  quoted on failure. `env` adds environment variables for the child.
  Raises GretelPeerError on a non-zero exit, a timeout, or no JSON line.
  """
  python = ensure_gretel_venv(venv_path) if ensure else venv_python(venv_path)
  cmd = [python, PEER_SCRIPT, *[str(a) for a in script_args]]
  try:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_clean_env(env), stdout=subprocess.PIPE,
                          stderr=None if echo_stderr else subprocess.PIPE, text=True, timeout=timeout)
  except subprocess.TimeoutExpired as exc:
    raise GretelPeerError(f"gretel_peer.py timed out after {timeout}s: {' '.join(cmd[1:])}") from exc
  lines = [ln for ln in (proc.stdout or "").splitlines() if ln.strip()]
  if proc.returncode != 0:
    err = "" if echo_stderr else (proc.stderr or "")[-4000:]
    raise GretelPeerError(f"gretel_peer.py exited with {proc.returncode}: {' '.join(cmd[1:])}\n"
                          f"stdout tail: {lines[-5:]}\n{err}")
  if not lines:
    raise GretelPeerError("gretel_peer.py printed nothing on stdout")
  try:
    result = json.loads(lines[-1])
  except ValueError as exc:
    raise GretelPeerError(f"gretel_peer.py's last stdout line is not JSON: {lines[-1][:500]!r}") from exc
  if not isinstance(result, dict):
    raise GretelPeerError(f"gretel_peer.py's JSON result is not an object: {lines[-1][:500]!r}")
  return result


def _main(argv: list[str]) -> int:
  if "--" in argv:
    i = argv.index("--")
    own, peer = argv[:i], argv[i + 1:]
  else:
    own, peer = argv, None
  rebuild = "--rebuild" in own
  python = ensure_gretel_venv(rebuild=rebuild)
  if peer is None:
    print(python)
  else:
    print(json.dumps(run_in_gretel(peer, ensure=False)))
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))
