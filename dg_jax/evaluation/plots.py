"""PNG plots comparing a real dataset with named synthetic ones (the figures of the paper's §5).

Every function draws one figure, writes it atomically into `out_dir` under a stable descriptive name,
closes it and returns that file name. Matplotlib runs with the Agg backend: no display is needed.
"""
from __future__ import annotations

import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dg_jax.data.schema import Dataset  # noqa: E402
from dg_jax.evaluation import metrics  # noqa: E402
from dg_jax.evaluation.memorisation import nearest_neighbours  # noqa: E402
from dg_jax.io_utils import atomic_path  # noqa: E402

DPI = 100
REAL_STYLE = dict(color="black", linewidth=2.0, label="real")
MAX_PANELS = 8  # categories shown in the per-category CDFs (the most frequent real ones)


def slug(name: str) -> str:
  """A file-name-safe version of a variable or set name."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "unnamed"


def _colour(i: int):
  return plt.get_cmap("tab10")(i % 10)


def _save(fig, out_dir: str, name: str) -> str:
  with atomic_path(os.path.join(out_dir, name)) as tmp:
    fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
  plt.close(fig)
  return name


def _cdf(ax, values: np.ndarray, **style) -> None:
  values = np.sort(np.asarray(values, np.float64))
  if values.size:
    ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", **style)


def _continuous(data: Dataset) -> list[int]:
  return [j for j, v in enumerate(data.feature_vars) if not v.is_categorical]


def autocorrelation(real: Dataset, sets: dict[str, Dataset], feature: int, out_dir: str) -> str:
  """Mean autocorrelation against lag of one feature (Figure 1)."""
  name = real.feature_vars[feature].name
  fig, ax = plt.subplots(figsize=(5, 3))
  ax.plot(metrics.mean_autocorrelation(real, feature), **REAL_STYLE)
  for i, (label, data) in enumerate(sets.items()):
    ax.plot(metrics.mean_autocorrelation(data, feature), color=_colour(i), label=label)
  ax.set(xlabel="lag (steps)", ylabel="mean autocorrelation", title=f"autocorrelation of {name}")
  ax.legend(fontsize="small")
  return _save(fig, out_dir, f"autocorrelation_{slug(name)}.png")


def categorical_attribute(real: Dataset, sets: dict[str, Dataset], attribute: int, out_dir: str) -> str:
  """Grouped bars: the fraction of series in each category of a categorical attribute."""
  var = real.attribute_vars[attribute]
  k = len(var.categories)
  groups = {"real": real, **sets}
  width = 0.8 / len(groups)
  fig, ax = plt.subplots(figsize=(min(12, max(4, 0.3 * k * len(groups) + 2)), 3))
  for i, (label, data) in enumerate(groups.items()):
    freq = np.bincount(data.attributes[:, attribute].astype(int), minlength=k)[:k] / data.num_samples
    colour = "black" if i == 0 else _colour(i - 1)
    ax.bar(np.arange(k) + (i - (len(groups) - 1) / 2) * width, freq, width, color=colour, label=label)
  ax.set_xticks(np.arange(k), var.categories, rotation=90 if k > 6 else 0)
  ax.set(ylabel="fraction of series", title=f"attribute {var.name}")
  ax.legend(fontsize="small")
  return _save(fig, out_dir, f"attribute_{slug(var.name)}.png")


def continuous_attribute(real: Dataset, sets: dict[str, Dataset], attribute: int, out_dir: str) -> str:
  """CDF of a continuous attribute."""
  name = real.attribute_vars[attribute].name
  fig, ax = plt.subplots(figsize=(5, 3))
  _cdf(ax, real.attributes[:, attribute], **REAL_STYLE)
  for i, (label, data) in enumerate(sets.items()):
    _cdf(ax, data.attributes[:, attribute], color=_colour(i), label=label)
  ax.set(xlabel=name, ylabel="CDF", title=f"attribute {name}")
  ax.legend(fontsize="small")
  return _save(fig, out_dir, f"attribute_{slug(name)}_cdf.png")


def lengths(real: Dataset, sets: dict[str, Dataset], out_dir: str) -> str:
  """Histogram of series lengths (Figure 5): at most ~50 shared bins, each a whole number of lengths."""
  groups = {"real": real, **sets}
  top = max(d.max_length for d in groups.values())
  width = -(-top // 50)
  bins = np.arange(0.5, top + width, width)
  fig, ax = plt.subplots(figsize=(5, 3))
  for i, (label, data) in enumerate(groups.items()):
    style = REAL_STYLE if i == 0 else dict(color=_colour(i - 1), label=label)
    ax.hist(data.lengths, bins=bins, histtype="step", density=True, **style)
  ax.set(xlabel="length (steps)", ylabel="density", title="series lengths")
  ax.legend(fontsize="small")
  return _save(fig, out_dir, "lengths.png")


def totals_by_category(real: Dataset, sets: dict[str, Dataset], feature: int, attribute: int | None,
                       out_dir: str) -> str:
  """CDFs of per-series totals of a feature, one panel per category of `attribute` (Figure 3); one panel
  of all series when `attribute` is None."""
  fname = real.feature_vars[feature].name
  if attribute is None:
    panels, aname = [(None, "all series")], None
  else:
    var = real.attribute_vars[attribute]
    aname = var.name
    counts = np.bincount(real.attributes[:, attribute].astype(int), minlength=len(var.categories))
    order = [c for c in np.argsort(-counts, kind="stable")[:MAX_PANELS] if counts[c] > 0]
    panels = [(int(c), f"{aname} = {var.categories[c]}") for c in order]
  cols = min(len(panels), 4)
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  log = real.feature_vars[feature].log1p
  for ax, (code, title) in zip(axes.flat, panels):
    for i, (label, data) in enumerate({"real": real, **sets}.items()):
      keep = slice(None) if code is None else data.attributes[:, attribute] == code
      totals = metrics.series_totals(data, feature)[keep]
      log = log and bool(np.all(totals > 0))
      _cdf(ax, totals, **(REAL_STYLE if i == 0 else dict(color=_colour(i - 1), label=label)))
    ax.set(title=title, xlabel=f"total {fname}", ylabel="CDF")
  for ax in axes.flat[:len(panels)]:
    if log:  # heavy-tailed features span orders of magnitude
      ax.set_xscale("log")
  for ax in axes.flat[len(panels):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize="small")
  fig.tight_layout()
  suffix = f"_by_{slug(aname)}" if aname else ""
  return _save(fig, out_dir, f"totals_cdf_{slug(fname)}{suffix}.png")


def pearson(real: Dataset, sets: dict[str, Dataset], a: int, b: int, out_dir: str) -> str:
  """CDF of the per-series Pearson correlation between two features (Figure 8)."""
  na, nb = real.feature_vars[a].name, real.feature_vars[b].name
  fig, ax = plt.subplots(figsize=(5, 3))
  _cdf(ax, metrics.series_pearson(real, a, b), **REAL_STYLE)
  for i, (label, data) in enumerate(sets.items()):
    _cdf(ax, metrics.series_pearson(data, a, b), color=_colour(i), label=label)
  ax.set(xlabel="Pearson correlation", ylabel="CDF", title=f"per-series correlation of {na} and {nb}",
         xlim=(-1.05, 1.05))
  ax.legend(fontsize="small")
  return _save(fig, out_dir, f"pearson_cdf_{slug(na)}_{slug(nb)}.png")


def nearest_real(train: Dataset, name: str, synthetic: Dataset, out_dir: str, num_examples: int,
                 seed: int) -> str | None:
  """A few random synthetic series (solid) beside their nearest training series (dashed): copies of
  training data show up as overlapping lines. Distances are over all continuous features. None when there
  is no continuous feature or the two sets have different shapes [T, K]."""
  continuous = _continuous(train)
  if not continuous or num_examples < 1 or synthetic.features.shape[1:] != train.features.shape[1:]:
    return None
  features = continuous[:3]
  rng = np.random.default_rng(seed)
  picks = np.sort(rng.choice(synthetic.num_samples, min(num_examples, synthetic.num_samples), replace=False))
  query = synthetic.subset(picks)
  index, sq_dist = nearest_neighbours(train, query, features=continuous)
  fig, axes = plt.subplots(len(picks), len(features), figsize=(3.6 * len(features), 1.9 * len(picks)),
                           squeeze=False)
  for row, (i, j, d) in enumerate(zip(picks, np.asarray(index), np.asarray(sq_dist))):
    for col, k in enumerate(features):
      ax = axes[row, col]
      ax.plot(synthetic.features[i, :synthetic.lengths[i], k], color=_colour(0), label=f"{name} #{i}")
      ax.plot(train.features[j, :train.lengths[j], k], color="black", linestyle="--", label=f"train #{j}")
      pair = f": {name} #{i} vs train #{j} (d²={float(d):.3g})" if col == 0 else ""
      ax.set_title(train.feature_vars[k].name + pair, fontsize="small")
      if train.feature_vars[k].log1p:  # heavy-tailed: log scale when positive
        ax.set_yscale("log" if min(synthetic.features[i, :synthetic.lengths[i], k].min(),
                                   train.features[j, :train.lengths[j], k].min()) > 0 else "symlog")
  axes[0, 0].legend(fontsize="x-small")
  fig.tight_layout()
  return _save(fig, out_dir, f"nearest_neighbours_{slug(name)}.png")


def sample_series(real: Dataset, features: np.ndarray, lengths: np.ndarray, count: int = 3):
  """A figure (not saved: TensorBoard's) of `count` real series (black) above the given generated
  ones (colour), one column per feature (up to 3); features [p, T, K] decoded, lengths [p]."""
  columns = list(range(min(3, real.features.shape[2])))
  fig, axes = plt.subplots(2, len(columns), figsize=(3.6 * len(columns), 4), squeeze=False)
  for col, k in enumerate(columns):
    for i in range(min(count, real.num_samples)):
      axes[0, col].plot(real.features[i, :real.lengths[i], k], color="black", alpha=0.7)
    for i in range(min(count, len(features))):
      axes[1, col].plot(features[i, :lengths[i], k], color=_colour(i))
    axes[0, col].set_title(f"{real.feature_vars[k].name}: real", fontsize="small")
    axes[1, col].set_title(f"{real.feature_vars[k].name}: generated", fontsize="small")
  fig.tight_layout()
  return fig


def sweep(summary: dict[str, dict], names, out_dir: str, subtitle: str) -> str:
  """Figure 4 of the paper with error bars, for any variants: each metric's mean over seeds per variant,
  ± one std (in the sweep's order)."""
  names = [n for n in names if any(n in r["mean"] for r in summary.values())]
  variants = list(summary)
  fig, axes = plt.subplots(1, len(names), figsize=(max(3.6, 0.6 * len(variants)) * len(names), 3.4), squeeze=False)
  for ax, name in zip(axes[0], names):
    x = [i for i, v in enumerate(variants) if name in summary[v]["mean"]]
    ax.errorbar(x, [summary[variants[i]]["mean"][name] for i in x],
                yerr=[summary[variants[i]]["std"][name] or 0.0 for i in x], marker="o", linestyle="none", capsize=3,
                color=_colour(0))
    ax.set(title=name)
    ax.set_xticks(range(len(variants)), variants, rotation=30 if len(variants) > 3 else 0, fontsize="small")
  fig.suptitle(subtitle, fontsize="small")
  fig.tight_layout()
  return _save(fig, out_dir, "sweep.png")
