"""The evaluation report: metrics.json, a metric table and plots in report.md / report.html.

`write_report` compares a real dataset with one or several named synthetic ones; `evaluate_files` does
the same from npz files (what `launch.py --mode=evaluate` runs).
"""
from __future__ import annotations

import html
import json
import math
import os
import pathlib

import numpy as np

from dg_jax.data.npz_format import load_npz
from dg_jax.data.schema import Dataset
from dg_jax.evaluation import metrics, plots, posthoc
from dg_jax.io_utils import json_safe, staged_folder, write_text

SINGLE_SET_NAME = "synthetic"  # column name of a synthetic set passed as a bare Dataset


def write_report(real: Dataset, synthetic: dict[str, Dataset] | Dataset, out_dir: str, *,
                 train: Dataset | None = None, title: str = "dg_jax evaluation report", num_examples: int = 4,
                 seed: int = 0, extra_metrics: dict[str, dict[str, float]] | None = None,
                 higher_is_better: tuple[str, ...] = (), unranked: tuple[str, ...] = (),
                 total_by: str | list[str] | None = None, posthoc_settings: posthoc.Settings | None = None) -> dict:
  """Writes metrics.json, report.md, report.html and the PNG plots into out_dir (io_utils.staged_folder:
  metrics.json appears last, beside complete files); returns the metrics as written (a metric the
  synthetic set fails is NaN here and null in metrics.json; the report names the failure).

  One synthetic set gives a flat `<metric>/<variable>` dict, several give {set name: flat dict}.
  `extra_metrics` adds rows per set name (e.g. downstream or privacy scores); all metrics are taken as
  lower-is-better except the keys in `higher_is_better`; rows in `unranked` (e.g. memorisation
  distances, where neither direction is better) get no bold. Both match a key exactly or, for entries
  ending in "/", as a prefix. `train` is the data searched for the nearest
  neighbours of synthetic series (default: `real`). `total_by`: categorical attribute(s) within whose
  categories per-series totals are compared (metrics.evaluate's `total_w1/...` keys, Table 2).
  `posthoc_settings`: also TimeGAN's discriminative and predictive scores (evaluation/posthoc.py).
  """
  sets = dict(synthetic) if isinstance(synthetic, dict) else {SINGLE_SET_NAME: synthetic}
  if not sets:
    raise ValueError("write_report: no synthetic dataset given")
  real = real.validate()
  sets = {name: data.validate() for name, data in sets.items()}
  train = real if train is None else train.validate()
  for data in (*sets.values(), train):
    metrics.check_same_schema(real, data)
  unknown = sorted(set(extra_metrics or {}) - set(sets))
  if unknown:
    raise ValueError(f"write_report: extra_metrics names sets {unknown} that are not among {sorted(sets)}")

  scores, merged, undefined = {}, {}, {}
  for name, data in sets.items():
    reasons = {}
    merged[name] = {**metrics.evaluate(real, data, total_by, reasons), **(extra_metrics or {}).get(name, {})}
    if posthoc_settings is not None:
      merged[name].update(posthoc.posthoc_scores(real, data, posthoc_settings, seed))
    scores[name] = {k: v for k, v in merged[name].items() if np.isfinite(v)}  # the table: n/a for the rest
    reasons.update({k: "undefined for this data" for k in merged[name] if k not in scores[name] and k not in reasons})
    failed = metrics.failures(real, data)
    if failed:
      reasons["collapse"] = "; ".join(failed)
    undefined.update({f"{k} ({name})" if len(sets) > 1 else k: why for k, why in reasons.items()})
  result = merged[next(iter(sets))] if len(sets) == 1 else merged  # a generator's failures stay, as null
  with staged_folder(out_dir, marker="metrics.json") as stage:  # metrics.json is there once the rest is
    write_text(os.path.join(stage, "metrics.json"), json.dumps(json_safe(result), indent=2, allow_nan=False))
    figures = _plot_all(real, sets, train, stage, num_examples, seed, total_by)
    unranked = (*unranked, *posthoc.SPREADS)
    blocks = _blocks(real, sets, train, scores, undefined, figures, title, (tuple(higher_is_better), unranked))
    write_text(os.path.join(stage, "report.md"), _markdown(blocks))
    write_text(os.path.join(stage, "report.html"), _html(blocks, title))
  return result


