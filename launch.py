"""dg_jax command line.

  python launch.py --config=configs/default.py --workdir=W                 # train (resumes W by default)
  python launch.py --mode=generate --workdir=W --num_samples=N --output=F.npz [--csv_output=F.csv]
      (or, streamed to shards in bounded memory: --output=DIR.parquet or --output=PATH-{shard}.npz)
  python launch.py --mode=export --workdir=W --bundle=B                    # generator-only bundle to share
      (generate and export take --seed_index=k --checkpoint=latest|best|STEP; default: the best-scored
       replica's best generator when the run was scored, else replica 0's latest)
  python launch.py --mode=generate --bundle=B --num_samples=N --output=F.npz
  python launch.py --mode=retrain_attributes --workdir=W_OR_BUNDLE --attributes_file=A.npz --bundle=B
  python launch.py --config=configs/baselines.py:ar --workdir=W                # a baseline (hmm|ar|rnn|naive_gan)
  python launch.py --mode=evaluate --real=R.npz --synthetic=S.npz [--synthetic=S2.npz] --out=DIR
  python launch.py --mode=sweep --config=configs/mba.py --workdir=W --sample_lens=1,5,10,25,50 \
      --config.train.num_seeds=4 --real_test=TEST.npz                      # S ablation, mean ± std over 4 seeds
  python launch.py --mode=devices                                          # what JAX sees (add the flags below)
Any config field can be overridden: --config.train.num_steps=1000 --config.data.path=F.npz ...

Several processes (one per host of a pod, or several on one machine), each with the same flags plus
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
or --config.distributed=True where JAX finds the cluster itself (SLURM, TPU pods, Open MPI, Kubernetes).

Exit statuses (dg_jax/failures.py): 0 success; 1 crash; 2 bad input (one line naming the file and the
problem); 3 diverged (replicas frozen, everything saved); 4 the workdir is held by another trainer;
128 + N stopped by signal N and checkpointed (143 for SIGTERM). With several processes, all exit
with the status and line of the first that failed.
"""
import atexit
import json
import logging as std_logging
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

import dg_jax  # noqa: F401  (sets XLA's CPU flags before JAX starts)

MODES = ("train", "generate", "export", "retrain_attributes", "evaluate", "sweep", "devices")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); needed to train.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, config, metrics.jsonl (retrain_attributes: "
                               "a generator bundle folder also works).")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "generate: number of series; sweep: series generated "
                                    "per S to score (0 = as many as the training data).")
_OUTPUT = flags.DEFINE_string("output", None, "generate: output .npz (the project's format); or streamed, in "
                              "shards: DIR.parquet (a folder of Parquet shards, long format) or PATH-{shard}.npz "
                              "(dg_jax/shards.py).")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", 8192, "generate, sharded --output: series per shard (memory is "
                                   "bounded by one shard).")
_CSV_OUTPUT = flags.DEFINE_string("csv_output", None, "generate: also write a long-format CSV here.")
_SEED = flags.DEFINE_integer("seed", 0, "generate, sweep: sampling seed (same seed, same samples).")
_LENGTH = flags.DEFINE_integer("length", None, "generate: force this many records per series.")
_ATTRIBUTES_FILE = flags.DEFINE_string(
    "attributes_file", None, "generate: condition on these attribute rows (npz); retrain_attributes: the new mix.")
