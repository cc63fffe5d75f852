"""Orbax checkpoints of a training run, and the generator-only bundle that data holders share.

A checkpoint holds params, optimizer states, step, the run's RNG key, the config and the schema,
and for a private run the privacy spent so far (epsilon, delta, steps).
Orbax writes each step into a temporary folder and renames it when complete, so a run killed
during a save keeps its last good checkpoint. With several processes every process takes part in
each save and restore (Orbax coordinates them; process 0 writes the metadata).
The run's PRNG key is stored as its raw key data, whatever `jax_default_prng_impl` is (threefry's
is 2 words, rbg's 4); a restore reads it back under the same implementation.
"""
from __future__ import annotations

import json

import flax.serialization
import jax
import orbax.checkpoint as ocp

from dg_jax import io_utils
from dg_jax.data.encoding import Schema

CHECKPOINT_DIR = "checkpoints"
BUNDLE_FILES = ("generator.msgpack", "schema.json", "config.json")
PRIVACY_ITEM = "privacy"


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 2):
    self.directory = io_utils.as_path(workdir) / CHECKPOINT_DIR
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict, key: jax.Array, config_json: str, schema: Schema,
           privacy_spent: dict | None = None) -> None:
    extra = {PRIVACY_ITEM: ocp.args.JsonSave(privacy_spent)} if privacy_spent else {}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(dict(state, rng=jax.random.key_data(key))),
        config=ocp.args.JsonSave(json.loads(config_json)),
        schema=ocp.args.JsonSave(json.loads(schema.to_json())), **extra))

  def restore(self, abstract: tuple[dict, jax.ShapeDtypeStruct], step: int | None = None,
              sharding: jax.sharding.Sharding | None = None):
    """-> (state, key, config dict, schema) of `step` (default: the latest), placed with `sharding`
    (default: the first local device), whatever device layout the checkpoint was saved from.
    `abstract`: the shapes of (state, key), e.g. jax.eval_shape of init_replicas.
    The key comes back under the current jax_default_prng_impl, which must be the one it was saved with."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_state, abstract_key = abstract
    template = jax.random.key(0)  # the current PRNG implementation: its key data's shape and its name
    key_data = jax.ShapeDtypeStruct(abstract_key.shape + jax.random.key_data(template).shape, jax.numpy.uint32)
    abstract = dict(abstract_state, rng=key_data)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), config=ocp.args.JsonRestore(), schema=ocp.args.JsonRestore()))
    state = dict(out["state"])
    key = jax.random.wrap_key_data(state.pop("rng"), impl=jax.random.key_impl(template))
    return state, key, out["config"], Schema.from_json(json.dumps(out["schema"]))

  def steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def read_metadata(self, step: int | None = None) -> tuple[dict, Schema]:
    """The config (as a dict) and schema of a checkpoint, without loading any arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), schema=ocp.args.JsonRestore()))
    return out["config"], Schema.from_json(json.dumps(out["schema"]))

  def read_privacy_spent(self, step: int | None = None) -> dict | None:
    """A private run's epsilon, delta and steps at a checkpoint (None for a non-private run)."""
    step = self.latest_step() if step is None else step
    if step is None or not (self.directory / str(step) / PRIVACY_ITEM).is_dir():
      return None
    return self.manager.restore(step, args=ocp.args.Composite(**{PRIVACY_ITEM: ocp.args.JsonRestore()}))[PRIVACY_ITEM]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def save_bundle(directory: str, generator_params, schema: Schema, config_json: str) -> None:
  """Generator params + schema + config: enough to generate, with no critics and no training data.
  A private run's config leaves out train.seed, from which its batches and noise derive."""
  config = json.loads(config_json)
  if config.get("privacy", {}).get("enabled"):
    config["train"].pop("seed", None)
  config_json = json.dumps(config, indent=1)
  contents = (flax.serialization.msgpack_serialize(jax.device_get(generator_params)),
              schema.to_json().encode(), config_json.encode())
  io_utils.write_files(directory, dict(zip(BUNDLE_FILES, contents)))


def is_bundle(path: str) -> bool:
  return io_utils.exists(io_utils.join(path, BUNDLE_FILES[0]))


def load_bundle(directory: str):
  """-> (generator params, schema, config dict)."""
  missing = [f for f in BUNDLE_FILES if not io_utils.exists(io_utils.join(directory, f))]
  if missing:
    raise FileNotFoundError(f"{directory}: not a generator bundle (missing {missing})")
  params = flax.serialization.msgpack_restore(io_utils.read_bytes(io_utils.join(directory, BUNDLE_FILES[0])))
  schema = Schema.from_json(io_utils.read_text(io_utils.join(directory, BUNDLE_FILES[1])))
  config = json.loads(io_utils.read_text(io_utils.join(directory, BUNDLE_FILES[2])))
  return params, schema, config
