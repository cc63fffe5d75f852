"""gretel-synthetics' PyTorch DGAN on a dg_jax npz: the side-by-side peer of dg_jax.

Runs INSIDE the gretel venv (see benchmarks/gretel_env.py); imports torch and
gretel only, never dg_jax. The last stdout line is one JSON object.

Input npz (dg_jax format): `features` float32 [n, T, K] in original units, 0
after each series' end; `lengths` int [n]; `attributes` [n, m] whose
categorical columns hold integer codes 0..k-1; `feature_types` and
`attribute_types`, str arrays of 'continuous' / 'categorical'. Optional:
`feature_num_categories` / `attribute_num_categories` int arrays (k per column,
0 for continuous ones); otherwise k = max code + 1.

Modes:
  speed  trains --warmup batches, then times exactly --steps more training
         batches (each one D round, one attribute-D round and one G round on a
         batch of --batch-size), then times generate_numpy(--num-generate).
  train  trains for --minutes of wall clock (checked after every batch, so it
         overshoots by at most one batch), then generates --num-generate
         samples (default: n) and writes them to --output in the input format.

gretel's own training loop is used unchanged: one call to DGAN.train_numpy with
a huge `epochs`, stopped from its per-batch progress_callback. (Calling
train_numpy again would make fresh Adam optimisers, so "one epoch per call" is
not equivalent to continuous training.)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import time
import warnings

import numpy as np
import torch

import gretel_synthetics
from gretel_synthetics.timeseries_dgan.config import DGANConfig, Normalization, OutputType
from gretel_synthetics.timeseries_dgan.dgan import DGAN
from gretel_synthetics.timeseries_dgan.transformations import (BinaryEncodedOutput, OneHotEncodedOutput,
                                                               create_outputs_from_data)

CONTINUOUS, CATEGORICAL = "continuous", "categorical"


class _Stop(Exception):
  """Raised from the progress callback to leave gretel's training loop."""


def _log(msg: str) -> None:
  print(f"[gretel_peer] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--input", required=True, help="dg_jax-format npz")
  p.add_argument("--sample-len", type=int, required=True, help="records per LSTM step; must divide T")
  p.add_argument("--batch-size", type=int, default=100)
  p.add_argument("--mode", choices=("speed", "train"), default="speed")
  p.add_argument("--steps", type=int, default=20, help="speed mode: timed training batches")
  p.add_argument("--warmup", type=int, default=2, help="speed mode: untimed batches before timing")
  p.add_argument("--minutes", type=float, default=1.0, help="train mode: wall-clock training budget")
  p.add_argument("--num-generate", type=int, default=None,
                 help="samples to generate and time (default: n in train mode, 1000 in speed mode; 0 = skip)")
  p.add_argument("--generate-batch-size", type=int, default=None,
                 help="batch size for generation (default: --batch-size, as gretel does)")
  p.add_argument("--output", default=None, help="train mode: npz for the generated samples")
  p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  p.add_argument("--seed", type=int, default=0)
  # Model shape: the paper's defaults, as the brief asks (gretel's own defaults differ).
  p.add_argument("--attribute-num-layers", type=int, default=2)
  p.add_argument("--attribute-num-units", type=int, default=100)
  p.add_argument("--feature-num-layers", type=int, default=1)
  p.add_argument("--feature-num-units", type=int, default=100)
  p.add_argument("--attribute-noise-dim", type=int, default=5, help="gretel default 10; DoppelGANger's TF code 5")
  p.add_argument("--feature-noise-dim", type=int, default=5, help="gretel default 10; DoppelGANger's TF code 5")
  p.add_argument("--learning-rate", type=float, default=1e-3)
  p.add_argument("--beta1", type=float, default=0.5)
  p.add_argument("--gp", type=float, default=10.0, help="gradient penalty coefficient (both critics)")
  p.add_argument("--no-example-scaling", action="store_true", help="turn off auto-normalisation")
  args = p.parse_args(argv)
  if args.mode == "train" and not args.output:
    p.error("--mode train needs --output")
  if args.output and args.num_generate == 0:
    p.error("--output needs --num-generate > 0")
  if args.steps < 1 or args.warmup < 0 or args.minutes <= 0 or args.sample_len < 1 or args.batch_size < 2:
    p.error("need --steps >= 1, --warmup >= 0, --minutes > 0, --sample-len >= 1, --batch-size >= 2")
  if args.num_generate is None:
    args.num_generate = -1  # resolved once n is known
  return args


