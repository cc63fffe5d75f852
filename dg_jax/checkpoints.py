"""Orbax checkpoints of a training run, and the generator-only bundle that data holders share.

A checkpoint holds params, optimizer states, step, the run's RNG key, the config and the schema, a
fingerprint of the training data, and for a private run the privacy spent so far (epsilon, delta, steps).
Orbax writes each step into a temporary folder and renames it when complete, so a run killed
during a save keeps its last good checkpoint. With several processes every process takes part in
each save and restore (Orbax coordinates them; process 0 writes the metadata).
The run's PRNG key is stored as its raw key data, whatever `jax_default_prng_impl` is (threefry's
is 2 words, rbg's 4); a restore reads it back under the same implementation.

Only the trainer that holds the workdir's lock (dg_jax/workdir_lock.py) opens it as the writer, which
removes a dead trainer's temporary folders; everything else opens it read-only and changes nothing, so
reading a run while it trains never disturbs it. Restoring takes the newest readable checkpoint: an
unreadable one is named in a warning and an older one is used (the writer then sets the unreadable ones
aside, into UNREADABLE_DIR, so that the steps it redoes can be saved again).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from typing import Callable, TypeVar

import flax.serialization
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dg_jax import io_utils
from dg_jax.data.encoding import Schema
from dg_jax.failures import EXIT_CRASH, BadInput

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
UNREADABLE_DIR = "unreadable_checkpoints"
BUNDLE_FILES = ("generator.msgpack", "schema.json", "config.json")
BUNDLE_MANIFEST = "manifest.json"  # written last: the file names and sha256 of a complete bundle
PRIVACY_ITEM, DATA_ITEM, PROGRESS_ITEM = "privacy", "data", "progress"
T = TypeVar("T")


class NotARun(BadInput):
  """A path given as a workdir holds no training run (or no checkpoint yet)."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved, or none of a run's checkpoints can be read."""
  status = EXIT_CRASH


class _HideReadOnlyNotice:
  """Orbax warns 'Given directory is read only' at every read-only manager: noise for a reader."""

  def filter(self, record) -> bool:
    return "is read only" not in record.getMessage()


logging.getLogger("absl").addFilter(_HideReadOnlyNotice())

# Orbax's replica-parallel save slices every replicated leaf once per device, compiling one slice per leaf
# shape and device (120 compiles, 4-5 s, in the first save of a tiny run on 8 devices) to share out the
# device-to-host copy of a state of a few MB: each shard is written by the device holding replica 0 instead.
_quiet = lambda record: "overriding" not in record.getMessage()  # noqa: E731  (Orbax warns at every override)
logging.getLogger("absl").addFilter(_quiet)
ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                        override=True)
logging.getLogger("absl").removeFilter(_quiet)


