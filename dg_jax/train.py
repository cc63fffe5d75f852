"""train_and_evaluate(config, workdir): the training loop around the pure step.

Resumes from the workdir's latest checkpoint by default; batches are a function of the step, so a
resumed run continues exactly where it stopped. With config.privacy.enabled the critics train with
DP-SGD (dg_jax/privacy.py): batches are sampled independently per step, the epsilon spent so far
is logged, and training stops before the epsilon budget (privacy.target_epsilon) would be exceeded.

Preemption: on SIGTERM or SIGINT the dispatch in flight finishes, the step reached is checkpointed and
`Preempted` is raised (launch.py exits with 128 + the signal number); the next launch resumes exactly.
Several processes take every decision to stop (steps, wall clock, privacy budget, signals) jointly,
so they leave the loop at the same step and enter the checkpoint save together.

Trust: the trainer holds the workdir's lock for its whole life (dg_jax/workdir_lock.py); a checkpoint
records a fingerprint of the training data, and resuming on other data is refused; a replica whose loss
turns non-finite is rolled back (dg_jax/train_step.py), and once frozen the run goes on with the others
and ends with `Diverged` after saving everything. train.init_from starts a new run from another run's
weights (and Adam states with train.init_optimizer), with that run's schema.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import secrets
import signal
import time

import jax
import ml_collections
import numpy as np
import logging

from dg_jax import io_utils, privacy, scoring, sharding, workdir_lock
from dg_jax.checkpoints import DATA_ITEM, PROGRESS_ITEM, Checkpointer, is_bundle, load_bundle
from dg_jax.data import encoding, shares
from dg_jax.data.batching import ReplicaBatches
from dg_jax.data.feed import Feed
from dg_jax.data.loaders import load_dataset
from dg_jax.models.doppelganger import DoppelGANger
from dg_jax.failures import BadInput, Diverged, Preempted, StopSignals
from dg_jax.settings import ModelConfig, PrivacyConfig, TrainConfig, model_config, privacy_config, train_config
from dg_jax.train_step import init_replicas, jit_train_step

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CONFIG_HISTORY = "config_history"  # each launch's config, named by time and the step it started from
TENSORBOARD_DIR = "tensorboard"
PROFILE_DIR = "profile"


def fit_schema_from_config(dataset, config) -> encoding.Schema:
  """data.log1p: "auto" (encoding.fit_schema's auto_log) or the names of variables to model as log1p(x);
  data.log_half_range: "auto", True or False (a bool in configs saved before "auto")."""
  dc = config.data
  names = [x.strip() for x in dc.log1p.split(",") if x.strip()]
  auto = names == ["auto"]
  half = dc.get("log_half_range", False)
  half = {"auto": "auto", "true": True, "false": False}.get(str(half).lower())
  if half is None:
    raise BadInput(f"data.log_half_range must be auto, True or False, got {dc.log_half_range!r}")
  schema = encoding.fit_schema(dataset, dc.normalization, dc.auto_normalize, [] if auto else names, auto, half is True)
  if half == "auto" and dc.auto_normalize:
    schema, narrow = encoding.auto_half_range(dataset, schema)
    log.info("data.log_half_range=auto: %s", f"{', '.join(narrow)}: each series spans a small share of the "
             "feature's range; half-ranges coded on a log scale" if narrow else "half-ranges coded linearly")
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
FIXED_ON_RESUME = ("seed", "num_seeds", "eval_holdout", "eval_samples", "batch_size", "learning_rate",
                   "lr_decay_start", "beta1", "beta2", "gp_weight", "d_rounds", "g_rounds", "per_replica", "fixed_parts")


# model fields that change only how a trained generator generates (sampling.load_generator overrides them
# too): a resumed or initialised run may take another value
GENERATION_ONLY = ("exact_span_at_generation",)


def _differences(section: str, was: dict, now: dict) -> str:
  """'' or "field=saved, not now, ..." between two config sections (absent model fields: their defaults,
  i.e. the model a config saved before the field existed describes; GENERATION_ONLY fields left out)."""
  if section == "model":
    was, now = (dict(dataclasses.asdict(ModelConfig()), **d) for d in (was, now))
  return ", ".join(f"{k}={was.get(k)!r}, not {now.get(k)!r}" for k in sorted(set(was) | set(now))
                   if was.get(k) != now.get(k) and not (section == "model" and k in GENERATION_ONLY))


def _check_resumable(saved: dict, config: ml_collections.ConfigDict, workdir: str) -> None:
  for section in ("model", "data"):
    changed = _differences(section, saved.get(section) or {}, json.loads(config[section].to_json()))
    if changed:
      raise BadInput(f"{workdir} holds a run with a different config.{section} ({changed}); use a new --workdir "
                     "(or the same config) to resume")
  saved_privacy = saved.get("privacy", {})
  secret_seed = saved_privacy.get("enabled") and saved_privacy.get("secret_seed")
  if bool(saved["train"].get("eval_every")) != bool(config.train.eval_every) and config.train.eval_holdout:
    raise BadInput(f"{workdir}: turning scoring (train.eval_every) on or off on resume would change the held-out "
                     "slice, i.e. the training data; use a new --workdir, or train.eval_holdout=0")
  if config.train.get("lr_decay_start", 1) < 1 and saved["train"].get("num_steps") != config.train.num_steps:
    log.warning("%s: train.num_steps %s -> %s on resume: the learning rates' decay (train.lr_decay_start) is "
                "stretched to the new end", workdir, saved["train"].get("num_steps"), config.train.num_steps)
  for name in FIXED_ON_RESUME:
    if name == "seed" and secret_seed:  # the run's secret seed is kept, whatever --config.train.seed says
      continue
    was, now = (section.get(name, getattr(TrainConfig, name)) for section in (saved["train"], config.train))
    if was != now:  # (a field absent from an older config: its default)
      raise BadInput(f"{workdir} holds a run with train.{name}={was!r}, not {now!r}: resuming would change what "
                     "the run computes; use a new --workdir (or the same setting). Budgets, logging and checkpoint "
                     "cadence may change.")


def _resolve_privacy(pc: PrivacyConfig, tc: TrainConfig, saved: dict | None, num_examples: int) -> PrivacyConfig:
  """The run's privacy settings with noise and delta resolved: calibrated now for a fresh run,
  the saved ones for a resumed run (the accountant assumes they never change mid-run)."""
  if saved is None:
    return (privacy.resolve(pc, num_examples, tc.batch_size, tc.d_rounds, tc.num_steps, tc.num_seeds)
            if pc.enabled else pc)
  saved_pc = privacy_config(ml_collections.ConfigDict(saved))
  if not (pc.enabled or saved_pc.enabled):
    return pc
  return privacy.resume(pc, saved_pc)  # batch_size and d_rounds are fixed by _check_resumable


def _privacy_budget(pc: PrivacyConfig, tc: TrainConfig, num_examples: int) -> tuple[privacy.Accountant, int]:
  """The run's accountant, and the step to stop at so as not to exceed privacy.target_epsilon."""
  accountant = privacy.accountant(pc, num_examples, tc.batch_size, tc.d_rounds)
  seed = ("a secret seed (privacy.secret_seed; kept in the workdir, never in bundles)" if pc.secret_seed else
          f"train.seed={tc.seed}, which the guarantee assumes secret (privacy.secret_seed=False)")
  batches = (f"Poisson-sampled batches of {tc.batch_size} of {num_examples} series on average (at most "
             f"{pc.capacity}; truncation accounted in delta), add-or-remove neighbours" if accountant.poisson else
             f"batches of {tc.batch_size} of {num_examples} series sampled without replacement, replace-one neighbours")
  if pc.bands > 1:
    batches += (f"; cyclic: each series in one of {pc.bands} groups, step t sampling group t mod {pc.bands} "
                f"(rate {accountant.rate:.3g}), noise correlated over {pc.bands} steps")
  log.info("privacy: %s critics, noise multiplier %.4g, clip %.4g, %s; delta=%.3g; batches and noise from %s",
           "DP-BandMF" if pc.bands > 1 else "DP-SGD", pc.noise_multiplier, pc.l2_clip, batches, pc.delta, seed)
  end = accountant.max_steps(pc.target_epsilon, tc.num_steps) if pc.target_epsilon else tc.num_steps
  if end < tc.num_steps:
    log.warning("privacy budget: epsilon=%.4g after step %d, %.4g after step %d exceeds "
                "privacy.target_epsilon=%.4g; training stops at step %d", accountant.epsilon(end), end,
                accountant.epsilon(end + 1), end + 1, pc.target_epsilon, end)
  return accountant, end


def _sampling(pc: PrivacyConfig) -> str:
  """The batches' sampling (data/batching.py): what the privacy accountant assumes, or epochs."""
  return {"fixed": "independent", "poisson": "poisson"}[pc.sampling] if pc.enabled else "epochs"


class MetricsLog:
  """metrics.jsonl and TensorBoard scalars (TENSORBOARD_DIR), written by process 0 alone.

  Rows are strict JSON (a non-finite value is null). A local file gets each row appended (O(1) per
  row); an object store, which cannot append, gets the whole file at each checkpoint and at the end
  (`flush`): the rows after the last checkpoint would be dropped on resume anyway. On resume the rows
  past the restored step, and a last line cut short by a kill, are dropped from both, so every logged
  step appears once."""

  def __init__(self, workdir: str, start_step: int, enabled: bool, tensorboard: bool = True):
    self.path, self.enabled, self.writer = io_utils.join(workdir, METRICS_FILE), enabled, None
    self.remote, self.lines, self.unflushed = io_utils.is_remote(workdir), [], False
    if not enabled:
      return
    if io_utils.exists(self.path):
      lines = io_utils.read_text(self.path).splitlines()
      self.lines = [line for line in lines if _row_step(line) is not None and _row_step(line) <= start_step]
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
    line = json.dumps(io_utils.json_safe(row), allow_nan=False)
    if self.remote:
      self.lines.append(line)
      self.unflushed = True
    else:
      io_utils.append_text(self.path, line + "\n")
    if self.writer is None:
      return
    for name, value in row.items():
      values = dict(enumerate(value)) if isinstance(value, list) else {None: value}
      for k, v in values.items():
        if name != "step" and math.isfinite(v):  # a diverged replica's NaN: a gap in the curve
          self.writer.add_scalar(f"train/{name}" + ("" if k is None else f"/replica_{k}"), v, row["step"])

  def flush(self) -> None:
    if self.enabled and self.unflushed:
      io_utils.write_text(self.path, "".join(line + "\n" for line in self.lines))
      self.unflushed = False

  def add_figure(self, tag: str, figure, step: int) -> None:
    if self.writer is not None:
      self.writer.add_figure(tag, figure, step)

  def close(self) -> None:
    self.flush()
    if self.writer is not None:
      self.writer.close()


def _row_step(line: str) -> int | None:
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):  # a line cut short by a kill
    return None