def load_npz(path: str) -> dict:
  with np.load(path, allow_pickle=False) as z:
    d = {k: z[k] for k in z.files}
  for key in ("features", "lengths", "attributes", "feature_types", "attribute_types"):
    if key not in d:
      raise SystemExit(f"{path}: missing array {key!r}")
  f, a = d["features"], d["attributes"]
  if f.ndim != 3 or a.ndim != 2 or a.shape[0] != f.shape[0] or d["lengths"].shape != (f.shape[0],):
    raise SystemExit(f"{path}: bad shapes features {f.shape}, attributes {a.shape}, lengths {d['lengths'].shape}")
  d["feature_types"] = [str(t) for t in d["feature_types"]]
  d["attribute_types"] = [str(t) for t in d["attribute_types"]]
  for name, types, width in (("feature", d["feature_types"], f.shape[2]), ("attribute", d["attribute_types"], a.shape[1])):
    if len(types) != width or any(t not in (CONTINUOUS, CATEGORICAL) for t in types):
      raise SystemExit(f"{path}: {name}_types must be {width} of {CONTINUOUS!r}/{CATEGORICAL!r}, got {types}")
  return d


def _num_categories(d: dict, role: str, column: np.ndarray, j: int) -> int:
  key = f"{role}_num_categories"
  if key in d and int(d[key][j]) > 0:
    return int(d[key][j])
  return int(np.max(column)) + 1


def _category_output(name: str, k: int, cutoff: int):
  """A gretel discrete output fitted on all codes 0..k-1 (as floats), so its width is k even
  when some category is absent from the data, like dg_jax's one-hot."""
  out = BinaryEncodedOutput(name) if k > cutoff else OneHotEncodedOutput(name)
  out.fit(np.arange(k, dtype=np.float64))
  return out


def build_model(d: dict, args, config: DGANConfig, feats: list, attrs: np.ndarray) -> DGAN:
  """gretel's own output metadata, with categorical outputs refitted on the full code range."""
  otype = {CONTINUOUS: OutputType.CONTINUOUS, CATEGORICAL: OutputType.DISCRETE}
  attribute_outputs, feature_outputs = create_outputs_from_data(
      attrs, feats, [otype[t] for t in d["attribute_types"]], [otype[t] for t in d["feature_types"]],
      normalization=config.normalization, apply_feature_scaling=config.apply_feature_scaling,
      apply_example_scaling=config.apply_example_scaling, binary_encoder_cutoff=config.binary_encoder_cutoff)
  for j, t in enumerate(d["attribute_types"]):
    if t == CATEGORICAL:
      k = _num_categories(d, "attribute", attrs[:, j], j)
      attribute_outputs[j] = _category_output(attribute_outputs[j].name, k, config.binary_encoder_cutoff)
  for j, t in enumerate(d["feature_types"]):
    if t == CATEGORICAL:
      k = _num_categories(d, "feature", np.concatenate([s[:, j] for s in feats]), j)
      feature_outputs[j] = _category_output(feature_outputs[j].name, k, config.binary_encoder_cutoff)
  return DGAN(config, attribute_outputs=attribute_outputs, feature_outputs=feature_outputs)


