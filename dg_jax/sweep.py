"""Ablations with error bars: train each variant of a config with train.num_seeds = K seeds at once (one
training program per variant; variants that differ only in numbers the step computes with, such as
learning rates, share one program of V x K replicas: `plan`), generate a sample from every seed's
generator (its best-scored one when train.eval_every scores the run, else its latest) and score it with
the §5 metrics against held-out data (`real_test`: an npz file, or `split:test` for the training folder's
test split) or, without it, against the training data (the tables then say so).

A variant is a name and config settings (`parse_variants`: "paper=;no_aux=model.aux_critic=False"), or
one point of a grid (`parse_grid`: "model.sample_len=1,5,10"); the S ablation of §4.1/§4.4 (Figure 4)
is the grid over model.sample_len (`sample_len_variants`).

Failures count: a seed that diverged (frozen by train.max_rollbacks; the sweep goes on), whose sample
collapsed or holds non-finite values (metrics.failures), or whose ranking metric is undefined, is a
failed seed. Each metric's mean ± std (ddof=1) is over the seeds that
define it, and the tables say how many seeds failed. Variants rank by their number of failed seeds, then
by the mean autocorrelation MSE (CRITERION); each metric of each variant carries a two-sided
Mann-Whitney U test over seeds against the baseline variant (the first, unless named): `*` marks p < 0.05,
which needs K >= 4 seeds per variant (with K = 3 the smallest possible p is 0.1).

Each run lives in `<workdir>/<variant name>` (a shared one in `<workdir>/<a>+<b>+...`) and resumes like
any run; each variant's per-seed scores are kept in `<workdir>/<variant name>` (SCORES_FILE), keyed by
the full resolved config and how it was scored, once the run has finished (not when train.max_minutes
cut it short), so an interrupted sweep picks up where it stopped and a changed config is retrained and
rescored. Results: `<workdir>/sweep.json`, `sweep.md` and `sweep.png`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import re

import numpy as np

from dg_jax import io_utils, privacy, sampling, sharding, workdir_lock
from dg_jax.data.loaders import load_dataset
from dg_jax.data.schema import DataError
from dg_jax.evaluation import metrics, plots, posthoc
from dg_jax.failures import BadInput, Diverged
from dg_jax.settings import PER_REPLICA_FIELDS, privacy_config, train_config
from dg_jax.train import train_and_evaluate

log = logging.getLogger(__name__)
SCORES_FILE = "sweep_scores.json"
CRITERION = "autocorrelation_mse/mean"
PLOTTED = ("autocorrelation_mse/mean", "jsd/mean", "length_w1", "discriminative_score")
SIGNIFICANCE = 0.05
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")  # a variant's name is its run folder's


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  settings: tuple = ()  # ((dotted config field, value as text), ...)

  def apply(self, config):
    """A resolved copy of `config` with this variant's settings (ValueError naming the field)."""
    out = config.copy_and_resolve_references()
    for field, text in self.settings:
      *parents, leaf = field.split(".")
      node = out
      try:
        for p in parents:
          node = node[p]
        old = node[leaf]
      except (KeyError, AttributeError, TypeError):
        raise ValueError(f"variant {self.name!r}: {field} is not a config field") from None
      node[leaf] = _parse_value(self.name, field, text, old)
    return out