class Health:
  """The host's view of the replicas' health (state["health"], updated on device by train_step.guard):
  logs each rollback and each frozen replica, once."""

  def __init__(self, health: dict, tc: TrainConfig):
    self.rollbacks, self.frozen_at, self.tc = np.asarray(health["rollbacks"]), np.asarray(health["frozen_at"]), tc
    for r in self.frozen:
      log.warning("replica %d (seed %d) diverged earlier and stays frozen with its state before step %d", r,
                  tc.seed + r, self.frozen_at[r] + 1)

  @property
  def frozen(self) -> list[int]:
    return [int(r) for r in np.flatnonzero(self.frozen_at >= 0)]

  def update(self, health: dict, metrics: dict, step: int, k: int) -> None:
    rollbacks, frozen_at = np.asarray(health["rollbacks"]), np.asarray(health["frozen_at"])
    for r in np.flatnonzero(rollbacks > self.rollbacks):
      bad = sorted(name for name, v in metrics.items() if not np.isfinite(v[:, r]).all()) or ["parameters"]
      what = f"replica {r} (seed {self.tc.seed + r}): non-finite {', '.join(bad)} in steps {step - k + 1}..{step}"
      if frozen_at[r] >= 0:
        log.error("%s, after %d rollback(s): frozen with its state before step %d%s", what, self.tc.max_rollbacks,
                  step - k + 1, "; the other replicas go on" if (frozen_at < 0).any() else "")
      else:
        log.warning("%s: rolled back to its state before step %d, those steps skipped, with fresh random streams "
                    "(rollback %d of %d)", what, step - k + 1, rollbacks[r], self.tc.max_rollbacks)
    self.rollbacks, self.frozen_at = rollbacks, frozen_at

  def diverged(self, step: int, workdir: str) -> Diverged:
    frozen = ", ".join(f"replica {r} before step {self.frozen_at[r] + 1}" for r in self.frozen)
    others = len(self.frozen_at) - len(self.frozen)
    return Diverged(f"diverged: frozen after {self.tc.max_rollbacks} rollback(s): {frozen}"
                    + (f"; the other {others} replica(s) trained to step {step}" if others else "")
                    + f". Everything is saved in {workdir}; to go on with other settings start a new run from it: "
                    f"--config.train.init_from={workdir} (and e.g. a lower --config.train.learning_rate)",
                    frozen_at=self.frozen_at.tolist(), step=step)


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


