"""Generation: trained generator -> samples in model space -> original units -> files."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np
import logging

from dg_jax import sharding
from dg_jax.checkpoints import PRIVACY_ITEM, Checkpointer, load_bundle
from dg_jax.data import encoding
from dg_jax.data.schema import DataError, Dataset
from dg_jax.failures import BadInput
from dg_jax.models.doppelganger import DoppelGANger, rescales_at_generation, sample_noise
from dg_jax.settings import model_config, privacy_config, train_config
from dg_jax.sharding import DATA
from dg_jax.train_step import NOISE_SPECS, init_replicas, replica

log = logging.getLogger(__name__)


def generator_part(state: dict) -> dict:
  """What generation reads of a training state: the replicas' generators (latest and best, with their
  BatchNorm statistics), best scores, health and steps; not the critics or the optimiser states."""
  return dict(params=dict(generator=state["params"]["generator"]), best=state["best"], health=state["health"],
              step=state["step"])


def restore_run(workdir: str, step: int | None = None, generator_only: bool = False):
  """-> (model, training state of all K replicas, config) of a workdir's checkpoint at `step` (default: the
  newest readable one); generator_only: only its generator_part, read alone (critics and optimiser
  states are never read, so a run keeps generating whatever optax's state layout becomes).
  Read-only: a run may be read while it trains, and is never changed."""
  ckpt = Checkpointer(workdir)

  def read(step):
    config, schema = ckpt.read_metadata(step)
    config = ml_collections.ConfigDict(config)
    spent = ckpt.read_json(step, PRIVACY_ITEM)
    if spent:  # travels into exported bundles: what a data user may rely on
      config.privacy_spent = spent
    model = DoppelGANger(schema, model_config(config))
    tc = train_config(config)
    pc = privacy_config(config)  # a DP-BandMF run's state holds its noise streams
    abstract = jax.eval_shape(lambda: init_replicas(model, tc, 0, tc.num_seeds, pc))
    if generator_only:
      abstract = (generator_part(abstract[0]), None)
    fresh = lambda: jax.device_get(init_replicas(model, tc, 0, tc.num_seeds, pc)[0])  # noqa: E731
    # replicated over every device of every process: what generation (and a multi-process sweep) needs
    state, _ = ckpt.restore_arrays(step, abstract, sharding.replicated(sharding.make_mesh()), partial=generator_only,
                                   fresh=lambda: generator_part(fresh()) if generator_only else fresh())
    return model, state, config
  try:
    return ckpt.restore_newest(read, step)[1]
  finally:
    ckpt.close()


CHECKPOINTS = ("auto", "latest", "best")  # or a step number


def choose_generator(state: dict, seed_index: int | None = None, checkpoint: str = "auto", source: str = "",
                     private: bool = False):
  """-> (generator params, dict(replica, checkpoint, step)) chosen from a K-replica training state.

  checkpoint: "best" (the replica's best-scored generator, train.eval_every), "latest" (the state's
  own), "step" (the same, of a checkpoint restore_run chose by step), or "auto": best when the run was
  scored, else latest.
  seed_index: the replica; default the one with the lowest best score when scored, else the first that
  did not diverge (train_step.guard freezes those; their latest generator is the last finite one).
  A private run's default is replica 0 whatever happened to it: a choice made by comparing replicas is
  covered only by the epsilon of releasing all of them (privacy.spent_record)."""
  best_scores = np.asarray(jax.device_get(state["best"]["score"]))
  frozen_at = np.asarray(jax.device_get(state["health"]["frozen_at"]))
  scored = np.isfinite(best_scores)
  num = len(best_scores)
  kind = ("best" if scored.any() else "latest") if checkpoint == "auto" else checkpoint
  if kind == "best" and not scored.any():
    raise BadInput(f"{source}: --checkpoint=best needs a run scored while training (train.eval_every > 0)")
  if seed_index is None and private:
    if frozen_at[0] >= 0:
      raise BadInput(f"{source}: replica 0 diverged (frozen before step {frozen_at[0] + 1}). A private run's default "
                     "replica is fixed in advance so that releasing it costs one replica's epsilon; pass "
                     "--seed_index=k: a replica chosen by comparing them is covered by epsilon_all_replicas")
    seed_index = 0
  if seed_index is None:
    healthy = frozen_at < 0 if (frozen_at < 0).any() else np.ones(num, bool)
    seed_index = (int(np.nanargmin(np.where(scored & healthy, best_scores, np.nan))) if (scored & healthy).any()
                  else int(np.argmax(healthy)))
  if not 0 <= seed_index < num:
    raise BadInput(f"{source}: --seed_index={seed_index}, but the run has {num} replica(s) (0..{num - 1})")
  if kind == "best" and not scored[seed_index]:
    raise BadInput(f"{source}: replica {seed_index} was never scored")
  if frozen_at[seed_index] >= 0:
    log.warning("%s: replica %d diverged and was frozen with its state before step %d", source, seed_index,
                frozen_at[seed_index] + 1)
  source_state = state["best"] if kind == "best" else dict(generator=state["params"]["generator"], step=state["step"])
  # indexed on the host: an eager x[k] on device compiles a gather per leaf (about 1 s in all)
  params = replica(jax.device_get(source_state["generator"]), seed_index)
  step = int(jax.device_get(source_state["step"])[seed_index])
  if kind != "best" and frozen_at[seed_index] >= 0:
    step = int(frozen_at[seed_index])
  chosen = dict(replica=seed_index, checkpoint=kind, step=step)
  if scored[seed_index]:
    chosen["best_score"] = float(best_scores[seed_index])
  what = "the checkpointed" if kind == "step" else f"the {kind}"
  log.info("generating from %s: replica %d of %d, %s generator (step %d)%s", source, seed_index, num, what, step,
           f"; best score {best_scores[seed_index]:.4g}" if scored[seed_index] else "")
  return params, chosen


def load_generator(workdir: str | None = None, bundle: str | None = None, seed_index: int | None = None,
                   checkpoint: str = "auto", exact_span_at_generation: bool | str | None = None):
  """-> (model, generator params, config) from a workdir's checkpoint (choose_generator picks the replica
  and checkpoint: `checkpoint` is auto|latest|best or a step number; config.generated_from records the
  choice) or a generator bundle. exact_span_at_generation: "auto", True or False (or their strings)
  overrides the saved model.exact_span_at_generation (it changes generation only, so any trained generator
  takes any; the returned config records the choice, and an exported bundle keeps it); None keeps the
  saved one."""
  if not bundle:
    step = None if str(checkpoint) in CHECKPOINTS else _step_number(checkpoint)
    model, state, config = restore_run(workdir, step, generator_only=True)
    params, chosen = choose_generator(state, seed_index, "step" if step is not None else str(checkpoint), workdir,
                                      private=privacy_config(config).enabled)
    config.generated_from = chosen
  else:
    if seed_index is not None or str(checkpoint) != "auto":
      raise BadInput(f"{bundle}: a bundle holds one generator; --seed_index and --checkpoint apply to workdirs")
    params, schema, config = load_bundle(bundle)
    config = ml_collections.ConfigDict(config)
    model = DoppelGANger(schema, model_config(config))
  if exact_span_at_generation is not None:
    cfg = dataclasses.replace(model.cfg, exact_span_at_generation=exact_span_at_generation)  # parses "true", ...
    if cfg.exact_span and cfg.exact_span_at_generation is False:
      raise BadInput(f"{bundle or workdir}: trained with model.exact_span=True, its generator always rescales; "
                     "--exact_span_at_generation=false cannot turn that off")
    section = config.model.to_dict()  # a saved "auto" is a str field, which takes no bool
    section["exact_span_at_generation"] = cfg.exact_span_at_generation
    config.model = ml_collections.ConfigDict(section)
    model = DoppelGANger(model.schema, cfg)
  if model.cfg.exact_span_at_generation == "auto" and model.schema.additional_dim:
    log.info("model.exact_span_at_generation=auto: %s", "each series rescaled to span what its min/max imply"
             if rescales_at_generation(model.cfg, model.schema) else "features' levels move together; as generated")
  return model, params, config


def _step_number(checkpoint) -> int:
  try:
    return int(checkpoint)
  except ValueError:
    raise BadInput(f"--checkpoint={checkpoint!r}: expected one of {CHECKPOINTS} or a step number") from None


def _pad_rows(x, rows: int, axis: int = 0):
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, rows - x.shape[axis])
  return jnp.pad(x, widths)


def series_noise(seed: int, first, count: int, schema, cfg, length: int | None = None) -> dict:
  """The generator noise of series first..first+count-1: series j's from fold_in(key(seed), j), so a
  series is the same whatever the chunk, shard, device or process that generates it."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), first + jnp.arange(count))
  noise = jax.vmap(lambda k: sample_noise(k, 1, schema, cfg, length))(keys)  # [count, (steps,) 1, d]
  return {name: (jnp.moveaxis(x[:, :, 0], 0, 1) if name == "feature" else x[:, 0]) for name, x in noise.items()}