def _parse_value(name: str, field: str, text: str, old):
  try:
    if isinstance(old, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError
      return text.lower() == "true"
    return type(old)(text) if isinstance(old, (int, float, str)) else json.loads(text)
  except ValueError:
    raise ValueError(f"variant {name!r}: {field}={text!r} is not a valid {type(old).__name__}") from None


def _checked(variants: list[Variant], text: str) -> list[Variant]:
  names = [v.name for v in variants]
  bad = [n for n in names if not _NAME.match(n)]
  if not variants or bad or len(set(names)) < len(names):
    raise ValueError(f"{text!r}: variants need distinct names of letters, digits and _.+- (got {names})")
  return variants


def parse_variants(text: str) -> list[Variant]:
  """'name=field=value,field=value;name2=...' ('name=' alone: the config as given)."""
  variants = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    name, _, rest = part.partition("=")
    settings = [s.strip().partition("=") for s in rest.split(",") if s.strip()]
    if any(not f or not eq for f, eq, _ in settings):
      raise ValueError(f"variant {part!r}: settings are field=value, comma-separated")
    variants.append(Variant(name.strip(), tuple((f.strip(), v.strip()) for f, _, v in settings)))
  return _checked(variants, text)


def parse_grid(text: str) -> list[Variant]:
  """'field=v1,v2;field2=v1,v2' -> every combination, named '<field's last part>_<value>' joined by '__'."""
  axes = []
  for part in filter(None, (p.strip() for p in text.split(";"))):
    field, eq, values = part.partition("=")
    values = [v.strip() for v in values.split(",") if v.strip()]
    if not eq or not values:
      raise ValueError(f"grid axis {part!r}: field=value1,value2,...")
    axes.append([(field.strip(), v) for v in values])
  variants = [Variant("__".join(f"{f.split('.')[-1]}_{v}" for f, v in combo), combo)
              for combo in itertools.product(*axes)]
  return _checked(variants, text)


def parse_sample_lens(text: str) -> list[int]:
  try:
    values = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"--sample_lens must be comma-separated integers, got {text!r}") from None
  if not values or min(values) < 1:
    raise ValueError(f"--sample_lens needs at least one value, all >= 1; got {text!r}")
  return sorted(set(values))


def sample_len_variants(sample_lens: list[int]) -> list[Variant]:
  """The S ablation: run folders sample_len_<S>."""
  return [Variant(f"sample_len_{s}", (("model.sample_len", str(s)),)) for s in sample_lens]


def _score(real, synthetic, posthoc_settings) -> dict:
  """metrics.evaluate plus the mean of each unit-free metric family (autocorrelation_mse/mean over
  features, jsd/mean over categorical attributes; NaN when a seed fails one of them), `failures` and,
  with `posthoc_settings`, TimeGAN's scores (evaluation/posthoc.py)."""
  scores = metrics.evaluate(real, synthetic)
  if posthoc_settings is not None:
    scores.update(posthoc.posthoc_scores(real, synthetic, posthoc_settings))
  for family in ("autocorrelation_mse", "jsd"):
    values = [v for k, v in scores.items() if k.startswith(family + "/")]
    if values:
      scores[f"{family}/mean"] = float(np.mean(values))
  return dict(scores, failures=metrics.failures(real, synthetic))


def failed(seed: dict) -> bool:
  value = seed.get(CRITERION)
  return bool(seed["failures"]) or value is None or not math.isfinite(value)


def resolve(config, variants: list[Variant], baseline: str | None = None) -> dict:
  """{name: the variant's resolved config}; ValueError naming a bad field or value, or an unknown baseline."""
  names = [v.name for v in variants]
  if baseline is not None and baseline not in names:
    raise ValueError(f"--baseline={baseline} is not one of the variants {names}")
  return {v.name: v.apply(config) for v in variants}


def run_sweep(config, workdir: str, variants: list[Variant], num_samples: int = 0, seed: int = 0,
              real_test: str | None = None, baseline: str | None = None,
              posthoc_settings: posthoc.Settings | None = None) -> dict:
  """Trains K seeds per variant, generates `num_samples` series (0 = as many as the scoring data) from
  each seed and scores them; returns what sweep.json holds. The sweep holds `workdir`'s lock (each run
  holds its own folder's). `posthoc_settings`: also score each seed by TimeGAN's scores."""
  configs = resolve(config, variants, baseline)  # every setting checked before anything trains
  lock = workdir_lock.acquire(workdir) if sharding.is_primary() else None
  try:
    sharding.wait_for_primary()
    return _run_sweep(configs, workdir, num_samples, seed, real_test, baseline or variants[0].name,
                      posthoc_settings)
  finally:
    if lock is not None:
      lock.release()


