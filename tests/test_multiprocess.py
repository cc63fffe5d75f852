"""Several JAX processes on this machine (gloo collectives, 2 CPU devices each) form one mesh: the
way pods are tested here. Each run is compared with one process holding the same number of devices;
a failure on one process ends both with its line."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from configs import tiny
from dg_jax.checkpoints import Checkpointer
from dg_jax.data import encoding
from dg_jax.data.npz_format import load_npz
from dg_jax.sampling import generate, load_generator, restore_run
from dg_jax.train import train_and_evaluate
from dg_jax.train_step import replica
from tests.conftest import run_processes

pytestmark = pytest.mark.slow

TINY = ("--config=configs/tiny.py", "--config.train.num_steps=30")
PRIVATE = ("--config.privacy.enabled=True", "--config.privacy.noise_multiplier=1.0")


def params_of(workdir):
  return replica(jax.device_get(restore_run(str(workdir))[1]), 0)["params"]


def one_process_run(workdir, **overrides):
  c = tiny.get_config()
  c.train.num_steps, c.num_devices = 30, 4  # the 2 x 2 devices of the two processes
  for name, value in overrides.items():
    section, field = name.split(".")
    c[section][field] = value
  train_and_evaluate(c, str(workdir))


def metric_steps(workdir):
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_and_generate_as_one(tmp_path):
  """A private run (so its secret seed is drawn once and shared) in two processes, whose disk fails on
  process 0 at its last metrics row: both end with that line, and the run they leave equals one process
  trained as far with that seed; then generation in two processes (a sweep is these runs in turn:
  tests/test_cli_evaluation.py)."""
  mp, single = tmp_path / "two", tmp_path / "one"
  # a full disk on process 0 at the third metrics row (tests/fault_launch.py): both processes end at once
  # with its line and status 1, and nothing the run had is lost
  logs = run_processes(*TINY, *PRIVATE, f"--workdir={mp}", fault="write_error:0@3", expect_status=1)
  assert "4 device(s) (cpu, cpu) across 2 process(es)" in logs[0] and "step 20/30" in logs[0]
  assert "step 20/30" not in logs[1]  # one progress log per run
  line = f"error: crashed with OSError: [Errno 28] No space left on device (injected): '{mp / 'metrics.jsonl'}'"
  assert logs[0].strip().splitlines()[-1] == line
  assert logs[1].strip().splitlines()[-1] == line + " (on process 0; this is process 1)"
  step = Checkpointer(str(mp)).latest_step()
  assert metric_steps(mp) == [10, 20] and step in (20, 30)  # one row per logged step, not one per process
  assert len(list((mp / "config_history").iterdir())) == 1
  seed = json.loads((mp / "config.json").read_text())["train"]["seed"]
  assert seed != tiny.get_config().train.seed  # drawn from the OS (on process 0, then shared)
  # had each process drawn its own seed, the replicas would hold different parameters and batches
  one_process_run(single, **{"privacy.enabled": True, "privacy.noise_multiplier": 1.0,
                             "privacy.secret_seed": False, "train.seed": seed, "train.num_steps": step})
  # the seed decides the initial parameters, so a second seed would differ by about the parameters' size; float
  # reduction order (gloo vs one process) may move an example across its clipping boundary, and DP's few steps
  # then part the runs by a few percent of a small leaf (1.4% seen in CI), so compare whole leaves within 10%
  for x, y in zip(*(jax.tree.leaves(params_of(w)) for w in (mp, single))):
    assert np.linalg.norm(x - y) <= 0.1 * np.linalg.norm(y)

  # generation: the same series from 2 processes (4 devices) as from this process's 8 devices; the peer
  # watcher polls without pause, and both processes must still exit cleanly (a watcher caught inside the
  # coordination client as Python finalised aborted finished runs: status -6, 'exception not rethrown')
  run_processes("--mode=generate", f"--workdir={mp}", "--num_samples=40", "--seed=3",
                f"--output={tmp_path / 'mp.npz'}", fault="busy_watch")
  model, params, _ = load_generator(str(mp))
  a, b = load_npz(str(tmp_path / "mp.npz")), generate(model, params, 40, seed=3)
  np.testing.assert_array_equal(a.lengths, b.lengths)
  np.testing.assert_array_equal(a.attributes, b.attributes)
  # the default rescale divides by each series' generated range and traffic is exp-decoded, so the reduction
  # order of 4 vs 8 devices shows at 1.5e-5 relative (CI); other noise would differ by O(1)
  np.testing.assert_allclose(a.features, b.features, rtol=1e-4, atol=1e-6)


def test_two_processes_train_and_score_k_seeds_as_one(tmp_path):
  """K=2 on the 2 x 2 devices: a ('seeds', 'data') = (2, 2) mesh whose replicas are sharded across the
  processes, scored every 10 steps, with a wall-clock budget on one process only: both stop at the same
  step, checkpointed, with the same parameters and best scores as one process trained that far."""
  flags = dict(num_seeds=2, eval_every=10, eval_samples=32, num_steps=100000)  # 32 series: cheaper scorings
  mp, single = tmp_path / "two", tmp_path / "one"
  logs = run_processes("--config=configs/tiny.py", "--config.data.demo.num_samples=200", f"--workdir={mp}",
                       *(f"--config.train.{k}={v}" for k, v in flags.items()),
                       per_process=[[], ["--config.train.max_minutes=0.003"]], timeout=240)
  assert "across 2 process(es), 2 along 'seeds'" in logs[0]
  stopped = [line for line in logs[0].splitlines() if "wall-clock budget" in line]
  assert stopped, logs[0][-2000:]
  step = Checkpointer(str(mp)).latest_step()
  assert 5 <= step < 100000 and f"at step {step}" in stopped[0] and f"scores at step {step}" in logs[0]
  c = tiny.get_config()
  c.data.demo.num_samples, c.num_devices = 200, 4
  c.train.update(dict(flags, num_steps=step))
  train_and_evaluate(c, str(single))
  a, b = (jax.device_get(restore_run(str(w))[1]) for w in (mp, single))
  close = lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)  # noqa: E731
  jax.tree.map(close, a["params"], b["params"])
  jax.tree.map(close, a["best"], b["best"])
  assert np.isfinite(a["best"]["score"]).all()


def test_two_processes_decay_their_learning_rates_alike_in_a_timed_run(tmp_path):
  """train.max_minutes with the learning rates' decay, each process on its own clock and budget, one replica
  on each: the step the decay aims at is agreed (the least of their estimates), so both replicas' rates fall
  alike, to where the shorter budget stops both."""
  def timed_run(workdir):
    logs = run_processes("--config=configs/tiny.py", f"--workdir={workdir}", "--config.train.num_seeds=2",
                         "--config.train.num_steps=100000", "--config.train.lr_decay_start=0.5",
                         per_process=[["--config.train.max_minutes=0.8"], ["--config.train.max_minutes=0.4"]],
                         timeout=240)
    assert "wall-clock budget (train.max_minutes) spent" in logs[0], logs[0][-2000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    scales = np.array([row["lr_scale"] for row in rows])  # [rows, replicas]
    np.testing.assert_array_equal(scales[:, 0], scales[:, 1])  # a process deciding alone would give 1 to its own
    return scales
  scales = timed_run(tmp_path / "a")
  if scales[-1, 0] >= 0.5:
    # compiling the step counts against the budget: on a machine so busy that it took the budget, no rate was
    # measured in time to aim the decay at. Once more, the step compiled already (JAX's persistent cache).
    scales = timed_run(tmp_path / "b")
  assert scales[0, 0] == 1 and scales[-1, 0] < 0.5  # decayed towards the shorter budget's end


def test_each_process_reads_only_its_share_of_sharded_data(tmp_path):
  """data.path=PATH-{shard}.npz: 4 shard files dealt to the 2 devices along 'data'; two processes of one
  device each read 2 files each and, building their device's batches on the host (sharded_host), train
  what one process reading all 4 on 2 devices, its blocks on device (sharded), trains. What is fitted on
  the data before training (the critics' min/max view, the auxiliary critic's level view, the log code's span,
  the step critic's scales)
  is fitted on all shares."""
  from dg_jax.data.loaders import load_dataset
  from dg_jax.data.npz_format import save_npz
  from dg_jax.data.schema import continuous
  data = load_dataset(tiny.get_config().data)
  traffic = data.feature_vars[0]  # a second traffic series that moves with the first: a min/max view to fit
  t = np.arange(data.features.shape[1])  # and a smooth wave, a phase per series: a step critic and its scale
  wave = (1 + np.sin(t / 4 + np.linspace(0, 6, data.num_samples)[:, None])) * (t < data.lengths[:, None])
  data = dataclasses.replace(data, feature_vars=(traffic, dataclasses.replace(traffic, name="traffic_copy"),
                                                 continuous("wave")),
                             features=np.concatenate([data.features[..., [0, 0]] * [1, 1.001], wave[..., None]], -1))
  for i in range(4):
    save_npz(data.subset(np.arange(16 * i, 16 * (i + 1))), str(tmp_path / f"part-{i:05d}.npz"))
  pattern = str(tmp_path / "part-{shard}.npz")
  logs = run_processes("--config=configs/tiny.py", "--config.train.num_steps=10", f"--workdir={tmp_path / 'mp'}",
                       f"--config.data.path={pattern}", "--config.train.data_placement=sharded_host",
                       "--config.data.log_half_range=True", devices=1)
  assert "this process holds blocks [0] (32 series)" in logs[0]  # process 1 logs warnings only
  c = tiny.get_config()
  c.train.num_steps, c.num_devices, c.data.path, c.data.log_half_range = 10, 2, pattern, "True"
  train_and_evaluate(c, str(tmp_path / "one"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params_of(tmp_path / "mp"),
               params_of(tmp_path / "one"))
  schemas = [json.loads((tmp_path / w / "schema.json").read_text()) for w in ("mp", "one")]
  views = [np.array(s["min_max_view"]) for s in schemas]
  assert views[0].shape == (6, 6) and np.abs(views[0] - np.eye(6)).max() > 1
  np.testing.assert_allclose(*views, rtol=1e-9, atol=1e-9)
  levels = [np.array(s["level_view"]) for s in schemas]  # the two traffic series' means are tied
  assert levels[0].shape == (3, 3) and np.abs(levels[0] - np.eye(3)).max() > 1
  np.testing.assert_allclose(*levels, rtol=1e-8, atol=1e-8)
  assert len(schemas[0]["log_half_bounds"]) == 2 and schemas[0]["log_half_bounds"] == schemas[1]["log_half_bounds"]
  for key in ("step_scale", "unit_step_scale"):  # the wave alone is smooth
    scales = [s[key] for s in schemas]
    assert scales[0][:2] == [0, 0] and scales[0][2] > 0
    np.testing.assert_allclose(*scales, rtol=1e-9)
  scales = [s["step_scale"] for s in schemas]
  # where each share's own would be 10-14% off (the shares hold other phases and lengths)
  schema = encoding.Schema.from_json((tmp_path / "one" / "schema.json").read_text())
  own = encoding.step_moments(encoding.encode(data.subset(np.arange(16)), schema).features, schema)
  assert abs(encoding.step_scale(own)[2] / scales[0][2] - 1) > 0.05