def data_fingerprint(encoded: encoding.Encoded) -> str:
  """A hash of the encoded training arrays (shapes included): what resume compares."""
  digest = hashlib.blake2b(digest_size=16)
  for array in (encoded.features, encoded.attributes, encoded.additional_attributes):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.shape}{array.dtype.str}".encode())
    digest.update(array)
  return digest.hexdigest()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, lock=None) -> dict:
  """Trains (or resumes) the run in `workdir`; returns the last step's metrics.

  Under several processes (jax.distributed initialised by the caller, e.g. launch.py) every process
  calls this with the same config; process 0 alone takes the workdir's lock (unless the caller holds
  it: `lock`) and writes files. Raises Preempted after a SIGTERM or SIGINT once the step reached is
  checkpointed, Diverged (after saving everything) when replicas were frozen, WorkdirBusy when another
  trainer holds the workdir."""
  tc, mc, pc = train_config(config), model_config(config), privacy_config(config)
  mesh = sharding.make_mesh(config.num_devices or None, tc.num_seeds)
  sharding.check_batch_size(tc.batch_size, mesh, mc.pack)
  log.info("training on %s", sharding.describe(mesh))
  primary = sharding.is_primary()
  own_lock = primary and lock is None
  if own_lock:
    lock = workdir_lock.acquire(workdir)  # before anything in the workdir is touched
  try:
    sharding.wait_for_primary()
    ckpt = Checkpointer(workdir, tc.keep_checkpoints, writer=True)
    try:
      return _train(config, tc, mc, pc, mesh, ckpt, workdir, primary, lock)
    finally:
      ckpt.wait()  # a save in flight completes, even when training failed
      ckpt.close()
  finally:
    if own_lock:
      lock.release()


