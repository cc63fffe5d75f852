"""dg_jax command line.

  python launch.py --config=configs/default.py --workdir=W                 # train (resumes W by default)
  python launch.py --mode=generate --workdir=W --num_samples=N --output=F.npz [--csv_output=F.csv]
  python launch.py --mode=export --workdir=W --bundle=B                    # generator-only bundle to share
  python launch.py --mode=generate --bundle=B --num_samples=N --output=F.npz
  python launch.py --mode=retrain_attributes --workdir=W --attributes_file=A.npz --bundle=B
Any config field can be overridden: --config.train.num_steps=1000 --config.data.path=F.npz ...
"""
import logging as std_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

import dg_jax  # noqa: F401  (sets XLA's CPU flags before JAX starts)

MODES = ("train", "generate", "export", "retrain_attributes")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); needed to train.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, config, metrics.jsonl.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "generate: number of series.")
_OUTPUT = flags.DEFINE_string("output", None, "generate: output .npz (the project's format).")
_CSV_OUTPUT = flags.DEFINE_string("csv_output", None, "generate: also write a long-format CSV here.")
_SEED = flags.DEFINE_integer("seed", 0, "generate: seed (same seed, same samples).")
_LENGTH = flags.DEFINE_integer("length", None, "generate: force this many records per series.")
_ATTRIBUTES_FILE = flags.DEFINE_string(
    "attributes_file", None, "generate: condition on these attribute rows (npz); retrain_attributes: the new mix.")
_ATTRIBUTE = flags.DEFINE_multi_string("attribute", [], "generate: condition on name=label (repeat per attribute).")
_BUNDLE = flags.DEFINE_string("bundle", None, "Generator bundle folder (export: written; generate: read).")
_RETRAIN_STEPS = flags.DEFINE_integer("retrain_steps", 2000, "retrain_attributes: training steps.")


def _configure_cpu_devices(config) -> None:
  """On CPU, one virtual device per core (the largest count that divides the batch): the shard_map'd
  step then runs the batch halves on both cores of a 2-core machine (1.3x the steps/s of one device).
  Must run before JAX starts its backends; JAX_NUM_CPU_DEVICES, when set, wins."""
  if "JAX_NUM_CPU_DEVICES" in os.environ:
    return
  import jax
  n = config.cpu_devices or os.cpu_count() or 1
  while config.train.batch_size % n:
    n -= 1
  jax.config.update("jax_num_cpu_devices", n)


def main(argv):
  del argv
  # Libraries (Orbax above all) log at INFO through absl; keep their chatter out of the progress log.
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("dg_jax").setLevel(std_logging.INFO)
  from dg_jax import sampling

  mode = _MODE.value
  if mode == "train":
    if _CONFIG.value is None or not _WORKDIR.value:
      raise app.UsageError("--mode=train needs --config and --workdir")
    _configure_cpu_devices(_CONFIG.value)
    from dg_jax.train import train_and_evaluate
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    return
  if not _WORKDIR.value and not (_BUNDLE.value and mode == "generate"):
    raise app.UsageError(f"--mode={mode} needs --workdir" + (" or --bundle" if mode == "generate" else ""))
  if mode == "generate":
    if not _OUTPUT.value:
      raise app.UsageError("--mode=generate needs --output=F.npz")
    model, params, _ = sampling.load_generator(None if _BUNDLE.value else _WORKDIR.value, _BUNDLE.value)
    attributes = None
    if _ATTRIBUTES_FILE.value:
      attributes = sampling.attributes_from_file(_ATTRIBUTES_FILE.value, model.schema)
    elif _ATTRIBUTE.value:
      attributes = sampling.parse_attribute_labels(_ATTRIBUTE.value, model.schema, _NUM_SAMPLES.value)
    data = sampling.generate(model, params, _NUM_SAMPLES.value, _SEED.value, attributes, _LENGTH.value)
    sampling.write_outputs(data, _OUTPUT.value, _CSV_OUTPUT.value)
  elif mode == "export":
    if not _BUNDLE.value:
      raise app.UsageError("--mode=export needs --bundle=FOLDER")
    from dg_jax.checkpoints import save_bundle
    model, params, config = sampling.load_generator(_WORKDIR.value)
    save_bundle(_BUNDLE.value, params, model.schema, config.to_json(indent=1))
    std_logging.getLogger("dg_jax").info("exported the generator to %s", _BUNDLE.value)
  elif mode == "retrain_attributes":
    if not (_ATTRIBUTES_FILE.value and _BUNDLE.value):
      raise app.UsageError("--mode=retrain_attributes needs --attributes_file and --bundle (the output)")
    from dg_jax.retrain import retrain_attributes_cli
    retrain_attributes_cli(_WORKDIR.value, _ATTRIBUTES_FILE.value, _BUNDLE.value, _RETRAIN_STEPS.value, _SEED.value)


if __name__ == "__main__":
  app.run(main)
