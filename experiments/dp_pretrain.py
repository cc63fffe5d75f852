"""Private synthetic data worth sharing (NetShare's recipe): public pre-training, then DP fine-tuning.

A public/private pair with one schema: the demo generator's daily traffic, the public set from other
services' series over another date range (`--offset` days later: the yearly cycle's phase moves) than the
private set (20,000 series, and 2,000 more that no run sees, for membership inference). Each recipe
trains `--seeds` replicas as one program (train.num_seeds; each replica is a run of its own, and its
epsilon covers releasing that replica) and is scored per replica on `--eval_samples` generated series
against as many private training series:

  non-private   no privacy, from scratch on the private data, pre-training's + fine-tuning's steps
  dp-scratch    DP-SGD from scratch (today's recipe), `--steps` steps at each epsilon
  dp-finetune   the same DP-SGD, `--steps` steps, initialised from the public run (train.init_from)
  dp-best       dp-finetune with `--best` overrides (chosen by --search, below)
  dp-metadata   dp-best with the pre-trained LSTM and output heads fixed (train.fixed_parts): only the
                metadata generators (attributes, per-series min/max) move towards the private data

The public run trains `--public_steps` steps without privacy on the public set only, so only fine-tuning
is accounted (delta = 1/(10 n)). `--search` instead compares fine-tuning variants at the largest epsilon
(`SEARCH`: more critic steps, larger batches at the same examples seen, a lower learning rate). Runs use
privacy.secret_seed=False, so that they are reproducible; finished runs are reused when re-run.

  python experiments/dp_pretrain.py --search            # fine-tuning variants at epsilon 10 (~25 min)
  python experiments/dp_pretrain.py                     # the table and plot (~80 min on 2 cores)
  python experiments/dp_pretrain.py --recipes=dp-metadata --noise_multipliers=0.867,0.321   # what less noise buys
  python experiments/dp_pretrain.py --recipes=dp-scratch,dp-metadata --epsilons=10 --sampling=poisson
  python experiments/dp_pretrain.py --recipes=dp-metadata --epsilons=10 --sampling=poisson --bands=8   # DP-BandMF

Writes <out>/dp_pretrain.json, <out>/dp_pretrain.md and <out>/dp_pretrain.png (dp_pretrain_noise.* with
--noise_multipliers, no plot; a _poisson suffix with --sampling=poisson, _bands<b> with --bands): per recipe and epsilon,
the mean over replicas of the attribute JSD, the autocorrelation MSE, the level W1 (W1 of the series'
midranges over the real midranges' spread, mean over features) and the membership-inference success
rate (LOGAN's critic attack: training series vs the unseen ones; 0.5 = guessing).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os

import numpy as np
from common import launch

from dg_jax.api import DoppelGANgerModel
from dg_jax.data.demo import make_demo
from dg_jax.data.npz_format import load_npz, save_npz
from dg_jax.evaluation import metrics
from dg_jax.evaluation.membership import membership_inference
from dg_jax.io_utils import json_safe, write_text

SEARCH = {  # fine-tuning variants at the largest epsilon (--search); "batch" keeps the examples seen
    "d_rounds=3": ["--config.train.d_rounds=3"],
    "batch x4": ["--config.train.batch_size=400", "steps/4"],
    "lr/10": ["--config.train.learning_rate=1e-4"],
}
FEATURE_PARTS = "lstm,heads"  # dp-metadata keeps these pre-trained parts as they are
PUBLIC_MIX, PUBLIC_SCALE = (0.2, 0.3, 0.5), 3.0  # the private set's mix is (0.3, 0.5, 0.2)
SCORES = ("attribute_jsd", "autocorrelation_mse", "level_w1", "membership")


def demo_window(num_samples: int, length: int, offset: int, seed: int):
  """Demo series over days [offset, offset + length) of a longer draw: another date range."""
  data = make_demo(num_samples, length + offset, seed)
  return dataclasses.replace(data, features=data.features[:, offset:], lengths=data.lengths - offset,
                             source=f"{data.source}[{offset}:]").validate()


def public_set(num_samples: int, length: int, offset: int):
  """Another network's trace of the same kind: another date range, another service mix (PUBLIC_MIX of
  video, web, backup) and traffic PUBLIC_SCALE times larger."""
  data = demo_window(4 * num_samples, length, offset, seed=2)
  service = data.attributes[:, [v.name for v in data.attribute_vars].index("service")]
  counts = np.round(np.asarray(PUBLIC_MIX) * num_samples).astype(int)
  keep = np.sort(np.concatenate([np.flatnonzero(service == s)[:c] for s, c in enumerate(counts)]))
  data = data.subset(keep)
  features = data.features.copy()
  features[..., [v.name for v in data.feature_vars].index("traffic_bytes")] *= PUBLIC_SCALE
  return dataclasses.replace(data, features=features, source=f"{data.source}, mix {PUBLIC_MIX}, x{PUBLIC_SCALE}")


def make_pair(out: str, n_private: int, n_holdout: int, n_public: int, length: int, offset: int) -> dict:
  """public.npz, private.npz (training) and holdout.npz (never trained on) in `out`; returns their paths."""
  paths = {name: os.path.join(out, f"{name}.npz") for name in ("public", "private", "holdout")}
  if not all(os.path.exists(p) for p in paths.values()):
    private = demo_window(n_private + n_holdout, length, 0, seed=1)
    save_npz(private.subset(np.arange(n_private)), paths["private"])
    save_npz(private.subset(np.arange(n_private, n_private + n_holdout)), paths["holdout"])
    save_npz(public_set(n_public, length, offset), paths["public"])
  return paths


def level_w1(real, synthetic) -> float:
  """W1 of the per-series midranges over the real midranges' standard deviation, mean over features; on
  the log scale for variables modelled as log1p (bytes spanning decades), where a few huge values
  would otherwise decide it."""
  w1 = []
  for j, var in enumerate(real.feature_vars):
    if not var.is_categorical:
      a, b = (np.log1p(metrics.series_midranges(d, j)) if var.log1p else metrics.series_midranges(d, j)
              for d in (real, synthetic))
      w1.append(metrics.wasserstein1(a, b) / np.std(a))
  return float(np.mean(w1))


def score_replicas(workdir: str, seeds: int, real, members, nonmembers, num_samples: int) -> list[dict]:
  """Per replica: the fidelity of `num_samples` generated series against `real`, and the attack's success."""
  from dg_jax.sampling import restore_run
  from dg_jax.train_step import replica
  model, state, _ = restore_run(workdir)
  rows = []
  for k in range(seeds):
    synthetic = DoppelGANgerModel.load(workdir, seed_index=k, checkpoint="latest").generate(num_samples, seed=k)
    scores = metrics.evaluate(real, synthetic)
    mean = lambda prefix: float(np.mean([v for key, v in scores.items() if key.startswith(prefix)]))  # noqa: E731
    rows.append(dict(attribute_jsd=mean("jsd/"), autocorrelation_mse=mean("autocorrelation_mse/"),
                     level_w1=level_w1(real, synthetic),
                     membership=membership_inference((model, replica(state, k)["params"]), members,
                                                     nonmembers)["membership/success_rate"]))
  return rows