def evaluate_files(real_path: str, synthetic_paths: dict[str, str] | list[str], out_dir: str, *,
                   train_path: str | None = None, **kwargs) -> dict:
  """write_report on npz files (dg_jax.data.npz_format); a list of paths names each set by its file stem."""
  if isinstance(synthetic_paths, (str, os.PathLike)):
    synthetic_paths = [synthetic_paths]
  if not isinstance(synthetic_paths, dict):
    named = {pathlib.Path(p).stem: p for p in synthetic_paths}
    if len(named) != len(synthetic_paths):
      raise ValueError(f"evaluate_files: synthetic files share a file stem, pass a dict of names: {synthetic_paths}")
    synthetic_paths = named
  real = load_npz(real_path)
  train = None if train_path is None else load_npz(train_path)
  sets = {name: load_npz(path) for name, path in synthetic_paths.items()}
  return write_report(real, sets, out_dir, train=train, **kwargs)


def _plot_all(real, sets, train, out_dir, num_examples, seed, total_by) -> list[tuple[str, str, str]]:
  """Draws every plot; returns (section, caption, file name) per figure, in report order. Totals are
  split by the first `total_by` attribute (default: the first categorical one)."""
  out = []
  continuous = [j for j, v in enumerate(real.feature_vars) if not v.is_categorical]
  for j in continuous:
    out.append(("Autocorrelation", f"Mean autocorrelation of {real.feature_vars[j].name} against lag.",
                plots.autocorrelation(real, sets, j, out_dir)))
  for j, var in enumerate(real.attribute_vars):
    draw = plots.categorical_attribute if var.is_categorical else plots.continuous_attribute
    out.append(("Attributes", f"Distribution of attribute {var.name}.", draw(real, sets, j, out_dir)))
  out.append(("Lengths", "Distribution of series lengths.", plots.lengths(real, sets, out_dir)))
  by = next(iter(metrics.categorical_attributes(real, total_by)),
            next((j for j, v in enumerate(real.attribute_vars) if v.is_categorical), None))
  by_text = f" within each category of {real.attribute_vars[by].name}" if by is not None else ""
  for j in continuous if len(continuous) <= 3 else continuous[:1]:
    out.append(("Per-series totals", f"CDF of per-series totals of {real.feature_vars[j].name}{by_text}.",
                plots.totals_by_category(real, sets, j, by, out_dir)))
  if len(continuous) >= 2:
    a, b = continuous[:2]
    names = f"{real.feature_vars[a].name} and {real.feature_vars[b].name}"
    out.append(("Cross-feature correlation", f"CDF of the per-series Pearson correlation of {names}.",
                plots.pearson(real, sets, a, b, out_dir)))
  for i, (name, data) in enumerate(sets.items()):
    path = plots.nearest_real(train, name, data, out_dir, num_examples, seed + i)
    if path:
      out.append(("Nearest training neighbours",
                  f"Random series of {name} (solid) and their nearest training series (dashed).", path))
  return out


def _format(value: float) -> str:
  return f"{value:.4g}" if math.isfinite(value) else "n/a"


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
  return any(key == p or (p.endswith("/") and key.startswith(p)) for p in patterns)


def _table(scores: dict[str, dict[str, float]], ranking: tuple[tuple, tuple]) -> tuple[list, list]:
  """Header and rows of the metric table; cells are (text, is_best). ranking: (higher_is_better, unranked)."""
  higher_is_better, unranked = ranking
  names = list(scores)
  keys = list(dict.fromkeys(k for s in scores.values() for k in s))
  rows = []
  for key in keys:
    values = np.array([scores[n].get(key, np.nan) for n in names], np.float64)
    finite = values[np.isfinite(values)]
    higher = _matches(key, higher_is_better)
    best = (finite.max() if higher else finite.min()) if finite.size else np.nan
    bold = len(names) > 1 and np.isfinite(best) and not _matches(key, unranked)
    rows.append([(key + (" (higher is better)" if higher else ""), False)] +
                [(_format(v), bool(bold and v == best)) for v in values])
  return ["metric", *names], rows