class Checkpointer:
  """writer=True only for the trainer holding the workdir's lock: it may create the folder and remove
  temporary folders of interrupted saves. Readers (the default) never create, delete or rename anything."""

  def __init__(self, workdir: str, keep: int = 2, writer: bool = False):
    self.workdir, self.writer = workdir, writer
    self.directory = io_utils.as_path(workdir) / CHECKPOINT_DIR
    if not writer and not self.directory.is_dir():
      raise NotARun(f"{workdir}: not a training run (no {CHECKPOINT_DIR}/ folder); check --workdir")
    options = (ocp.CheckpointManagerOptions(max_to_keep=keep, cleanup_tmp_directories=True) if writer else
               ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0))
    self.manager = _listing(lambda: ocp.CheckpointManager(self.directory, options=options))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: dict, key: jax.Array, config_json: str, schema: Schema,
           privacy_spent: dict | None = None, data: dict | None = None, progress: dict | None = None) -> None:
    """Starts an asynchronous save (wait() or the next save finishes it); raises CheckpointError if
    Orbax declines the step (it skips one that is not newer than the latest)."""
    assert self.writer, "only the trainer that holds the workdir's lock saves"
    extra = {name: ocp.args.JsonSave(value) for name, value in ((PRIVACY_ITEM, privacy_spent), (DATA_ITEM, data),
                                                                (PROGRESS_ITEM, progress)) if value}
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(dict(state, rng=jax.random.key_data(key))),
        config=ocp.args.JsonSave(json.loads(config_json)),
        schema=ocp.args.JsonSave(json.loads(schema.to_json())), **extra))
    if not saved:
      raise CheckpointError(f"{self.directory}: the checkpoint of step {step} was not saved (Orbax skipped it; "
                            f"the kept steps are {self.steps()})")

  def restore_newest(self, load: Callable[[int], T], step: int | None = None) -> tuple[int, T]:
    """(step, load(step)) for `step`, or by default the newest step that `load` can read: a checkpoint
    that fails to load is named in a warning and the next older one is tried. BadInput from `load`
    (e.g. a refused resume) is raised, not taken for an unreadable checkpoint. A checkpoint that
    disappears while being read (the trainer deleted it, keeping newer ones) is skipped silently."""
    if step is not None and step not in self.steps():
      raise BadInput(f"{self.workdir}: no checkpoint of step {step}; the kept ones are {self.steps()} "
                     "(train.keep_checkpoints says how many are kept)")
    tried, unreadable = set(), []
    while True:
      _listing(self.manager.reload)  # a live run's newest steps
      candidates = [s for s in sorted(self.steps(), reverse=True) if s not in tried]
      if step is not None:
        candidates = [step] if step not in tried else []
      if not candidates:
        break
      tried.add(candidates[0])
      try:
        return candidates[0], load(candidates[0])
      except BadInput:
        raise
      except Exception as e:  # noqa: BLE001  (Orbax and tensorstore raise many kinds on bad files)
        if not (self.directory / str(candidates[0])).exists():
          continue
        unreadable.append(candidates[0])
        log.warning("checkpoint %s is unreadable (%s: %s)%s", self.directory / str(candidates[0]), type(e).__name__,
                    str(e).splitlines()[0][:300] if str(e) else "", "" if step is not None else "; trying an older one")
    if unreadable:
      raise CheckpointError(f"{self.directory}: no readable checkpoint (unreadable: steps {sorted(unreadable)})")
    if step is not None:
      raise BadInput(f"{self.workdir}: the checkpoint of step {step} was deleted while it was read (a live run keeps "
                     "its newest train.keep_checkpoints)")
    raise NotARun(f"{self.workdir}: no checkpoint yet (train first, or pass --bundle)")

  def set_aside_newer_than(self, step: int) -> None:
    """Writer: moves the (unreadable) checkpoints newer than `step` into UNREADABLE_DIR, so that the
    steps the run redoes from `step` are saved again; every process calls this."""
    newer = [s for s in self.steps() if s > step]
    if not newer:
      return
    if jax.process_index() == 0:
      aside = io_utils.as_path(self.workdir) / UNREADABLE_DIR
      aside.mkdir(parents=True, exist_ok=True)
      for s in newer:
        target = aside / f"{s}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        (self.directory / str(s)).rename(target)
        log.warning("moved the unreadable checkpoint of step %d to %s", s, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("dg_jax: unreadable checkpoints set aside")
    self.manager.reload()

  def restore_arrays(self, step: int, abstract: tuple[dict, jax.ShapeDtypeStruct | None],
                     sharding: jax.sharding.Sharding | None = None, fresh: Callable[[], dict] | None = None,
                     partial: bool = False):
    """-> (state, key) of `step`, placed with `sharding` (default: the first local device), whatever
    device layout the checkpoint was saved from. `abstract`: the shapes of (state, key), e.g.
    jax.eval_shape of init_replicas. State fields (dict entries, at any depth) that a checkpoint written
    before they existed lacks are taken from `fresh()`, a fresh state's host values.
    partial: `abstract`'s state is a part of the saved one (e.g. only the generators), and only that
    part is read; a key of None is not read (None comes back).
    The key comes back under the current jax_default_prng_impl, which must be the one it was saved with."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state, abstract_key = abstract
    saved = _dict_prefixes(dict(ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")))
    target, missing = _split_missing(abstract_state, saved)
    if missing and fresh is None:
      raise CheckpointError(f"{self.directory / str(step)}: the state lacks {missing}")
    template = jax.random.key(0)  # the current PRNG implementation: its key data's shape and its name
    if abstract_key is not None:
      target = dict(target, rng=jax.ShapeDtypeStruct(abstract_key.shape + jax.random.key_data(template).shape,
                                                     jax.numpy.uint32))
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), target)
    args = (ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                   partial_restore=True) if partial else ocp.args.StandardRestore(target))
    state = dict(self.manager.restore(step, args=ocp.args.Composite(state=args))["state"])
    key = None if abstract_key is None else jax.random.wrap_key_data(state.pop("rng"),
                                                                     impl=jax.random.key_impl(template))
    if missing:
      defaults = fresh()
      for path in missing:  # the same host values on every process, laid out as the rest
        value = jax.tree.map(lambda x: jax.make_array_from_callback(x.shape, sharding, lambda i: x[i]),
                             functools.reduce(lambda tree, k: tree[k], path, defaults))
        functools.reduce(lambda tree, k: tree[k], path[:-1], state)[path[-1]] = value
    return state, key

  def read_metadata(self, step: int) -> tuple[dict, Schema]:
    """The config (as a dict) and schema of a checkpoint, without loading any arrays."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), schema=ocp.args.JsonRestore()))
    return out["config"], Schema.from_json(json.dumps(out["schema"]))

  def read_json(self, step: int, name: str) -> dict | None:
    """A JSON item of a checkpoint (PRIVACY_ITEM, DATA_ITEM, PROGRESS_ITEM), or None where the checkpoint has none
    (a run without privacy, or one saved before the item existed)."""
    if not (self.directory / str(step) / name).is_dir():
      return None
    return self.manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.JsonRestore()}))[name]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def check_for_errors(self) -> None:
    """Raises the error of a finished asynchronous save, if it failed."""
    self.manager.check_for_errors()

  def close(self) -> None:
    self.manager.close()


