"""train_and_evaluate(config, workdir): the training loop around the pure step.

Resumes from the workdir's latest checkpoint by default; batches are a function of the step, so a
resumed run continues exactly where it stopped. With config.privacy.enabled the critics train with
DP-SGD (dg_jax/privacy.py): batches are sampled independently per step, the epsilon spent so far
is logged, and training stops before the epsilon budget (privacy.target_epsilon) would be exceeded.

Preemption: on SIGTERM or SIGINT the dispatch in flight finishes, the step reached is checkpointed and
`Preempted` is raised (launch.py exits with 128 + the signal number); the next launch resumes exactly.
Several processes take every decision to stop (steps, wall clock, privacy budget, signals) jointly,
so they leave the loop at the same step and enter the checkpoint save together.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import signal
import threading
import time

import jax
import ml_collections
import numpy as np
import logging

from dg_jax import io_utils, privacy, scoring, sharding
from dg_jax.checkpoints import Checkpointer
from dg_jax.data import encoding
from dg_jax.data.batching import ReplicaBatches
from dg_jax.data.loaders import load_dataset
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.settings import ModelConfig, PrivacyConfig, TrainConfig, model_config, privacy_config, train_config
from dg_jax.train_step import init_replicas, jit_train_step

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CONFIG_HISTORY = "config_history"  # each launch's config, named by time and the step it started from
TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"


def fit_schema_from_config(dataset, config) -> encoding.Schema:
  """data.log1p: "auto" (encoding.fit_schema's auto_log) or the names of variables to model as log1p(x)."""
  dc = config.data
  names = [x.strip() for x in dc.log1p.split(",") if x.strip()]
  auto = names == ["auto"]
  schema = encoding.fit_schema(dataset, dc.normalization, dc.auto_normalize, [] if auto else names, auto)
  if auto:
    given = {v.name: v for v in dataset.feature_vars + dataset.attribute_vars}
    chosen = [f"{v.name} ({'log1p' if v.log1p else 'asinh'})" for v in schema.feature_vars + schema.attribute_vars
              if (v.log1p or v.asinh) and not (given[v.name].log1p or given[v.name].asinh)]
    log.info("data.log1p=auto: %s", ", ".join(chosen) + " span orders of magnitude: modelled in log scale"
             if chosen else "no variable spans orders of magnitude")
  return schema


def batch_dict(features, attributes, additional):
  return dict(features=features, attributes=attributes, additional_attributes=additional)


# train fields that change what a run computes: a resumed run must keep them (budgets, logging and
# checkpoint cadence may change between launches)
FIXED_ON_RESUME = ("seed", "num_seeds", "eval_holdout", "batch_size", "learning_rate", "beta1", "beta2", "gp_weight",
                   "d_rounds", "g_rounds")


def _check_resumable(saved: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  for section in ("model", "data"):
    was, now = saved.get(section) or {}, json.loads(config[section].to_json())
    if section == "model":  # a field absent (e.g. added since the run began) has the default: the old model
      was, now = (dict(dataclasses.asdict(ModelConfig()), **d) for d in (was, now))
    changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    if changed:
      raise ValueError(f"{workdir} holds a run with a different config.{section} ("
                       + ", ".join(f"{k}={was.get(k)!r}, not {now.get(k)!r}" for k in changed)
                       + "); use a new --workdir (or the same config) to resume")
  saved_privacy = saved.get("privacy", {})
  secret_seed = saved_privacy.get("enabled") and saved_privacy.get("secret_seed")
  if bool(saved["train"].get("eval_every")) != bool(config.train.eval_every) and config.train.eval_holdout:
    raise ValueError(f"{workdir}: turning scoring (train.eval_every) on or off on resume would change the held-out "
                     "slice, i.e. the training data; use a new --workdir, or train.eval_holdout=0")
  for name in FIXED_ON_RESUME:
    if name == "seed" and secret_seed:  # the run's secret seed is kept, whatever --config.train.seed says
      continue
    if saved["train"].get(name) != config.train[name]:
      raise ValueError(f"{workdir} holds a run with train.{name}={saved['train'].get(name)!r}, not "
                       f"{config.train[name]!r}: resuming would change what the run computes; use a new "
                       f"--workdir (or the same setting). Budgets, logging and checkpoint cadence may change.")


def _resolve_privacy(pc: PrivacyConfig, tc: TrainConfig, saved: dict | None, num_examples: int) -> PrivacyConfig:
  """The run's privacy settings with noise and delta resolved: calibrated now for a fresh run,
  the saved ones for a resumed run (the accountant assumes they never change mid-run)."""
  if saved is None:
    return privacy.resolve(pc, num_examples, tc.batch_size, tc.d_rounds, tc.num_steps) if pc.enabled else pc
  saved_pc = privacy_config(ml_collections.ConfigDict(saved))
  if not (pc.enabled or saved_pc.enabled):
    return pc
  return privacy.resume(pc, saved_pc)  # batch_size and d_rounds are fixed by _check_resumable


def _privacy_budget(pc: PrivacyConfig, tc: TrainConfig, num_examples: int) -> tuple[privacy.Accountant, int]:
  """The run's accountant, and the step to stop at so as not to exceed privacy.target_epsilon."""
  accountant = privacy.accountant(pc, num_examples, tc.batch_size, tc.d_rounds)
  seed = ("a secret seed (privacy.secret_seed; kept in the workdir, never in bundles)" if pc.secret_seed else
          f"train.seed={tc.seed}, which the guarantee assumes secret (privacy.secret_seed=False)")
  log.info("privacy: DP-SGD critics, noise multiplier %.4g, clip %.4g, batches of %d of %d series "
           "sampled without replacement; delta=%.3g; batches and noise from %s", pc.noise_multiplier,
           pc.l2_clip, tc.batch_size, num_examples, pc.delta, seed)
  end = accountant.max_steps(pc.target_epsilon, tc.num_steps) if pc.target_epsilon else tc.num_steps
  if end < tc.num_steps:
    log.warning("privacy budget: epsilon=%.4g after step %d, %.4g after step %d exceeds "
                "privacy.target_epsilon=%.4g; training stops at step %d", accountant.epsilon(end), end,
                accountant.epsilon(end + 1), end + 1, pc.target_epsilon, end)
  return accountant, end


def check_finite(metrics: dict, first_step: int) -> None:
  """metrics: name -> [steps, K]; raises naming the first bad step (and replica, when K > 1)."""
  bad = {name: np.argwhere(~np.isfinite(v)) for name, v in metrics.items()}
  bad = {name: tuple(idx[0]) for name, idx in bad.items() if idx.size}
  if bad:
    name = min(bad, key=lambda n: (bad[n], n))
    i, k = bad[name]
    where = f" of replica {k} (seed + {k})" if metrics[name].shape[1] > 1 else ""
    raise FloatingPointError(f"non-finite {name} ({metrics[name][i, k]}) at training step "
                             f"{first_step + i + 1}{where}; the last good checkpoint is kept")


class Preempted(Exception):
  """Training stopped on a signal (SIGTERM from a scheduler, or SIGINT) after checkpointing the step reached."""

  def __init__(self, signum: int, step: int):
    super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpointed, and the same "
                     "command resumes it")
    self.signum, self.step = signum, step


class StopSignals:
  """While active, SIGTERM and SIGINT set a flag instead of killing the process: the loop finishes the
  dispatch in flight, saves and exits. Signals that arrive during that save are noted and ignored, so
  a second SIGTERM loses nothing (a scheduler's final SIGKILL still can, but Orbax's temporary-folder
  saves keep the last good checkpoint then)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received, self._previous = None, {}

  def _handle(self, signum, frame):
    del frame
    what = "stopping after the dispatch in flight, then checkpointing" if self.received is None else "already stopping"
    log.warning("received %s: %s", signal.Signals(signum).name, what)
    self.received = self.received or signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)


class MetricsLog:
  """metrics.jsonl and TensorBoard scalars (TENSORBOARD_DIR), written by process 0 alone.

  On resume the rows past the restored step (logged by a run stopped before it checkpointed them) are
  dropped, from both, so every logged step appears once. metrics.jsonl is rewritten whole at each row,
  atomically, so it is never cut mid-line and works on object stores."""

  def __init__(self, workdir: str, start_step: int, enabled: bool, tensorboard: bool = True):
    self.path, self.enabled, self.lines, self.writer = io_utils.join(workdir, METRICS_FILE), enabled, [], None
    if not enabled:
      return
    if io_utils.exists(self.path):
      lines = [line for line in io_utils.read_text(self.path).splitlines() if line.strip()]
      self.lines = [line for line in lines if json.loads(line)["step"] <= start_step]
      if len(self.lines) < len(lines):
        io_utils.write_text(self.path, "".join(line + "\n" for line in self.lines))
    if not tensorboard:
      return
    import tensorboardX  # TensorBoard's event files without TensorFlow
    self.writer = tensorboardX.SummaryWriter(io_utils.join(workdir, TENSORBOARD_DIR), purge_step=start_step + 1,
                                             flush_secs=30)

  def append(self, row: dict) -> None:
    """row: step, then floats, or lists of K floats (one per replica: TensorBoard tags <name>/replica_<k>)."""
    if not self.enabled:
      return
    self.lines.append(json.dumps(row))
    io_utils.write_text(self.path, "".join(line + "\n" for line in self.lines))
    if self.writer is None:
      return
    for name, value in row.items():
      if isinstance(value, list):
        for k, v in enumerate(value):
          self.writer.add_scalar(f"train/{name}/replica_{k}", v, row["step"])
      elif name != "step":
        self.writer.add_scalar(f"train/{name}", value, row["step"])

  def add_figure(self, tag: str, figure, step: int) -> None:
    if self.writer is not None:
      self.writer.add_figure(tag, figure, step)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


class Profiler:
  """A JAX profiler trace (viewable in TensorBoard's profile tab or xprof) of the dispatches that run
  training steps first..last (train.profile_steps="first,last"), written by process 0 into PROFILE_DIR."""

  def __init__(self, window: tuple[int, int] | None, workdir: str, enabled: bool):
    self.window = window if enabled else None
    self.directory, self.active = io_utils.join(workdir, PROFILE_DIR), False

  def before(self, step: int, k: int) -> None:
    """Called before the dispatch that runs steps step+1..step+k."""
    if self.window and not self.active and step < self.window[1] and step + k >= self.window[0]:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int) -> None:
    """Called after the dispatch that ended at `step` (its results fetched)."""
    if self.window and self.active and step >= self.window[1]:
      self.stop()
      log.info("profiler trace of steps %d..%d in %s", *self.window, self.directory)

  def stop(self) -> None:
    if self.window and self.active:
      jax.profiler.stop_trace()
      self.active = False


def _write_run_files(workdir: str, config_json: str, schema: encoding.Schema, start_step: int) -> None:
  """config.json (this launch's), schema.json, and this launch's config kept in config_history/."""
  stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
  io_utils.write_text(io_utils.join(workdir, CONFIG_FILE), config_json)
  io_utils.write_text(io_utils.join(workdir, CONFIG_HISTORY, f"{stamp}_step{start_step}.json"), config_json)
  io_utils.write_text(io_utils.join(workdir, "schema.json"), schema.to_json())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last step's metrics.

  Under several processes (jax.distributed initialised by the caller, e.g. launch.py) every process
  calls this with the same config; process 0 alone writes files. Raises Preempted after a SIGTERM or
  SIGINT, once the step reached is checkpointed."""
  tc, mc, pc = train_config(config), model_config(config), privacy_config(config)
  mesh = sharding.make_mesh(config.num_devices or None, tc.num_seeds)
  sharding.check_batch_size(tc.batch_size, mesh, mc.pack)
  log.info("training on %s", sharding.describe(mesh))
  primary = sharding.is_primary()
  if primary:
    io_utils.as_path(workdir).mkdir(parents=True, exist_ok=True)
  ckpt = Checkpointer(workdir, tc.keep_checkpoints)
  try:
    return _train(config, tc, mc, pc, mesh, ckpt, workdir, primary)
  finally:
    ckpt.wait()  # a save in flight completes, even when training failed
    ckpt.close()


def _train(config, tc: TrainConfig, mc, pc: PrivacyConfig, mesh, ckpt: Checkpointer, workdir: str,
           primary: bool) -> dict:
  dataset = load_dataset(config.data)
  if tc.eval_every and pc.enabled:
    raise ValueError("train.eval_every with privacy.enabled: scoring reads the training data outside DP-SGD, so "
                     "choosing checkpoints by it would void the guarantee; set train.eval_every=0")
  held_out = None
  if tc.eval_every:
    dataset, held_out = scoring.split_holdout(dataset, tc.eval_holdout)
  resume_step = ckpt.latest_step()
  saved_config = None
  if resume_step is not None:
    saved_config, schema = ckpt.read_metadata(resume_step)  # encode exactly as the run began
    _check_resumable(saved_config, config, workdir)
  else:
    schema = fit_schema_from_config(dataset, config)
  pc = _resolve_privacy(pc, tc, saved_config, dataset.num_samples)
  end, accountant = tc.num_steps, None
  if pc.enabled:
    config = config.copy_and_resolve_references()  # saved with the resolved noise and delta
    config.privacy.update(dataclasses.asdict(pc))
    if pc.secret_seed:  # known batches and noise void the guarantee; a resumed run keeps its seed
      config.train.seed = (saved_config["train"]["seed"] if saved_config else
                           sharding.from_primary(secrets.randbits(31)))  # one run: every process the same seed
      tc = dataclasses.replace(tc, seed=config.train.seed)
    accountant, end = _privacy_budget(pc, tc, dataset.num_samples)
  encoded = encoding.encode(dataset, schema)
  model = DoppelGANger(schema, mc)
  log.info("data: %d series, T=%d, %d features, %d attributes; S=%d (%d LSTM steps)%s",
           dataset.num_samples, schema.max_length, len(schema.feature_vars), len(schema.attribute_vars),
           model.sample_len, -(-schema.max_length // model.sample_len),
           f"; {tc.num_seeds} replicas (seeds {tc.seed}..{tc.seed + tc.num_seeds - 1})" if tc.num_seeds > 1 else "")
  if mc.aux_critic and not model.has_aux_critic:
    log.info("no metadata (no attributes, no min/max): the auxiliary critic has nothing to see; training without it")

  abstract = jax.eval_shape(lambda: init_replicas(model, tc, tc.seed, tc.num_seeds))
  if resume_step is None:
    state, keys = sharding.place(init_replicas(model, tc, tc.seed, tc.num_seeds), sharding.by_replica(mesh))
  else:
    state, keys, _, _ = ckpt.restore(abstract, resume_step, sharding.by_replica(mesh))
    log.info("resumed from step %d", resume_step)
  start = int(sharding.to_host(state["step"])[0])
  config_json = config.to_json(indent=1)
  if primary:
    _write_run_files(workdir, config_json, schema, start)
  metrics_log = MetricsLog(workdir, start, primary, tc.tensorboard)
  profiler = Profiler(tc.profile_window, workdir, primary)
  score_fn, reference, scored = None, None, False
  if tc.eval_every:
    scorer = scoring.Scorer.build(model, tc.eval_samples, held_out if held_out is not None else dataset, dataset,
                                  held_out is not None)
    reference = sharding.replicate(scorer.reference, mesh)
    score_fn = jax.jit(scorer.score, donate_argnums=0, out_shardings=sharding.by_replica(mesh))

  step_fn = jit_train_step(model, tc, mesh, pc)
  arrays = [encoded.features, encoded.attributes, encoded.additional_attributes]
  batches = ReplicaBatches(arrays, tc.batch_size, tc.seed, tc.num_seeds, start_step=start,
                           sampling="independent" if pc.enabled else "epochs")
  step, t_start, window = start, time.time(), (start, time.time())
  deadline = t_start + 60 * tc.max_minutes if tc.max_minutes else None
  last, out_of_time, stopped = {}, False, False
  with StopSignals() as signals, contextlib.ExitStack() as cleanup:
    cleanup.callback(metrics_log.close)
    cleanup.callback(profiler.stop)
    while step < end:
      k = tc.steps_per_dispatch if end - step >= tc.steps_per_dispatch else 1
      profiler.before(step, k)
      state, metrics = step_fn(state, sharding.shard_batches(batch_dict(*batches.next(k)), mesh), keys)
      metrics = sharding.to_host(metrics)
      check_finite(metrics, step)
      step += k
      profiler.after(step)
      last = {name: _per_replica(v[-1]) for name, v in metrics.items()}
      # every process leaves the loop at the same step, whichever of them ran out of time or got the signal
      out_of_time, stopped = sharding.any_process(
          [deadline is not None and time.time() > deadline, signals.received is not None])
      stop = out_of_time or stopped
      scores = {}
      if score_fn is not None and not stopped and (step // tc.eval_every > (step - k) // tc.eval_every or
                                                   step == end or out_of_time):
        state, scores, preview = score_fn(state, reference)
        scores = {f"score/{name}": _per_replica(v) for name, v in sharding.to_host(scores).items()}
        scored = True
        if tc.tensorboard:
          preview = sharding.to_host(preview)  # collective: every process takes part
          if primary:
            _preview_figures(metrics_log, dataset, preview, step)
      if scores or step // tc.log_every > (step - k) // tc.log_every or step == end or stop:
        now = time.time()
        rate = (step - window[0]) / max(now - window[1], 1e-9)
        if accountant is not None:
          last["epsilon"] = accountant.epsilon(step)
        window = (step, time.time())
        eta = (end - step) / rate if rate > 0 else float("inf")
        log.info("step %d/%d  %.2f steps/s  ETA %s  %s", step, end, rate, format_duration(eta),
                 "  ".join(f"{n}={_show(v)}" for n, v in sorted(last.items())))
        if scores:
          log.info("scores at step %d: %s", step, "  ".join(f"{n[6:]}={_show(v)}" for n, v in scores.items()))
        metrics_log.append(dict(step=step, seconds=round(now - t_start, 3), steps_per_s=rate, **last, **scores))
      if step // tc.checkpoint_every > (step - k) // tc.checkpoint_every or step == end or stop:
        spent = None if accountant is None else dict(
            epsilon=accountant.epsilon(step), delta=pc.delta, steps=step, num_examples=dataset.num_samples,
            unit="series", neighbouring="replace-one")
        ckpt.save(step, state, keys, config_json, schema, spent)
      if stop:
        break
    ckpt.wait()  # still catching signals: a second SIGTERM cannot cut this save short
  if stopped:
    log.warning("stopped at step %d on a signal; checkpointed there, and the same command resumes", step)
    raise Preempted(signals.received or signal.SIGTERM, step)
  if out_of_time:
    log.info("wall-clock budget (train.max_minutes) spent at step %d; checkpointed", step)
  if scored:
    best = sharding.to_host(dict(score=state["best"]["score"], step=state["best"]["step"]))
    log.info("best scores: %s", "  ".join(f"replica {r}: {best['score'][r]:.4g} at step {best['step'][r]}"
                                          for r in range(tc.num_seeds)))
  if accountant is not None:
    last["epsilon"] = accountant.epsilon(step)
    log.info("privacy: the generator is (%.4g, %.3g)-differentially private after %d steps "
             "(series-level, replace-one neighbours)", last["epsilon"], pc.delta, step)
  return dict(last, step=step)


def _per_replica(values: np.ndarray):
  """[K] values -> a float when K = 1 (one run's logs look as they always did), else a list."""
  values = [float(v) for v in np.ravel(values)]
  return values[0] if len(values) == 1 else values


def _show(value) -> str:
  return "/".join(f"{v:.4g}" for v in value) if isinstance(value, list) else f"{value:.4g}"


def _preview_figures(metrics_log: MetricsLog, real, preview, step: int) -> None:
  """TensorBoard: per replica, a few generated series of each continuous feature beside real ones."""
  from dg_jax.evaluation import plots
  features, lengths = preview
  for r in range(features.shape[0]):
    metrics_log.add_figure(f"samples/replica_{r}", plots.sample_series(real, features[r], lengths[r]), step)


def format_duration(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"