def plot(rows: list[dict], path: str) -> None:
  """One panel per score against epsilon: a line per private recipe, the non-private and public-only runs flat."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(SCORES), figsize=(4 * len(SCORES), 3.2))
  for ax, key in zip(axes, SCORES):
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
      mine = [r for r in rows if r["recipe"] == recipe]
      if recipe in ("non-private", "public-only"):
        ax.axhline(mine[0][key], color="black", linestyle="--" if recipe == "non-private" else ":", label=recipe)
      else:
        ax.plot([r["epsilon"] for r in mine], [r[key] for r in mine], "o-", label=recipe)
    ax.set(xscale="log", xlabel="epsilon", title=key, yscale="linear" if key == "membership" else "log")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def mean_scores(replicas: list[dict]) -> dict:
  return dict({k: float(np.mean([r[k] for r in replicas])) for k in SCORES}, replicas=replicas)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--epsilons", default="1,4,10")
  p.add_argument("--seeds", type=int, default=2, help="training seeds (replicas of one program per recipe)")
  p.add_argument("--steps", type=int, default=1000, help="DP steps on the private data")
  p.add_argument("--public_steps", type=int, default=3000, help="non-private pre-training steps on the public data")
  p.add_argument("--n_private", type=int, default=20_000)
  p.add_argument("--n_holdout", type=int, default=2000, help="private series no run sees (membership inference)")
  p.add_argument("--n_public", type=int, default=5000)
  p.add_argument("--length", type=int, default=550)
  p.add_argument("--offset", type=int, default=120, help="days between the private and the public date range")
  p.add_argument("--eval_samples", type=int, default=5000)
  p.add_argument("--best", default="--config.train.d_rounds=3",
                 help="space-separated overrides of dp-best (on top of dp-finetune)")
  p.add_argument("--recipes", default="non-private,public-only,dp-scratch,dp-finetune,dp-best,dp-metadata",
                 help="which recipes to run")
  p.add_argument("--search", action="store_true", help="compare fine-tuning variants (SEARCH) at the largest epsilon")
  p.add_argument("--noise_multipliers", default="",
                 help="run the DP recipes at these noise multipliers instead of --epsilons (no budget; the table "
                      "gives the epsilon they spend, under --sampling's neighbouring relation): what less noise, "
                      "e.g. another mechanism's, buys")
  p.add_argument("--sampling", default="fixed", choices=["fixed", "poisson"],
                 help="privacy.sampling of the DP runs (poisson: add-or-remove neighbours, dg_jax/privacy.py)")
  p.add_argument("--bands", type=int, default=1,
                 help="privacy.bands of the DP runs (> 1: DP-BandMF, with --sampling=poisson; dg_jax/privacy.py)")
  p.add_argument("--out", default="/tmp/dg_dp_pretrain")
  p.add_argument("--extra", action="append", default=[], help="extra --config overrides for every run")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  paths = make_pair(args.out, args.n_private, args.n_holdout, args.n_public, args.length, args.offset)
  private, holdout = load_npz(paths["private"]), load_npz(paths["holdout"])
  pick = np.random.default_rng(0).permutation(private.num_samples)
  real = private.subset(np.sort(pick[:args.eval_samples]))
  members = private.subset(np.sort(pick[:holdout.num_samples]))
  common = ["--config=configs/default.py", f"--config.train.num_seeds={args.seeds}", "--config.train.seed=0",
            *args.extra]

  def run(name: str, data: str, steps: int, overrides: list[str]) -> str:
    """Trains (or finds trained) one program of `args.seeds` replicas; returns its workdir."""
    # named by what it runs, so that a recipe equal to a searched variant reuses that run
    what = json.dumps([os.path.abspath(data), steps, *overrides]).encode()
    workdir = os.path.join(args.out, f"run_{hashlib.sha1(what).hexdigest()[:10]}")
    print(f"{name}: {workdir}", flush=True)
    launch(*common, f"--workdir={workdir}", f"--config.data.path={os.path.abspath(data)}",
           f"--config.train.num_steps={steps}", *overrides)
    return workdir

  public = run("public", paths["public"], args.public_steps, [])
  epsilons = sorted(float(e) for e in args.epsilons.split(","))
  # recipe -> (epsilons, overrides, DP steps); "steps/4" in SEARCH quarters the steps
  recipes = {"non-private": ([None], [], args.public_steps + args.steps)}
  finetune = [f"--config.train.init_from={public}"]
  if args.search:
    recipes["dp-finetune"] = (epsilons[-1:], finetune, args.steps)
    for name, overrides in SEARCH.items():
      steps = args.steps // 4 if "steps/4" in overrides else args.steps
      recipes[name] = (epsilons[-1:], finetune + [o for o in overrides if o != "steps/4"], steps)
  else:
    recipes.update({"dp-scratch": (epsilons, [], args.steps), "dp-finetune": (epsilons, finetune, args.steps),
                    "dp-best": (epsilons, finetune + args.best.split(), args.steps),
                    "dp-metadata": (epsilons, finetune + [f"--config.train.fixed_parts={FEATURE_PARTS}",
                                                          *args.best.split()], args.steps)})
    recipes = {name: recipe for name, recipe in recipes.items() if name in args.recipes.split(",")}
  rows = []
  if "public-only" in args.recipes.split(","):  # the pre-trained generator as it is: no private data at all
    rows.append(dict(recipe="public-only", epsilon=0.0, steps=0, workdir=public,
                     **mean_scores(score_replicas(public, args.seeds, real, members, holdout, args.eval_samples))))
  noises = [float(x) for x in args.noise_multipliers.split(",") if x]
  for recipe, (eps_list, overrides, steps) in recipes.items():
    levels = ([("noise_multiplier", x) for x in noises] if noises and eps_list != [None]
              else [("target_epsilon", e) for e in eps_list])
    for what, value in levels:
      private_flags = [] if value is None else ["--config.privacy.enabled=True", "--config.privacy.secret_seed=False",
                                                f"--config.privacy.{what}={value:g}"]
      if value is not None and args.sampling != "fixed":
        private_flags.append(f"--config.privacy.sampling={args.sampling}")
      if value is not None and args.bands > 1:
        private_flags.append(f"--config.privacy.bands={args.bands}")
      name = recipe if value is None else f"{recipe} {what}={value:g}"
      workdir = run(name, paths["private"], steps, overrides + private_flags)
      with open(os.path.join(workdir, "metrics.jsonl")) as fh, open(os.path.join(workdir, "config.json")) as cfg:
        log, noise = json.loads(fh.read().strip().splitlines()[-1]), json.load(cfg)["privacy"]["noise_multiplier"]
      rows.append(dict(recipe=recipe, epsilon=log.get("epsilon"), steps=log["step"], workdir=workdir,
                       noise_multiplier=noise,
                       **mean_scores(score_replicas(workdir, args.seeds, real, members, holdout, args.eval_samples))))
      print(f"{name}: " + ", ".join(f"{k} {rows[-1][k]:.4g}" for k in SCORES), flush=True)
  head = ["recipe", "epsilon", "noise_multiplier", "steps", *SCORES]
  fmt = lambda v: "-" if v is None else v if isinstance(v, str) else f"{v:.4g}"  # noqa: E731
  table = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  table += ["| " + " | ".join(fmt(r.get(h)) for h in head) + " |" for r in rows]
  name = "dp_pretrain_search" if args.search else "dp_pretrain_noise" if noises else "dp_pretrain"
  name += "_poisson" if args.sampling == "poisson" else ""
  name += f"_bands{args.bands}" if args.bands > 1 else ""
  write_text(os.path.join(args.out, name + ".md"), "\n".join(table) + "\n")
  result = dict(args=vars(args), public=public, rows=rows)
  write_text(os.path.join(args.out, name + ".json"), json.dumps(json_safe(result), indent=1))
  if not args.search and not noises and args.sampling == "fixed":
    plot(rows, os.path.join(args.out, name + ".png"))
  print("\n".join(table))


if __name__ == "__main__":
  main()