def _dict_prefixes(tree) -> set[tuple]:
  """Every path of dict keys from the root of a (saved) tree: ('best',), ('best', 'score'), ..."""
  out = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = []
    for k in path:
      if not isinstance(k, jax.tree_util.DictKey):
        break
      keys.append(k.key)
      out.add(tuple(keys))
  return out


def _split_missing(tree: dict, saved: set[tuple], prefix: tuple = ()) -> tuple[dict, list[tuple]]:
  """(`tree` without the dict entries that `saved` lacks, the paths of those entries)."""
  kept, missing = {}, []
  for k, v in tree.items():
    path = prefix + (k,)
    if path not in saved:
      missing.append(path)
    elif isinstance(v, dict):
      kept[k], more = _split_missing(v, saved, path)
      missing += more
    else:
      kept[k] = v
  return kept, missing


def _listing(fn: Callable[[], T], attempts: int = 10) -> T:
  """fn(), which lists a run's checkpoints, retried when a step it listed vanished before it looked
  inside (a live trainer deleting an old step)."""
  for _ in range(attempts - 1):
    try:
      return fn()
    except FileNotFoundError:
      time.sleep(0.05)
  return fn()


def save_bundle(directory: str, generator_params, schema: Schema, config_json: str) -> None:
  """Generator params + schema + config: enough to generate, with no critics and no training data.
  A private run's config leaves out train.seed, from which its batches and noise derive. The bundle
  is complete or has no manifest (written last, with each file's sha256), whatever interrupts it."""
  config = json.loads(config_json)
  if config.get("privacy", {}).get("enabled"):
    config["train"].pop("seed", None)
  config_json = json.dumps(config, indent=1)
  contents = dict(zip(BUNDLE_FILES, (flax.serialization.msgpack_serialize(jax.device_get(generator_params)),
                                     schema.to_json().encode(), config_json.encode())))
  manifest = dict(files={name: hashlib.sha256(data).hexdigest() for name, data in contents.items()})
  io_utils.write_folder(directory, dict(contents, **{BUNDLE_MANIFEST: json.dumps(manifest, indent=1).encode()}),
                        marker=BUNDLE_MANIFEST)


def is_bundle(path: str) -> bool:
  return io_utils.exists(io_utils.join(path, BUNDLE_FILES[0])) or io_utils.exists(io_utils.join(path, BUNDLE_MANIFEST))


def load_bundle(directory: str):
  """-> (generator params, schema, config dict). An interrupted export, or files that do not match
  the manifest, are refused; a bundle written before bundles had a manifest is read as it is."""
  files = {name: io_utils.join(directory, name) for name in BUNDLE_FILES}
  missing = [name for name, path in files.items() if not io_utils.exists(path)]
  if io_utils.is_incomplete(directory):
    raise BadInput(f"{directory}: an export into this bundle was interrupted (its files may be mixed); export again")
  if missing:
    raise BadInput(f"{directory}: not a complete generator bundle (missing {missing})")
  contents = {name: io_utils.read_bytes(path) for name, path in files.items()}
  manifest_path = io_utils.join(directory, BUNDLE_MANIFEST)
  if io_utils.exists(manifest_path):
    expected = json.loads(io_utils.read_text(manifest_path))["files"]
    changed = [n for n in BUNDLE_FILES if hashlib.sha256(contents[n]).hexdigest() != expected.get(n)]
    if changed:
      raise BadInput(f"{directory}: {changed} do not match the bundle's {BUNDLE_MANIFEST} (a damaged or "
                     "mixed bundle); export it again")
  else:
    log.warning("%s has no %s (written by an older dg_jax): its files are used as they are", directory,
                BUNDLE_MANIFEST)
  params = flax.serialization.msgpack_restore(contents[BUNDLE_FILES[0]])
  schema = Schema.from_json(contents[BUNDLE_FILES[1]].decode())
  return params, schema, json.loads(contents[BUNDLE_FILES[2]])