_ATTRIBUTE = flags.DEFINE_multi_string("attribute", [], "generate: condition on name=label (repeat per attribute).")
_BUNDLE = flags.DEFINE_string("bundle", None, "Generator bundle folder (export: written; generate: read).")
_SEED_INDEX = flags.DEFINE_integer("seed_index", None, "generate, export: the replica k (seed train.seed + k) of a "
                                   "train.num_seeds run; default the best-scored one when scored, else 0.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "auto", "generate, export: latest | best (the replica's best-scored "
                                  "generator, train.eval_every) | a kept step number; auto = best when scored, "
                                  "else latest.")
_EXACT_SPAN = flags.DEFINE_enum(
    "exact_span_at_generation", None, ["auto", "true", "false"], "generate, export: rescale each generated "
    "normalised series to span exactly what its min/max imply (model.exact_span_at_generation; "
    "docs/design.md); auto = unless features' levels move together (the default config's rule); unset = as "
    "the run's config says. Works on any trained run: training never sees it.")
_RETRAIN_STEPS = flags.DEFINE_integer("retrain_steps", 2000, "retrain_attributes: training steps.")
_REAL = flags.DEFINE_string("real", None, "evaluate: the real data (npz).")
_SYNTHETIC = flags.DEFINE_multi_string("synthetic", [], "evaluate: synthetic data (npz); repeat to compare sets.")
_TRAIN = flags.DEFINE_string("train", None, "evaluate: training data (npz) for the nearest-neighbour plot "
                             "(default: --real).")
_OUT = flags.DEFINE_string("out", None, "evaluate: report folder (metrics.json, report.md, PNGs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Several processes: HOST:PORT where process 0 "
                                   "serves JAX's coordinator (the same on every process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many in all.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0..num_processes-1.")
_COMPILE_CACHE = flags.DEFINE_string(
    "compile_cache", os.path.join(os.path.expanduser("~"), ".cache", "dg_jax", "xla"),
    "JAX's persistent compilation cache: later launches of the same program (a resume, generation, each run "
    "of a sweep) load it instead of compiling again. '' = off; JAX_COMPILATION_CACHE_DIR, when set, wins.")
_REAL_TEST = flags.DEFINE_string("real_test", None, "sweep: held-out real data to score every seed against: an npz "
                                 "file, or split:NAME for the training folder's data_NAME.npz (default: the training "
                                 "data, which cannot show overfitting).")
_SAMPLE_LENS = flags.DEFINE_string("sample_lens", "1,2,5,10,25,50", "sweep: the S values to train, comma-separated "
                                   "(values above T are an error); the default sweep.")
_VARIANTS = flags.DEFINE_string("variants", None, "sweep: named config variants, 'name=field=value,field=value;...' "
                                "('paper=;no_aux=model.aux_critic=False'; 'name=' alone: the config as given).")
_GRID = flags.DEFINE_string("grid", None, "sweep: every combination of 'field=v1,v2;field2=v1,v2' "
                            "('train.learning_rate=1e-4,1e-3').")
_POSTHOC = flags.DEFINE_enum("posthoc_scores", None, ["full", "quick", "off"], "evaluate, sweep: TimeGAN's "
                             "discriminative and predictive scores (a GRU trained post hoc, 5 repeats): full = the "
                             "published 2000/5000 steps (minutes per set on a CPU); quick = 100/100 steps, 2 "
                             "repeats (smoke runs only). Default: full for evaluate, off for sweep.")
_BASELINE = flags.DEFINE_string("baseline", None, "sweep: the variant the others are tested against (default: the "
                                "first).")


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


def _use_compile_cache() -> None:
  """Turns on JAX's persistent compilation cache (before anything compiles). With a size limit JAX
  evicts old entries and takes a file lock (filelock) around each read and write, so processes that
  share the folder (several runs, or the processes of a multi-process run) never see half an entry."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ or not _COMPILE_CACHE.value:
    return
  import jax
  jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
  jax.config.update("jax_compilation_cache_max_size", 4 << 30)  # bytes; the least recently used go first
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)  # only what is worth keeping


def _start_processes() -> None:
  """jax.distributed.initialize, once, before anything uses JAX: with the flags' coordinator, or with
  what JAX detects of the cluster under --config.distributed=True. On CPU the processes' collectives
  go through gloo, so several processes on one machine form one mesh (how pods are tested here)."""
  explicit = [f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)]
  if any(explicit) and not all(explicit):
    raise app.UsageError("several processes need all of --coordinator_address, --num_processes and --process_id")
  if not (all(explicit) or (_CONFIG.value is not None and _CONFIG.value.get("distributed"))):
    return
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # The compiled programs, kept for reuse (train_step.program_config), hold the processes' collectives:
  # free them at exit while JAX's distributed client still runs.
  atexit.register(jax.clear_caches)
  if jax.process_index() != 0:  # one progress log per run: the others report only warnings and errors
    std_logging.getLogger("dg_jax").setLevel(std_logging.WARNING)


def _devices():
  import jax
  devices = jax.devices()
  print(f"process {jax.process_index()} of {jax.process_count()}: {len(jax.local_devices())} local and "
        f"{len(devices)} global device(s), {devices[0].platform} ({devices[0].device_kind}); "
        f"local: {jax.local_devices()}", flush=True)


def _train():
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--mode=train needs --config and --workdir")
  if "baseline" in _CONFIG.value:
    from dg_jax.baselines import train_baseline
    train_baseline(_CONFIG.value, _WORKDIR.value)
  else:
    from dg_jax.train import train_and_evaluate
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _load_generator(workdir, bundle):
  from dg_jax import sampling
  return sampling.load_generator(workdir, bundle, _SEED_INDEX.value, _CHECKPOINT.value, _EXACT_SPAN.value)


def _generate():
  from dg_jax import sampling, shards, sharding
  from dg_jax.data import encoding
  if not _OUTPUT.value:
    raise app.UsageError("--mode=generate needs --output=F.npz, DIR.parquet or PATH-{shard}.npz")
  if shards.is_sharded(_OUTPUT.value) and _CSV_OUTPUT.value:
    raise app.UsageError("--csv_output goes with a single-file --output (F.npz); shards are written as they are")
  from dg_jax.baselines import is_baseline_run, load_baseline
  if _WORKDIR.value and is_baseline_run(_WORKDIR.value):
    if _ATTRIBUTES_FILE.value or _ATTRIBUTE.value or _LENGTH.value:
      raise app.UsageError("baselines generate unconditionally: drop --attributes_file/--attribute/--length")
    if shards.is_sharded(_OUTPUT.value):
      raise app.UsageError("baselines write a single file: --output=F.npz")
    data = load_baseline(_WORKDIR.value).generate(_NUM_SAMPLES.value, _SEED.value)
  else:
    model, params, config = _load_generator(None if _BUNDLE.value else _WORKDIR.value, _BUNDLE.value)
    attributes = None
    if _ATTRIBUTES_FILE.value:
      attributes = sampling.attributes_from_file(_ATTRIBUTES_FILE.value, model.schema)
    elif _ATTRIBUTE.value:
      attributes = sampling.parse_attribute_labels(_ATTRIBUTE.value, model.schema, _NUM_SAMPLES.value)
    if shards.is_sharded(_OUTPUT.value):
      what = dict(source=_BUNDLE.value or _WORKDIR.value, generated_from=json.loads(config.to_json()).get("generated_from"))
      shards.generate_to_shards(model, params, _NUM_SAMPLES.value if attributes is None else len(attributes),
                                _SEED.value, _OUTPUT.value, what, attributes=None if attributes is None else
                                encoding.encode_attributes(attributes, model.schema), length=_LENGTH.value,
                                shard_size=_SHARD_SIZE.value)
      return
    data = sampling.generate(model, params, _NUM_SAMPLES.value, _SEED.value, attributes, _LENGTH.value)
  if sharding.is_primary():  # every process generated the same series; one writes them
    sampling.write_outputs(data, _OUTPUT.value, _CSV_OUTPUT.value)


def _export():
  from dg_jax import sharding
  from dg_jax.checkpoints import save_bundle
  if not _BUNDLE.value:
    raise app.UsageError("--mode=export needs --bundle=FOLDER")
  model, params, config = _load_generator(_WORKDIR.value, None)
  if sharding.is_primary():  # the bundle's config says which replica and checkpoint (generated_from)
    save_bundle(_BUNDLE.value, sharding.to_host(params), model.schema, config.to_json(indent=1))
  std_logging.getLogger("dg_jax").info("exported the generator to %s", _BUNDLE.value)


def _retrain_attributes():
  from dg_jax.retrain import retrain_attributes_cli
  if not (_ATTRIBUTES_FILE.value and _BUNDLE.value):
    raise app.UsageError("--mode=retrain_attributes needs --attributes_file and --bundle (the output)")
  retrain_attributes_cli(_WORKDIR.value, _ATTRIBUTES_FILE.value, _BUNDLE.value, _RETRAIN_STEPS.value, _SEED.value)


def _evaluate():
  from dg_jax.evaluation.report import evaluate_files
  if not (_REAL.value and _SYNTHETIC.value and _OUT.value):
    raise app.UsageError("--mode=evaluate needs --real=R.npz, --synthetic=S.npz (repeatable) and --out=DIR")
  evaluate_files(_REAL.value, _SYNTHETIC.value, _OUT.value, train_path=_TRAIN.value,
                 posthoc_settings=_posthoc_settings("full"))
  std_logging.getLogger("dg_jax").info("wrote metrics.json and report.md to %s", _OUT.value)


def _posthoc_settings(default: str):
  from dg_jax.evaluation.posthoc import PRESETS
  return PRESETS[_POSTHOC.value or default]


def _sweep():
  from dg_jax import sweep
  if _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError("--mode=sweep needs --config and --workdir")
  if (_VARIANTS.value or _GRID.value) and (flags.FLAGS["sample_lens"].present or (_VARIANTS.value and _GRID.value)):
    raise app.UsageError("--mode=sweep takes one of --variants, --grid and --sample_lens")
  try:
    variants = (sweep.parse_variants(_VARIANTS.value) if _VARIANTS.value else sweep.parse_grid(_GRID.value)
                if _GRID.value else sweep.sample_len_variants(sweep.parse_sample_lens(_SAMPLE_LENS.value)))
    sweep.resolve(_CONFIG.value, variants, _BASELINE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  sweep.run_sweep(_CONFIG.value, _WORKDIR.value, variants, _NUM_SAMPLES.value, _SEED.value, _REAL_TEST.value,
                  _BASELINE.value, _posthoc_settings("off"))


def _run(mode: str) -> None:
  if (mode not in ("train", "sweep", "evaluate", "devices") and not _WORKDIR.value
      and not (_BUNDLE.value and mode == "generate")):
    raise app.UsageError(f"--mode={mode} needs --workdir" + (" or --bundle" if mode == "generate" else ""))
  if mode in ("train", "sweep") and _CONFIG.value is not None:
    _configure_cpu_devices(_CONFIG.value)
  _use_compile_cache()
  _start_processes()
  from dg_jax import failures
  failures.watch_peers()
  dict(train=_train, generate=_generate, export=_export, retrain_attributes=_retrain_attributes,
       evaluate=_evaluate, sweep=_sweep, devices=_devices)[mode]()


def main(argv):
  del argv
  # Libraries (Orbax above all) log at INFO through absl; keep their chatter out of the progress log.
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("dg_jax").setLevel(std_logging.INFO)
  from dg_jax import failures
  try:
    _run(_MODE.value)
  except (Exception, KeyboardInterrupt) as e:  # every failure: its own status, one line, the same on every process
    if isinstance(e, app.UsageError):
      e = failures.BadInput(f"{e} (python launch.py --helpshort lists the flags)")
    if isinstance(e, failures.Preempted):
      std_logging.getLogger("dg_jax").warning("%s", e)
      sys.exit(e.status)
    if not hasattr(e, "status"):
      traceback.print_exc()  # an unexpected failure (a bug, the environment): its traceback, then the line
    shared = failures.announce(e)
    print(failures.one_line(e), file=sys.stderr, flush=True)
    if shared:  # the peers are leaving: skip JAX's shutdown barrier with them
      std_logging.shutdown()
      os._exit(failures.exit_status(e))
    sys.exit(failures.exit_status(e))


if __name__ == "__main__":
  app.run(main)