@functools.lru_cache(maxsize=8)
def _chunk_generator(model: DoppelGANger, chunk_size: int, length: int | None, conditional: bool, mesh):
  """Jitted (params, seed, first series[, attributes]) -> one chunk of `chunk_size` series, split over
  the mesh's devices; zero rows pad it to a multiple of the device count, and their series are dropped."""
  padded = -(-chunk_size // mesh.devices.size) * mesh.devices.size
  specs = (P(), NOISE_SPECS) + ((P(DATA),) if conditional else ())
  body = jax.shard_map(lambda p, noise, *attrs: model.generator.apply(p, noise, *attrs, length=length),
                       mesh=mesh, in_specs=specs, out_specs=P(DATA), check_vma=False)

  def chunk(params, seed, first, *attributes):
    noise = series_noise(seed, first, chunk_size, model.schema, model.cfg, length)
    noise = {name: _pad_rows(x, padded, axis=1 if name == "feature" else 0) for name, x in noise.items()}
    return body(params, noise, *(_pad_rows(a, padded) for a in attributes))
  return jax.jit(chunk)


def generate_encoded(model: DoppelGANger, params, num_samples: int, seed: int = 0, chunk_size: int = 500,
                     attributes: np.ndarray | None = None, length: int | None = None, first: int = 0,
                     local: bool = False) -> encoding.Encoded:
  """Model-space series first..first+num_samples-1 of `seed` (series j's noise from fold_in(key(seed), j)),
  drawn `chunk_size` at a time: the same on any number of devices and processes, in any chunks.

  attributes: encoded [num_samples, A] attributes to condition on (the attribute MLP is bypassed).
  length: force this many records per series (may exceed the training T); default: the
  generation flag decides each length.
  local: on this process's devices alone (each process its own series); default: on all devices of
  all processes, every process getting every series.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if length is not None and length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  mesh = sharding.make_mesh(local=local)
  fn = _chunk_generator(model, chunk_size, length, attributes is not None, mesh)
  params = sharding.replicate(params, mesh)
  fetch = jax.device_get if local else sharding.to_host
  parts = []
  for start in range(0, num_samples, chunk_size):
    cond = ()
    if attributes is not None:
      rows = attributes[start:start + chunk_size]
      rows = np.concatenate([rows, np.repeat(rows[-1:], chunk_size - len(rows), 0)]).astype(np.float32)
      cond = (sharding.replicate(rows, mesh),)
    out = fetch(fn(params, np.int32(seed), np.int32(first + start), *cond))
    parts.append({k: v[:chunk_size] for k, v in out.items()})
  out = {k: np.concatenate([p[k] for p in parts])[:num_samples] for k in parts[0]}
  features = out["features"]
  if length is not None:  # a forced length: the flags say "continue" up to the last record
    features[..., -2:] = encoding.lengths_to_flags(np.full(num_samples, length), length)
  return encoding.Encoded(out["attributes"], out["additional_attributes"], features)


def generate(model: DoppelGANger, params, num_samples: int, seed: int = 0, attributes: Dataset | np.ndarray | None = None,
             length: int | None = None, chunk_size: int = 500) -> Dataset:
  """Samples in original units and labels. `attributes`: [n, m] rows (codes) to condition on."""
  if attributes is not None:
    attributes = encoding.encode_attributes(np.asarray(attributes, np.float64), model.schema)
    num_samples = len(attributes)
  enc = generate_encoded(model, params, num_samples, seed, chunk_size, attributes, length)
  return encoding.decode(enc, model.schema, source=f"generated(seed={seed})")


def parse_attribute_labels(items: list[str], schema: encoding.Schema, count: int) -> np.ndarray:
  """["isp=a", "tech=fiber"] -> [count, m] codes; every attribute must be given."""
  given = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep:
      raise DataError(f"--attribute {item!r}: expected name=value")
    given[name.strip()] = value.strip()
  names = [v.name for v in schema.attribute_vars]
  unknown = sorted(set(given) - set(names))
  if unknown:
    raise DataError(f"--attribute: unknown attributes {unknown}; the model has {names}")
  missing = [n for n in names if n not in given]
  if missing:
    raise DataError(f"--attribute: conditional generation needs every attribute; missing {missing}")
  row = []
  for var in schema.attribute_vars:
    value = given[var.name]
    if var.is_categorical:
      if value not in var.categories:
        raise DataError(f"--attribute {var.name}={value!r}: unknown category; expected one of {list(var.categories)}")
      row.append(var.categories.index(value))
    else:
      try:
        row.append(float(value))
      except ValueError:
        raise DataError(f"--attribute {var.name}={value!r}: expected a number") from None
  return np.tile(np.array(row, np.float64), (count, 1))


def attributes_from_file(path: str, schema: encoding.Schema) -> np.ndarray:
  """Attribute rows (codes) from an npz file in the project's format, matched to the schema by name and label."""
  from dg_jax.data.npz_format import load_npz
  data = load_npz(path)
  names = [v.name for v in data.attribute_vars]
  cols = []
  for var in schema.attribute_vars:
    if var.name not in names:
      raise DataError(f"{path}: attribute {var.name!r} is missing (file has {names})")
    j = names.index(var.name)
    x = data.attributes[:, j]
    if var.is_categorical:
      labels = data.attribute_vars[j].categories
      unknown = sorted(set(labels[int(c)] for c in np.unique(x)) - set(var.categories))
      if unknown:
        raise DataError(f"{path}: attribute {var.name!r} has categories {unknown} the model never saw")
      x = np.array([var.categories.index(labels[int(c)]) for c in x], np.float64)
    cols.append(x)
  return np.stack(cols, axis=1)


def write_outputs(dataset: Dataset, output: str, csv_output: str | None = None) -> None:
  from dg_jax.data.npz_format import save_npz
  save_npz(dataset, output)
  log.info("wrote %d samples to %s", dataset.num_samples, output)
  if csv_output:
    from dg_jax.data.frames import write_csv_long
    write_csv_long(dataset, csv_output)
    log.info("wrote %s", csv_output)