def parse_init_from(value: str) -> tuple[str, int | None]:
  """train.init_from "PATH" or "PATH@STEP" -> (path, step or None)."""
  path, sep, step = value.rpartition("@")
  if not sep:
    return value, None
  try:
    return path, int(step)
  except ValueError:
    raise BadInput(f"train.init_from={value!r}: expected WORKDIR, WORKDIR@STEP or a bundle folder") from None


def initial_state_from(model: DoppelGANger, tc: TrainConfig, source: dict, mesh, pc: PrivacyConfig | None = None):
  """Fresh replicas whose weights (and, with train.init_optimizer, Adam states) come from `source`
  (`load_init_source`): replica r from the source's replica r, or every replica from a one-replica source."""
  state, keys = init_replicas(model, tc, tc.seed, tc.num_seeds, pc)
  state = jax.device_get(state)
  absent = set(tc.fixed_part_names) - set(state["params"]["generator"]["params"])
  if absent:
    raise BadInput(f"train.fixed_parts={tc.fixed_parts!r}: this model's generator has no {sorted(absent)} (no "
                   "attributes, or no min/max without data.auto_normalize)")
  parts = {"params": source["params"]}
  if tc.init_optimizer:
    if "g_opt" not in source:
      raise BadInput(f"train.init_optimizer: {source['path']} is a bundle, which holds no optimiser state")
    parts.update(g_opt=source["g_opt"], d_opt=source["d_opt"])
  for name, tree in parts.items():
    count = jax.tree.leaves(tree)[0].shape[0]
    if count not in (1, tc.num_seeds):
      raise BadInput(f"train.init_from: {source['path']} has {count} replicas; train.num_seeds must be "
                     f"{count} (replica by replica) or the source must have one")
    tree = jax.tree.map(lambda x: np.broadcast_to(x, (tc.num_seeds,) + x.shape[1:]), tree)
    if name == "params":
      tree = dict(state["params"], **tree)  # from a bundle: the fresh critics stay
    state[name] = tree
  state["best"]["generator"] = state["params"]["generator"]
  return sharding.place((state, keys), sharding.by_replica(mesh))


def load_init_source(tc: TrainConfig, config) -> dict:
  """train.init_from: the schema, model config and stacked weights ([K_source, ...]; Adam states too
  for a workdir) of another run or bundle, checked against this run's model config."""
  from dg_jax.sampling import restore_run
  path, step = parse_init_from(tc.init_from)
  if is_bundle(path):
    if step is not None:
      raise BadInput(f"train.init_from={tc.init_from!r}: a bundle holds one generator; drop @{step}")
    generator, schema, saved = load_bundle(path)
    source = dict(params=dict(generator=jax.tree.map(lambda x: np.asarray(x)[None], generator)), schema=schema,
                  model=saved["model"], what="its generator (critics start afresh)")
  else:
    model, state, saved = restore_run(path, step)
    state = jax.device_get(state)
    source = dict(params=state["params"], g_opt=state["g_opt"], d_opt=state["d_opt"], schema=model.schema,
                  model=saved["model"].to_dict(), what=f"step {int(state['step'][0])}")
  changed = _differences("model", source["model"], json.loads(config.model.to_json()))
  if changed:
    raise BadInput(f"train.init_from={tc.init_from!r}: its model differs from config.model ({changed}); "
                   "initialising needs the same model")
  return dict(source, path=path)


def _share(config, tc: TrainConfig, pc: PrivacyConfig, mesh) -> shares.Share | None:
  """This process's share of data.path=PATH-{shard}.npz, when the data is sharded over the devices."""
  if not shares.is_sharded_path(config.data.path) or tc.data_placement not in ("auto", "sharded", "sharded_host"):
    if tc.data_placement.startswith("sharded"):
      raise BadInput(f"train.data_placement={tc.data_placement} needs data.path=PATH-{{shard}}.npz (got "
                     f"{config.data.path!r})")
    return None
  refused = [what for what, on in (("privacy.enabled", pc.enabled), ("train.eval_every", tc.eval_every),
                                   ("data.log1p=auto", config.data.log1p == "auto"),
                                   ("data.max_samples", config.data.max_samples)) if on]
  if refused:
    raise BadInput(f"data.path={config.data.path} is sharded over the devices (train.data_placement="
                   f"{tc.data_placement}), which does not go with {', '.join(refused)} (dg_jax/data/shares.py says "
                   "why); use train.data_placement=device or host to load every shard in every process")
  return shares.Share(config.data.path, mesh)