def _cpu_snapshot() -> tuple:
  """(this process's CPU seconds, whole machine's busy CPU seconds or None) for load diagnostics."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  busy = None
  try:
    with open("/proc/stat") as fh:
      v = [int(x) for x in fh.readline().split()[1:]]
    busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait; guest is in user
  except (OSError, ValueError, IndexError):
    pass
  return r.ru_utime + r.ru_stime, busy


def _load_report(a: tuple, b: tuple, seconds: float) -> dict:
  """Cores this process kept busy, and cores other processes kept busy, over an interval."""
  own = (b[0] - a[0]) / seconds
  other = None if a[1] is None or b[1] is None else max(0.0, (b[1] - a[1]) / seconds - own)
  return {"own_busy_cores": own, "other_busy_cores": other}


def time_generation(model: DGAN, n: int, batch_size: int) -> dict:
  """Times gretel's generate_numpy (network + inverse transforms to original units) and the
  network alone (DGAN._generate per batch, as gretel runs it: with autograd on)."""
  model.config.batch_size = batch_size
  model.generate_numpy(batch_size)  # warm-up
  c0, t0 = _cpu_snapshot(), time.perf_counter()
  attrs, feats = model.generate_numpy(n)
  t_full = time.perf_counter() - t0
  load = _load_report(c0, _cpu_snapshot(), t_full)
  nb = math.ceil(n / batch_size)
  t0 = time.perf_counter()
  for _ in range(nb):
    model._generate(model.attribute_noise_func(batch_size), model.feature_noise_func(batch_size))
  t_net = time.perf_counter() - t0
  return {
      "generate_samples": n, "generate_batch_size": batch_size, "generate_seconds": t_full,
      "generate_samples_per_s": n / t_full, "generate_net_seconds": t_net,
      "generate_net_samples_per_s": nb * batch_size / t_net, "_attrs": attrs, "_feats": feats,
      "generate_own_busy_cores": load["own_busy_cores"], "generate_other_busy_cores": load["other_busy_cores"],
  }


def to_npz_arrays(d: dict, attrs, feats) -> dict:
  feats = np.stack([np.asarray(s, dtype=np.float64) for s in feats]).astype(np.float32)
  n, t = feats.shape[:2]
  if attrs is None:
    attrs = np.zeros((n, 0))
  attrs = np.asarray(attrs, dtype=np.float64)
  out = {
      "features": feats,
      "lengths": np.full((n,), t, dtype=np.int64),  # gretel has no generation flag: every series is length T
      "attributes": attrs,
      "feature_types": np.array(d["feature_types"]),
      "attribute_types": np.array(d["attribute_types"]),
  }
  for key in ("feature_num_categories", "attribute_num_categories"):
    if key in d:
      out[key] = d[key]
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  for category in (UserWarning, FutureWarning, DeprecationWarning):
    # CPU torch: pin_memory / torch.cuda.amp deprecation noise from gretel's loop, every batch.
    warnings.filterwarnings("ignore", category=category)
  torch.set_num_threads(args.threads)
  try:
    torch.set_num_interop_threads(args.threads)
  except RuntimeError:
    pass
  random.seed(args.seed)
  np.random.seed(args.seed)
  torch.manual_seed(args.seed)

  d = load_npz(args.input)
  features, lengths, attributes = d["features"], d["lengths"].astype(np.int64), d["attributes"].astype(np.float64)
  n, T, K = features.shape
  if T % args.sample_len:
    raise SystemExit(f"gretel needs sample_len to divide max_sequence_len: T={T}, sample_len={args.sample_len}")
  variable_length = bool(np.any(lengths < T))
  # gretel takes ragged series as a list of [T_i, K] arrays; it pads them with zeros internally and
  # always generates full-length series.
  feats = [features[i, :lengths[i]].astype(np.float64) for i in range(n)]
  num_generate = args.num_generate if args.num_generate >= 0 else (n if args.mode == "train" else 1000)

  config = DGANConfig(
      max_sequence_len=T, sample_len=args.sample_len, batch_size=args.batch_size, epochs=10**9,
      attribute_noise_dim=args.attribute_noise_dim, feature_noise_dim=args.feature_noise_dim,
      attribute_num_layers=args.attribute_num_layers, attribute_num_units=args.attribute_num_units,
      feature_num_layers=args.feature_num_layers, feature_num_units=args.feature_num_units,
      use_attribute_discriminator=True, normalization=Normalization.ZERO_ONE, apply_feature_scaling=True,
      apply_example_scaling=not args.no_example_scaling, gradient_penalty_coef=args.gp,
      attribute_gradient_penalty_coef=args.gp, attribute_loss_coef=1.0,
      generator_learning_rate=args.learning_rate, generator_beta1=args.beta1,
      discriminator_learning_rate=args.learning_rate, discriminator_beta1=args.beta1,
      attribute_discriminator_learning_rate=args.learning_rate, attribute_discriminator_beta1=args.beta1,
      discriminator_rounds=1, generator_rounds=1, cuda=False, mixed_precision_training=False)
  model = build_model(d, args, config, feats, attributes)
  batches_per_epoch = n // args.batch_size + (1 if n % args.batch_size > 1 else 0)  # gretel drops a last batch of 1

  state = {"steps": 0, "t_start": None, "t_stop": None, "cpu_start": None, "cpu_stop": None}
  warmup = args.warmup if args.mode == "speed" else 0
  budget = args.minutes * 60.0

  def callback(info):
    state["steps"] += 1
    now = time.perf_counter()
    if args.mode == "speed":
      if state["steps"] == warmup:
        state["t_start"], state["cpu_start"] = now, _cpu_snapshot()
      elif state["steps"] == warmup + args.steps:
        state["t_stop"], state["cpu_stop"] = now, _cpu_snapshot()
        raise _Stop()
    else:
      if now - state["t_start"] >= budget:
        state["t_stop"], state["cpu_stop"] = now, _cpu_snapshot()
        raise _Stop()

  _log(f"{args.mode}: n={n} T={T} K={K} m={attributes.shape[1]} sample_len={args.sample_len} "
       f"batch={args.batch_size} threads={torch.get_num_threads()}")
  t_call = time.perf_counter()
  if args.mode == "train" or warmup == 0:
    state["t_start"], state["cpu_start"] = t_call, _cpu_snapshot()
  try:
    model.train_numpy(feats, feature_types=None, attributes=attributes, attribute_types=None,
                      progress_callback=callback)
    raise RuntimeError("gretel's training loop ended before it was stopped")
  except _Stop:
    pass
  steps_timed = state["steps"] - warmup
  seconds = state["t_stop"] - state["t_start"]
  result = {
      "peer": "gretel-synthetics", "gretel_version": getattr(gretel_synthetics, "__version__", "0.22.20"),
      "torch_version": torch.__version__, "device": "cpu", "threads": torch.get_num_threads(),
      "mode": args.mode, "input": os.path.abspath(args.input), "n": n, "T": T, "K": K,
      "m": int(attributes.shape[1]), "sample_len": args.sample_len, "batch_size": args.batch_size,
      "batches_per_epoch": batches_per_epoch, "variable_length_input": variable_length,
      "warmup_steps": warmup, "steps_done": steps_timed, "total_steps": state["steps"],
      "seconds": seconds, "train_steps_per_s": steps_timed / seconds if seconds > 0 else None,
      "setup_and_warmup_seconds": (state["t_start"] - t_call) if warmup else None,
      "epochs_done": state["steps"] / batches_per_epoch, "seed": args.seed,
      # Load while training was timed: other_busy_cores well above 0 means the timing was shared.
      **_load_report(state["cpu_start"], state["cpu_stop"], seconds),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "config": {k: (v.name if hasattr(v, "name") else v) for k, v in config.to_dict().items() if k != "epochs"},
  }
  _log(f"trained {steps_timed} timed steps in {seconds:.2f}s")
  if num_generate > 0:
    gen = time_generation(model, num_generate, args.generate_batch_size or args.batch_size)
    attrs, gfeats = gen.pop("_attrs"), gen.pop("_feats")
    result.update(gen)
    _log(f"generated {num_generate} samples in {gen['generate_seconds']:.2f}s")
    if args.output:
      arrays = to_npz_arrays(d, attrs, gfeats)
      out = os.path.abspath(args.output)
      os.makedirs(os.path.dirname(out), exist_ok=True)
      tmp = out + ".tmp"
      with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
      os.replace(tmp, out)
      result["output"] = out
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