def _run_sweep(configs: dict, workdir: str, num_samples: int, seed: int, real_test: str | None,
               baseline: str, posthoc_settings) -> dict:
  train = load_dataset(next(iter(configs.values())).data)
  if train.max_length < 2 or all(v.is_categorical for v in train.feature_vars):
    raise DataError(f"{train.source}: the sweep ranks variants by the autocorrelation of continuous features, "
                    f"which needs one and series of 2 or more records (T={train.max_length})")
  too_long = {n: c.model.sample_len for n, c in configs.items() if c.model.sample_len > train.max_length}
  if too_long:
    raise DataError(f"{train.source}: sample_len exceeds the series length T={train.max_length} in {too_long}")
  private = [n for n, c in configs.items() if privacy_config(c).enabled]
  if private and not real_test:
    raise BadInput(f"sweep: {private} train with privacy.enabled, and ranking them by scores against the training "
                   "data would choose among private runs by reading that data outside DP-SGD; score against data "
                   "the guarantee need not protect (--real_test: public data with the same schema, or split:test)")
  if real_test:
    real, against = load_real_test(next(iter(configs.values())), real_test), real_test
    metrics.check_same_schema(train, real)
  else:
    real, against = train, "the training data (no --real_test: these scores cannot show overfitting)"
  runs, cut_short, spent, keys = {}, {}, {}, {}
  for name, run_config in configs.items():
    keys[name] = dict(config=json.loads(run_config.to_json()), scored_against=real_test or "training data",
                      num_samples=num_samples, seed=seed,
                      posthoc=posthoc_settings and dataclasses.asdict(posthoc_settings))
    cache = io_utils.join(workdir, name, SCORES_FILE)
    cached = json.loads(io_utils.read_text(cache)) if io_utils.exists(cache) else None
    if cached and cached["key"] == keys[name]:
      log.info("sweep: %s already trained and scored (%s)", name, cache)
      runs[name] = cached["seeds"]
  for run_name, run_config, members in plan({n: c for n, c in configs.items() if n not in runs}):
    k, total = train_config(configs[members[0]]).num_seeds, train_config(run_config).num_seeds
    run_dir = io_utils.join(workdir, run_name)
    if len(members) == 1:
      log.info("sweep: training %s (%d seed%s) in %s", run_name, k, "s" if k > 1 else "", run_dir)
    else:
      log.info("sweep: training %s as one program of %d replicas (%d seed%s each; they differ only in %s) in %s",
               ", ".join(members), total, k, "s" if k > 1 else "", ", ".join(json.loads(run_config.train.per_replica)),
               run_dir)
    try:
      step, frozen_at = train_and_evaluate(run_config, run_dir)["step"], [-1] * total
    except Diverged as e:  # a failed seed, counted as such; the other seeds (and variants) go on
      log.warning("sweep: %s: %s", run_name, e)
      step, frozen_at = e.step, e.frozen_at
    pc = privacy_config(run_config)
    first_seed = None if pc.enabled and pc.secret_seed else train_config(run_config).seed  # a secret one stays so
    for v, name in enumerate(members):
      runs[name] = []
      for r in range(v * k, (v + 1) * k):
        model, params, config_used = sampling.load_generator(run_dir, seed_index=r)
        synthetic = sampling.generate(model, params, num_samples or real.num_samples, seed)
        scores = _score(real, synthetic, posthoc_settings)
        if frozen_at[r] >= 0:
          scores["failures"].insert(0, f"diverged: frozen with its state before step {frozen_at[r] + 1}")
        runs[name].append(dict(scores, **{"generated_from/step": config_used.generated_from.step},
                               **({} if first_seed is None else {"generated_from/seed": first_seed + r})))
      if step < run_config.train.num_steps:
        cut_short[name] = step
      elif sharding.is_primary():
        io_utils.write_text(io_utils.join(workdir, name, SCORES_FILE), json.dumps(io_utils.json_safe(
            dict(key=keys[name], trained_in=run_dir, seeds=runs[name])), indent=1, allow_nan=False))
      log.info("sweep: %s  %s %s%s", name, CRITERION, _mean_std([r[CRITERION] for r in runs[name] if not failed(r)]),
               _failed_note(runs[name]))
    if pc.enabled:
      spent[run_name] = (config_used.privacy_spent.to_dict(), train_config(config_used), privacy_config(config_used))
    if step < run_config.train.num_steps:
      log.warning("sweep: %s stopped at step %d of %d (train.max_minutes, spent over all its launches): scored, "
                  "not cached; the same command with a larger train.max_minutes trains it further", run_name, step,
                  run_config.train.num_steps)
  summary = summarise(runs, baseline)
  ranking = sorted(summary, key=lambda n: (summary[n]["failed"], _finite_or_inf(summary[n]["mean"].get(CRITERION))))
  k = train_config(next(iter(configs.values()))).num_seeds
  result = dict(scored_against=against, num_seeds=k, baseline=baseline, best=ranking[0], ranking=ranking,
                cut_short=cut_short, runs={n: dict(summary[n], seeds=runs[n]) for n in runs})
  if spent:
    result["privacy"] = _privacy_of_sweep(spent, against)
  if sharding.is_primary():  # every process scored the same samples; one writes the tables
    io_utils.write_text(io_utils.join(workdir, "sweep.json"), json.dumps(io_utils.json_safe(result), indent=1, allow_nan=False))
    io_utils.write_text(io_utils.join(workdir, "sweep.md"), sweep_table(result))
    plots.sweep(summary, PLOTTED, workdir, f"{k} seed(s) per variant, scored against {real_test or 'training data'}")
  log.info("sweep: best %s; tables in %s", ranking[0], io_utils.join(workdir, "sweep.md"))
  return result