def _train(config, tc: TrainConfig, mc, pc: PrivacyConfig, mesh, ckpt: Checkpointer, workdir: str,
           primary: bool, lock) -> dict:
  share = _share(config, tc, pc, mesh)
  dataset = share.local if share else load_dataset(config.data)
  if tc.eval_every and pc.enabled:
    raise BadInput("train.eval_every with privacy.enabled: scoring reads the training data outside DP-SGD, so "
                   "choosing checkpoints by it would void the guarantee; set train.eval_every=0")
  held_out = None
  if tc.eval_every:
    dataset, held_out = scoring.split_holdout(dataset, tc.eval_holdout)

  resumed, progress = None, {}
  if ckpt.steps():
    def read(step):
      saved_config, schema = ckpt.read_metadata(step)  # encode exactly as the run began
      _check_resumable(saved_config, config, workdir)
      model = DoppelGANger(schema, mc)
      saved_pc = privacy_config(ml_collections.ConfigDict(saved_config))  # the state holds its DP-BandMF noise
      abstract = jax.eval_shape(lambda: init_replicas(model, tc, tc.seed, tc.num_seeds, saved_pc))
      state, keys = ckpt.restore_arrays(step, abstract, sharding.by_replica(mesh), fresh=lambda: jax.device_get(
          init_replicas(model, tc, tc.seed, tc.num_seeds, saved_pc)[0]))
      return (saved_config, schema, state, keys, ckpt.read_json(step, DATA_ITEM),
              ckpt.read_json(step, PROGRESS_ITEM) or {})
    resume_step, resumed = ckpt.restore_newest(read)
    ckpt.set_aside_newer_than(resume_step)
    saved_config, schema, state, keys, saved_data, progress = resumed
    source = None
    log.info("resumed from step %d", resume_step)
  else:
    saved_config, source = None, load_init_source(tc, config) if tc.init_from else None
    schema = source["schema"] if source else fit_schema_from_config(dataset, config)
    if share and not source:
      schema = share.merge_schema(schema)
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
    if pc.capacity % mesh.shape[sharding.DATA]:
      raise BadInput(f"privacy.capacity={pc.capacity} must be a multiple of the {mesh.shape[sharding.DATA]} "
                     "devices that split each replica's batch")
  dataset, clipped = encoding.clip_to_schema(dataset, schema)
  if clipped:
    log.warning("values outside the schema's ranges (a schema fitted on other data: train.init_from) clipped "
                "into them, in %s", ", ".join(f"{n} series of {name}" for name, n in clipped.items()))
  if schema.log_half_range and not (resumed or source):
    if pc.enabled:  # bounds fitted on the private series would be outside the guarantee
      log.info("data.log_half_range: the log code spans its fixed bounds with privacy on")
    else:
      low, high = encoding.half_range_bounds(dataset, schema)
      if share:
        low, high = share.min([low, -high]) * [1, -1]  # the max as minus the min of -high: one all-gather
      if high > low:
        schema = dataclasses.replace(schema, log_half_bounds=(float(low), float(high)))
        log.info("data.log_half_range: the log code spans the training series' half-ranges, %.3g to %.3g", low, high)
  if mc.floor_flags and not (resumed or source) and schema.continuous_features:
    if pc.enabled:  # the features chosen from the private series would be outside the guarantee
      log.info("model.floor_flags: no floor flags with privacy on (they would be chosen on the private data)")
    else:
      counts = encoding.floor_counts(dataset, schema)
      counts = share.sum(counts) if share else counts
      series = encoding.floored_features(counts, schema, series=True)
      schema = dataclasses.replace(schema, floored=encoding.floored_features(counts, schema),
                                   series_floored=series if mc.floor_series_flags and schema.auto_normalize else ())
      names = [f"{schema.feature_vars[j].name} ({counts[0][k] / max(counts[1][k], 1):.0%})"
               for k, j in enumerate(schema.continuous_features) if j in schema.floored]
      log.info("model.floor_flags: %s", f"an \"at the floor\" flag per record for the features at their minimum "
               f"in {encoding.FLOOR_SHARE:.0%} or more of the records: {', '.join(names)}" if names
               else "no feature sits at its minimum in many records; no floor flags")
      if schema.series_floored:
        log.info("model.floor_series_flags: an \"at the floor throughout\" flag per series for %s", ", ".join(
            f"{schema.feature_vars[j].name} ({counts[2][k] / max(counts[3][k], 1):.0%} of the series)"
            for k, j in enumerate(schema.continuous_features) if j in schema.series_floored))
  encoded = encoding.encode(dataset, schema)
  num_series = share.num_series if share else dataset.num_samples
  data_id = dict(fingerprint=share.fingerprint(encoded) if share else data_fingerprint(encoded), num_series=num_series,
                 source=dataset.source)
  if mc.whiten_levels and not (resumed or source) and schema.additional_dim:
    if pc.enabled:  # a map fitted on the private series would be outside the guarantee
      log.info("model.whiten_levels: off with privacy on (it would be fitted on the private data)")
    else:
      moments = encoding.min_max_moments(encoded.additional_attributes[:, :schema.min_max_dim])
      view = encoding.min_max_view(share.sum(moments) if share else moments)
      schema = dataclasses.replace(schema, min_max_view=view)
      if view:
        gains = np.linalg.eigvalsh(np.array(view))
        log.info("model.whiten_levels: features' levels move together; the critics see %d direction(s) of "
                 "them magnified, up to %.1fx", np.sum(gains > 1 + 1e-6), gains.max())
      else:
        log.info("model.whiten_levels: no features' levels move together; the critics see them as generated")
  if mc.aux_critic_levels and mc.aux_critic and not (resumed or source) and schema.min_max_dim:
    if pc.enabled:  # a map fitted on the private series would be outside the guarantee
      log.info("model.aux_critic_levels: off with privacy on (it would be fitted on the private data)")
    else:
      means = encoding.series_means(encoded.features, encoded.additional_attributes, schema)
      moments = encoding.level_moments(encoded.attributes, means)
      view = encoding.level_view(share.sum(moments) if share else moments, means.shape[1])
      schema = dataclasses.replace(schema, level_view=view)
      if view:  # the view is similar to diag(gains): its eigenvalues are the gains
        log.info("model.aux_critic_levels: the series' means of the features are tied within kinds of series; the "
                 "auxiliary critic also sees them, magnified up to %.1fx", np.linalg.eigvals(np.array(view)).real.max())
      else:
        log.info("model.aux_critic_levels: no series' means are tied; the auxiliary critic sees the metadata only")
  if mc.step_critic_weight and not (resumed or source):
    if pc.enabled:  # a scale fitted on the private series would be outside the guarantee
      log.info("model.step_critic_weight: no step critic with privacy on (its scale would be fitted on the private data)")
    elif schema.max_length > 1 and schema.continuous_features:
      half = (encoding.decode_half(schema.half_codes(encoded.additional_attributes), schema) if schema.additional_dim
              else None)  # auto-normalised: the step critic also sees the steps in the data's units
      moments = encoding.step_moments(encoded.features, schema, half)
      moments = share.sum(moments) if share else moments
      schema = dataclasses.replace(schema, step_scale=encoding.step_scale(moments),
                                   unit_step_scale=encoding.unit_step_scale(moments))
      names = [schema.feature_vars[j].name for j in schema.continuous_features]
      smooth = [f"{n} ({x:.3g})" for n, x in zip(names, schema.step_scale) if x > 0]
      rough = [n for n, x in zip(names, schema.step_scale) if x == 0]
      if smooth:
        log.info("model.step_critic_weight: a step critic judges the record-to-record differences of the smooth "
                 "features over the training data's root mean square%s: %s; not smooth, not judged "
                 "(encoding.SMOOTH_STEPS): %s", ", also in the data's units with the attributes"
                 if schema.unit_step_scale else "", ", ".join(smooth), ", ".join(rough) or "none")
      else:
        log.info("model.step_critic_weight: no continuous feature is smooth (encoding.SMOOTH_STEPS); no step critic")
    else:
      log.info("model.step_critic_weight: no continuous feature with two or more records; no step critic")
  model = DoppelGANger(schema, mc)
  log.info("data: %d series, T=%d, %d features, %d attributes; S=%d (%d LSTM steps)%s",
           num_series, schema.max_length, len(schema.feature_vars), len(schema.attribute_vars),
           model.sample_len, -(-schema.max_length // model.sample_len),
           f"; {tc.num_seeds} replicas (seeds {tc.seed}..{tc.seed + tc.num_seeds - 1})" if tc.num_seeds > 1 else "")
  if tc.replica_values:
    log.info("per-replica settings (train.per_replica): %s", "; ".join(
        f"{field}={list(values)}" for field, values in tc.replica_values.items()))
  if mc.aux_critic and not model.has_aux_critic:
    log.info("no metadata (no attributes, no min/max): the auxiliary critic has nothing to see; training without it")

  if resumed is not None:
    if saved_data is None:
      log.info("the run's checkpoints predate data fingerprints: the training data is not checked")
    elif saved_data["fingerprint"] != data_id["fingerprint"]:
      raise BadInput(f"{workdir}: the training data changed since the run began: {dataset.source} now has "
                     f"fingerprint {data_id['fingerprint']} ({dataset.num_samples} series); the run was trained on "
                     f"{saved_data['fingerprint']} ({saved_data['num_series']} series, {saved_data['source']}). "
                     "Resume on the same data, or train in a new --workdir")
  elif source is not None:
    state, keys = initial_state_from(model, tc, source, mesh, pc)
    log.info("initialised from %s (%s): weights%s; schema from that run", source["path"], source["what"],
             " and Adam states" if tc.init_optimizer else "")
  else:
    state, keys = sharding.place(init_replicas(model, tc, tc.seed, tc.num_seeds, pc), sharding.by_replica(mesh))
  start = int(sharding.to_host(state["step"])[0])
  config_json = config.to_json(indent=1)
  if primary:
    _write_run_files(workdir, config_json, schema, start)
  metrics_log = MetricsLog(workdir, start, primary, tc.tensorboard)
  profiler = Profiler(tc.profile_window, workdir, primary)
  score_fn, reference, scored = None, None, False
  if tc.eval_every:
    scorer = scoring.Scorer.build(model, tc.eval_samples, held_out if held_out is not None else dataset, dataset,
                                  held_out is not None, mesh)
    reference = sharding.replicate(scorer.reference, mesh)
    score_fn = jax.jit(scorer.score, donate_argnums=0, out_shardings=sharding.by_replica(mesh))
    log.info("scoring every %d steps on %d series from fixed noise; best rule: a better score is kept only if "
             "%d series from other fixed noise confirm it", tc.eval_every, tc.eval_samples,
             scoring.CONFIRM_FACTOR * tc.eval_samples)

  arrays = batch_dict(encoded.features, encoded.attributes, encoded.additional_attributes)
  feed = (shares.ShardedFeed(share, arrays, tc.batch_size, tc.seed, tc.num_seeds, mesh, start, tc.data_placement)
          if share else
          Feed(arrays, ReplicaBatches([encoded.features], tc.batch_size, tc.seed, tc.num_seeds, start_step=start,
                                      sampling=_sampling(pc), capacity=pc.capacity, bands=pc.bands),
               mesh, tc.data_placement))
  if tc.lr_decay_start < 1:
    if tc.max_minutes:
      log.info("learning rates constant for the first %g of the run, then falling linearly to zero where it ends: "
               "at step %d, or where train.max_minutes is expected to stop it (estimated as training goes; "
               "train.lr_decay_start)", tc.lr_decay_start, end)
    else:
      log.info("learning rates constant to step %d, then falling linearly to zero at step %d (train.lr_decay_start)",
               int(tc.lr_decay_start * end), end)
  # the decay ends where training does: at the privacy budget's last step when that comes first
  step_fn = jit_train_step(model, dataclasses.replace(tc, num_steps=end), mesh, pc, feed.gather)
  health = Health(sharding.to_host(state["health"]), tc)
  step, t_start, window = start, time.time(), (start, time.time())
  # train.max_minutes bounds the run over all its launches: a resumed one gets what the earlier ones left,
  # so that its decay goes on where it stopped instead of starting over (a checkpoint without the record,
  # saved before it existed, counts as none spent)
  spent = progress.get("seconds", 0.0)
  deadline = t_start + 60 * tc.max_minutes - spent if tc.max_minutes else None
  last, out_of_time, stopped, stop = {}, False, False, False
  # until this launch has measured its rate, a timed run decays towards where the last one expected to end
  horizon = min(progress.get("horizon", end), end) if deadline is not None else end
  placed, first_read = {}, None
  if deadline is not None and resumed is not None:
    log.info("train.max_minutes=%g over all launches: %s spent before step %d, %s left", tc.max_minutes,
             format_duration(spent), start, format_duration(max(deadline - t_start, 0.0)))
    if deadline <= t_start:
      log.warning("train.max_minutes is spent: nothing to train; raise it to train further")
      out_of_time = stop = True
  crossed = lambda every, done, k: done // every > (done - k) // every  # noqa: E731

  def read(dispatch):
    """A dispatch's metrics and health, fetched (while the next dispatch runs), and the decisions they
    and this process's clock and signals lead to, taken jointly by all processes."""
    nonlocal last, out_of_time, stopped, stop, horizon, first_read
    done, k, metrics, replica_health = dispatch
    metrics, replica_health = sharding.to_host((metrics, replica_health))
    health.update(replica_health, metrics, done, k)
    profiler.after(done)
    if lock is not None:
      lock.check()
    last = {name: _per_replica(v[-1]) for name, v in metrics.items()}
    now = time.time()
    first_read = first_read or (done, now)
    # every process leaves the loop at the same step, whichever of them ran out of time or got the signal,
    # and decays its learning rates towards the same step
    (out_of_time, stopped), horizon = sharding.jointly(
        [deadline is not None and now > deadline, signals.received is not None],
        expected_end(end, deadline, first_read, done, now, horizon))
    stop = out_of_time or stopped or len(health.frozen) == tc.num_seeds

  def horizon_arg():
    """The step's `horizon` argument, placed on the devices once per value."""
    if horizon not in placed:
      placed.clear()
      placed[horizon] = sharding.replicate(np.float32(horizon), mesh)
    return placed[horizon]

  def record(done, k, scores):
    nonlocal window
    if not (scores or crossed(tc.log_every, done, k) or done == end or stop):
      return
    now = time.time()
    rate = (done - window[0]) / max(now - window[1], 1e-9)
    if accountant is not None:
      last["epsilon"] = accountant.epsilon(done)
    window = (done, now)
    eta = (end - done) / rate if rate > 0 else float("inf")
    if deadline is not None:
      eta = min(eta, max(deadline - now, 0.0))
    log.info("step %d/%d  %.2f steps/s  ETA %s  %s", done, end, rate, format_duration(eta),
             "  ".join(f"{n}={_show(v)}" for n, v in sorted(last.items())))
    if scores:
      log.info("scores at step %d: %s", done, "  ".join(f"{n[6:]}={_show(v)}" for n, v in scores.items()))
    metrics_log.append(dict(step=done, seconds=round(spent + now - t_start, 3), steps_per_s=rate, **last, **scores))

  with StopSignals() as signals, contextlib.ExitStack() as cleanup:
    cleanup.callback(metrics_log.close)
    cleanup.callback(profiler.stop)
    unread = None  # the previous dispatch, read while this one runs: decisions lag one dispatch
    raised = {}  # the scoring alarms of the last scoring (Scorer.alarms)
    while step < end and not stop and len(health.frozen) < tc.num_seeds:
      k = tc.steps_per_dispatch if end - step >= tc.steps_per_dispatch else 1
      profiler.before(step, k)
      state, metrics, replica_health = step_fn(state, *feed.next(k), keys, horizon_arg())
      step += k
      if unread is not None:
        read(unread)
        record(*unread[:2], {})
      unread = (step, k, metrics, replica_health)
      save = crossed(tc.checkpoint_every, step, k) or step == end
      score_now = score_fn is not None and (crossed(tc.eval_every, step, k) or step == end)
      if not (save or score_now or stop):
        continue
      read(unread)  # this dispatch's state is scored or saved: wait for it
      unread = None
      scores = {}
      if score_fn is not None and (score_now or out_of_time) and not stopped:
        state, scores, preview = score_fn(state, reference)
        scores = sharding.to_host(scores)
        if primary:  # each alarm logged when it starts and when it ends, not at every scoring
          alarms = scorer.alarms(scores)
          for key in sorted(alarms.keys() - raised.keys()):
            log.warning("scoring at step %d: %s", step, alarms[key])
          for r, name, what in sorted(raised.keys() - alarms.keys()):
            log.info("scoring at step %d: replica %d: %s: %s within bounds again", step, r, name, what)
          raised = alarms
        scores = {f"score/{name}": _per_replica(v) for name, v in scores.items()}
        scored = True
        if tc.tensorboard:
          preview = sharding.to_host(preview)  # collective: every process takes part
          if primary:
            _preview_figures(metrics_log, dataset, preview, step)
      record(step, k, scores)
      if save or stop:
        epsilon_spent = (None if accountant is None else
                         privacy.spent_record(accountant, step, tc.num_seeds, tc.init_from))
        ckpt.check_for_errors()  # the previous save's failure, if any, is this run's
        ckpt.save(step, state, keys, config_json, schema, epsilon_spent, data_id,
                  dict(seconds=spent + time.time() - t_start, horizon=float(horizon)))
        metrics_log.flush()
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
    log.info("privacy: each replica's generator is (%.4g, %.3g)-differentially private after %d steps "
             "(series-level, %s neighbours)%s", last["epsilon"], accountant.spent_delta(step), step,
             accountant.neighbouring, f"; all {tc.num_seeds} replicas together, or one chosen by comparing them: "
             f"epsilon={accountant.epsilon(step, tc.num_seeds):.4g}" if tc.num_seeds > 1 else "")
  if health.frozen:
    raise health.diverged(step, workdir)
  return dict(last, step=step)


def expected_end(end: int, deadline: float | None, first_read: tuple[int, float], done: int, now: float,
                 previous: float) -> float:
  """The step training will end at: `end`, or sooner where the time budget's deadline falls at the rate
  measured since the first dispatch was read (at first_read = (step, time): compilation excluded), the
  `previous` estimate until there is a rate; the learning rates' decay aims at it, so that a timed run
  anneals too."""
  if deadline is None:
    return end
  if done == first_read[0]:
    return previous
  rate = (done - first_read[0]) / max(now - first_read[1], 1e-9)
  return min(end, done + rate * max(deadline - now, 0.0))


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
