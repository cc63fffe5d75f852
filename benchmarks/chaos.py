"""Random faults against one training run; prints what each did and what survived.

  python benchmarks/chaos.py [--faults 12] [--seed 0] [--steps 3000]

One run (configs/tiny.py, K=2 replicas, 2 CPU devices, checkpoints every 100 steps, 2 kept) is launched
again and again; each launch meets one fault drawn at random:

  sigterm       SIGTERM at a random moment (a preemption): expect 143, the step reached checkpointed
  sigterm_x3    three SIGTERMs at once: expect an abort (143) that keeps the last complete checkpoint
  sigkill       SIGKILL at a random moment
  sigkill_save  SIGKILL inside a checkpoint save (found by polling for Orbax's temporary folder)
  corrupt       the newest checkpoint's arrays overwritten with garbage before the launch: it must fall
                back to the older one (then SIGTERM)
  readers       `--mode=generate` run against the live workdir twice (then SIGTERM): the readers succeed
                and the trainer does not notice
  second        a second trainer launched into the live workdir: expect 4 (then SIGTERM the first)
  nan           replica 1's batch at a random step holds NaN: replica 1 is rolled back (then SIGTERM)

Then the run is finished without faults and compared with the same run trained straight through:
replica 0 must hold the same parameters; replica 1 too, unless it was rolled back (a rollback changes its
course by design); metrics.jsonl must hold every logged step once, as strict JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = ("sigterm", "sigterm_x3", "sigkill", "sigkill_save", "corrupt", "readers", "second", "nan")


def flags(workdir: str, steps: int) -> list[str]:
  return ["--config=configs/tiny.py", f"--workdir={workdir}", "--config.train.num_seeds=2",
          f"--config.train.num_steps={steps}", "--config.train.checkpoint_every=100", "--config.train.log_every=50"]


def start(args: list[str], fault: str = "") -> subprocess.Popen:
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", DG_JAX_FAULT=fault)
  script = os.path.join(ROOT, "tests", "fault_launch.py") if fault else os.path.join(ROOT, "launch.py")
  return subprocess.Popen([sys.executable, script, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def latest_step(workdir: str) -> int:
  folder = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps, default=0)


def saving(workdir: str) -> bool:
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(".orbax-checkpoint-tmp" in n for n in os.listdir(folder))


def wait_until_training(proc, workdir: str, since: float) -> None:
  """Until the launch logged a row (it is past compiling) or ended."""
  path = os.path.join(workdir, "metrics.jsonl")
  while proc.poll() is None and not (os.path.exists(path) and os.path.getmtime(path) > since):
    time.sleep(0.02)


def one_fault(fault: str, workdir: str, steps: int, rng: random.Random) -> tuple[int, str]:
  """Launches the run with `fault`; -> (exit status, what happened)."""
  note = ""
  if fault == "corrupt":
    step = latest_step(workdir)
    if step:
      for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
        for name in files:
          with open(os.path.join(root, name), "wb") as fh:
            fh.write(b"garbage")
      note = f"garbled step {step}; "
  nan_step = latest_step(workdir) + rng.randint(20, 200)
  proc, since = start(flags(workdir, steps), f"nan:1@{nan_step}" if fault == "nan" else ""), time.time()
  wait_until_training(proc, workdir, since)
  if fault == "readers":
    out = os.path.join(tempfile.mkdtemp(), "g.npz")
    codes = [subprocess.run([sys.executable, "launch.py", "--mode=generate", f"--workdir={workdir}",
                             "--num_samples=20", f"--output={out}"], cwd=ROOT, capture_output=True,
                            env=dict(os.environ, JAX_NUM_CPU_DEVICES="1")).returncode for _ in range(2)]
    note += f"readers exited {codes}; "
  elif fault == "second":
    second = subprocess.run([sys.executable, "launch.py", *flags(workdir, steps)], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, JAX_NUM_CPU_DEVICES="2"))
    note += (f"second trainer exited {second.returncode}" + (
        f": {second.stderr.strip().splitlines()[-1][:60]}...; " if second.returncode else
        " (the first had finished: the lock was free); "))
  elif fault == "sigkill_save":
    while not saving(workdir) and proc.poll() is None:
      pass
  else:
    time.sleep(rng.uniform(0.2, 1.5))
  if proc.poll() is None:
    signals = dict(sigkill=[signal.SIGKILL], sigkill_save=[signal.SIGKILL],
                   sigterm_x3=[signal.SIGTERM] * 3).get(fault, [signal.SIGTERM])
    for s in signals:  # a moment apart: identical signals that are pending at once merge into one
      proc.send_signal(s)
      time.sleep(0.1)
  log, _ = proc.communicate(timeout=300)
  if fault == "corrupt":
    note += "fell back to an older checkpoint; " if "is unreadable" in log else "NO FALLBACK; "
  if fault == "nan":
    note += (f"NaN at step {nan_step}: " + ("replica 1 rolled back; " if "rolled back" in log else "not reached; "))
  if fault == "sigterm_x3":
    note += "aborted at once; " if "aborting at once" in log else "saved before the third signal; "
  last = [line for line in log.strip().splitlines() if line.startswith(("error:", "W", "I"))]
  return proc.returncode, note + f"checkpoint at step {latest_step(workdir)}" + (
      f"; last line: {last[-1][-90:]}" if last and proc.returncode not in (0, -9, 143) else "")


def params_of(workdir: str):
  import jax
  from dg_jax.sampling import restore_run
  return jax.device_get(restore_run(workdir)[1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--faults", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=3000)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix="dg_chaos_")
  run, straight = os.path.join(root, "run"), os.path.join(root, "straight")
  print("| # | fault | exit status | what happened |\n|---|---|---|---|")
  for i in range(args.faults):
    if latest_step(run) >= args.steps:
      break
    fault = rng.choice(FAULTS)
    code, note = one_fault(fault, run, args.steps, rng)
    print(f"| {i + 1} | {fault} | {code} | {note} |", flush=True)
  final = subprocess.run([sys.executable, "launch.py", *flags(run, args.steps)], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, JAX_NUM_CPU_DEVICES="2"))
  print(f"| end | none (finish the run) | {final.returncode} | checkpoint at step {latest_step(run)} |")
  subprocess.run([sys.executable, "launch.py", *flags(straight, args.steps)], cwd=ROOT, check=True,
                 capture_output=True, env=dict(os.environ, JAX_NUM_CPU_DEVICES="2"))

  import jax
  a, b = params_of(run), params_of(straight)
  for r in range(2):
    rollbacks = int(a["health"]["rollbacks"][r])
    diff = max(float(np.max(np.abs(x[r] - y[r]))) for x, y in zip(jax.tree.leaves(a["params"]),
                                                                       jax.tree.leaves(b["params"])))
    print(f"replica {r}: {rollbacks} rollback(s); max |parameter - uninterrupted run's| = {diff:.3g}"
          + ("" if rollbacks else (" (same run)" if diff < 1e-5 else " (DIFFERS)")))
  rows = [json.loads(line, parse_constant=lambda t: (_ for _ in ()).throw(ValueError(t)))
          for line in open(os.path.join(run, "metrics.jsonl"))]
  steps = [r["step"] for r in rows]
  expected = set(range(50, args.steps + 1, 50))
  print(f"metrics.jsonl: {len(rows)} rows, strict JSON; duplicated steps: {len(steps) - len(set(steps))}; "
        f"missing logged steps: {len(expected - set(steps))}; in order: {steps == sorted(steps)}")
  shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()