def plan(configs: dict) -> list[tuple[str, object, list[str]]]:
  """The runs that train `configs` ({variant: resolved config}): [(run folder, run config, variants)].
  Variants whose configs differ only in settings.PER_REPLICA_FIELDS share one run named 'a+b+...', one
  program of V x K replicas (train.per_replica): variant v's seeds are its replicas vK..vK+K-1, i.e.
  train.seed + vK + k. Any other difference (shapes, data, privacy, rounds) makes a run of its own, as
  does a variant with train.init_from or its own train.per_replica."""
  groups = {}
  for name, config in configs.items():
    shared = json.loads(config.to_json())
    for field in PER_REPLICA_FIELDS:
      section, leaf = field.split(".")
      shared[section].pop(leaf, None)
    alone = config.train.get("init_from") or config.train.get("per_replica")
    groups.setdefault(name if alone else json.dumps(shared, sort_keys=True), []).append(name)
  out = []
  for members in groups.values():
    first = configs[members[0]]
    if len(members) == 1:
      out.append((members[0], first, members))
      continue
    run_config = first.copy_and_resolve_references()
    k = train_config(first).num_seeds
    run_config.train.num_seeds = k * len(members)
    per_replica = {}
    for field in PER_REPLICA_FIELDS:
      section, leaf = field.split(".")
      values = [configs[n][section][leaf] for n in members]
      if len(set(values)) > 1:
        per_replica[field] = [float(v) for v in values for _ in range(k)]
    run_config.train.per_replica = json.dumps(per_replica)
    out.append(("+".join(members), run_config, members))
  return out


def _privacy_of_sweep(spent: dict, against: str) -> dict:
  """What releasing a generator the sweep chose costs: its ranking compares every private run, so the
  claim is the composition of all of them (every replica of every private variant)."""
  runs = [(privacy.accountant(pc, s["num_examples"], tc.batch_size, tc.d_rounds), s["steps"])
          for s, tc, pc in spent.values() for _ in range(tc.num_seeds)]
  epsilon, delta = privacy.composed(runs, max(pc.delta for _, _, pc in spent.values()))
  log.info("sweep: releasing a generator it ranks first is (%.4g, %.3g)-differentially private for the training "
           "series (all %d private runs composed); the ranking read %s outside DP", epsilon, delta, len(spent), against)
  return dict(epsilon_all_runs=epsilon, delta=delta, runs={n: s for n, (s, _, _) in spent.items()},
              covers=f"the training series, for any generator of this sweep, chosen by its ranking or not; the "
                     f"ranking reads {against} outside DP, which must not need protection")