def _variability_table(real: Dataset, sets: dict[str, Dataset]) -> tuple[list, list]:
  """Per continuous feature and set (real first): metrics.variability's statistics, side by side."""
  stats = ("spread", "flat_share", "at_min", "diff1", "diff2")
  rows = []
  for j, var in enumerate(real.feature_vars):
    if not var.is_categorical:
      tol = metrics.flat_tolerance(real, j)
      for name, data in {"real": real, **sets}.items():
        v = metrics.variability(data, j, tol)
        rows.append([(var.name, False), (name, False)] + [(_format(v[s]), False) for s in stats])
  return ["feature", "set", "median within-series std", "flat share", "records at the minimum (varying series)",
          "1st differences (relative std)", "2nd differences (relative std)"], rows


def _blocks(real, sets, train, scores, undefined, figures, title, ranking) -> list[tuple]:
  """The report's content, independent of the output format."""
  sizes = ", ".join(f"{name}: {d.num_samples} series" for name, d in sets.items())
  blocks = [("h1", title),
            ("p", f"Real data: {real.source} ({real.num_samples} series, up to {real.max_length} steps). "
                  f"Synthetic data: {sizes}. Nearest neighbours are searched in {train.source}."),
            ("h2", "Metrics"),
            ("p", "Distances between the real and each synthetic set: lower is better "
                  "(best value per row in bold). Keys are `<metric>/<variable>`; "
                  "n/a means the metric is undefined for the real data, or failed by that set: a "
                  "failure of its generator (reasons below the table)."),
            ("table", *_table(scores, ranking))]
  if undefined:
    blocks.append(("p", "Not computed or failed: " + "; ".join(f"{k}: {why}" for k, why in sorted(undefined.items()))
                   + "."))
  variability = _variability_table(real, sets)
  if variability[1]:
    blocks += [("h2", "Variability"),
               ("p", "How each continuous feature varies within series: its median within-series standard "
                     "deviation (in its units), the share of flat series (range at most "
                     f"{metrics.FLAT_TOLERANCE:g} of the median range of the real series that vary), the "
                     "median share of a varying series' records at its minimum (within "
                     f"{metrics.AT_MIN:g} of its range), and the median over series of the standard deviation of "
                     "first and second differences over the series' own. A collapsed feature has a small spread "
                     "and a large flat share, a jittery one large differences; where real series sit at 0 but "
                     "for a spike (a loss rate), generated ones should have as many records at the minimum."),
               ("table", *variability)]
  section = None
  for sec, caption, name in figures:
    if sec != section:
      blocks.append(("h2", sec))
      section = sec
    blocks.append(("img", caption, name))
  return blocks


def _markdown(blocks) -> str:
  out = []
  for kind, *args in blocks:
    if kind == "h1":
      out.append(f"# {args[0]}")
    elif kind == "h2":
      out.append(f"## {args[0]}")
    elif kind == "p":
      out.append(args[0])
    elif kind == "img":
      out.append(f"![{args[0]}]({args[1]})\n\n*{args[0]}*")
    else:
      header, rows = args
      cell = lambda text, best: (f"**{text}**" if best else text).replace("|", "\\|")
      lines = ["| " + " | ".join(h.replace("|", "\\|") for h in header) + " |", "|" + "---|" * len(header)]
      lines += ["| " + " | ".join(cell(*c) for c in row) + " |" for row in rows]
      out.append("\n".join(lines))
  return "\n\n".join(out) + "\n"


def _html(blocks, title: str) -> str:
  e = html.escape
  out = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{e(title)}</title>",
         "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
         "img{max-width:100%}</style></head><body>"]
  for kind, *args in blocks:
    if kind in ("h1", "h2", "p"):
      out.append(f"<{kind}>{e(args[0])}</{kind}>")
    elif kind == "img":
      out.append(f"<figure><img src='{e(args[1])}' alt='{e(args[0])}'><figcaption>{e(args[0])}</figcaption></figure>")
    else:
      header, rows = args
      cell = lambda text, best: f"<td><b>{e(text)}</b></td>" if best else f"<td>{e(text)}</td>"
      out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
      out += ["<tr>" + "".join(cell(*c) for c in row) + "</tr>" for row in rows]
      out.append("</table>")
  return "\n".join(out) + "\n</body></html>\n"