def load_real_test(config, real_test: str):
  """An npz file in the project's format, or `split:NAME`: the training data's other split (a
  DoppelGANger folder's data_<NAME>.npz, e.g. split:test)."""
  if real_test.startswith("split:"):
    data_config = config.data.copy_and_resolve_references()
    data_config.split = real_test[len("split:"):]
    return load_dataset(data_config)
  from dg_jax.data.npz_format import load_npz
  return load_npz(real_test)


def _finite_or_inf(value) -> float:
  return value if value is not None and math.isfinite(value) else math.inf


def _values(seeds: list[dict], name: str) -> list[float]:
  return [s[name] for s in seeds if isinstance(s.get(name), (int, float)) and math.isfinite(s[name])]


def summarise(runs: dict[str, list[dict]], baseline: str) -> dict:
  """Per variant: mean and std (ddof=1; None for one value) of each metric over the seeds that define
  it, `failed` (the number of failed seeds), and `p_vs_baseline` (two-sided Mann-Whitney U p-value of
  each metric against the baseline variant's seeds; None where either side has no values)."""
  from scipy.stats import mannwhitneyu
  out = {}
  for name, seeds in runs.items():
    names = sorted({n for s in seeds for n in s if n != "failures" and _values(seeds, n)})
    values = {n: _values(seeds, n) for n in names}
    p = {}
    for n in names:
      base = _values(runs[baseline], n)
      p[n] = (float(mannwhitneyu(values[n], base, alternative="two-sided").pvalue)
              if name != baseline and base and not n.startswith("generated_from/") else None)
    out[name] = dict(mean={n: float(np.mean(v)) for n, v in values.items()},
                     std={n: float(np.std(v, ddof=1)) if len(v) > 1 else None for n, v in values.items()},
                     failed=sum(failed(s) for s in seeds), p_vs_baseline=p)
  return out


def _failed_note(seeds: list[dict]) -> str:
  n = sum(failed(s) for s in seeds)
  return f" ({n} of {len(seeds)} seeds failed: {'; '.join(f for s in seeds for f in s['failures']) or 'undefined'})" \
      if n else ""


def _mean_std(values) -> str:
  if not values:
    return "n/a"
  return f"{np.mean(values):.4g} ± {np.std(values, ddof=1):.2g}" if len(values) > 1 else f"{values[0]:.4g}"


def sweep_table(result: dict) -> str:
  """sweep.md from sweep.json's content: variants in ranking order, one row each."""
  runs = result["runs"]
  names = sorted({n for r in runs.values() for n in r["mean"]
                  if not n.startswith("generated_from/") and n not in posthoc.SPREADS})
  lines = [f"Sweep: mean ± std (ddof=1) over {result['num_seeds']} seed(s) per variant, scored against "
           f"{result['scored_against']}; lower is better. Ranked by failed seeds, then {CRITERION}. `*`: differs "
           f"from the baseline ({result['baseline']}) at p < {SIGNIFICANCE} (two-sided Mann-Whitney U over seeds).",
           "", "| variant | failed seeds | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
  for name in result["ranking"]:
    r = runs[name]
    marks = {n: " *" if (r["p_vs_baseline"].get(n) or 1.0) < SIGNIFICANCE else "" for n in names}
    cells = [("" if n not in r["mean"] else f"{r['mean'][n]:.4g}" + (f" ± {r['std'][n]:.2g}" if r["std"][n] is not None
                                                                    else "") + marks[n]) for n in names]
    tags = [t for t, on in (("best", name == result["best"]), ("baseline", name == result["baseline"]),
                            (f"cut short at step {result['cut_short'].get(name)}", name in result["cut_short"])) if on]
    label = name + (f" ({', '.join(tags)})" if tags else "")
    lines.append(f"| {label} | {r['failed']} of {len(r['seeds'])} | " + " | ".join(cells) + " |")
  if "privacy" in result:
    p = result["privacy"]
    lines += ["", f"Privacy: releasing any generator of this sweep is ({p['epsilon_all_runs']:.4g}, {p['delta']:.3g})-"
              f"differentially private (every private run composed); it covers {p['covers']}."]
  return "\n".join(lines) + "\n"
