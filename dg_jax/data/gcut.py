"""Google cluster-usage trace 2011 (clusterdata-2011-2): one series per task, as in the paper (Appendix A).

Reads the trace's headerless CSV tables (plain or gzipped shards) in the column layout of its "format +
schema" document (schema.csv). A task is (job ID, task index); its series is its task_usage records (one per
measurement window, about 5 minutes) ordered by start time, with the 9 measurements of the paper's Table 6;
its attribute is the type of its last end event.
"""
from __future__ import annotations

import dataclasses
import gzip
import os

from absl import logging
import numpy as np
import pandas as pd

from dg_jax.data.schema import DataError, Dataset, categorical, continuous

TASK_EVENTS_COLUMNS = (
    "timestamp", "missing info", "job ID", "task index", "machine ID", "event type", "user",
    "scheduling class", "priority", "CPU request", "memory request", "disk space request",
    "different machines restriction")
TASK_USAGE_COLUMNS = (
    "start time", "end time", "job ID", "task index", "machine ID", "CPU rate", "canonical memory usage",
    "assigned memory usage", "unmapped page cache", "total page cache", "maximum memory usage", "disk I/O time",
    "local disk space usage", "maximum CPU rate", "maximum disk IO time", "cycles per instruction",
    "memory accesses per instruction", "sample portion", "aggregation type", "sampled CPU usage")
# The paper's Table 6, in its order; these are also the feature names.
MEASUREMENTS = (
    "CPU rate", "maximum CPU rate", "sampled CPU usage", "canonical memory usage", "assigned memory usage",
    "maximum memory usage", "unmapped page cache", "total page cache", "local disk space usage")
# Task end events (event type codes). LOST (6) means the end record itself is missing from the trace, so a
# task whose last end event is LOST counts as having no end event; this matches the original schema's 4 types.
END_EVENTS = {2: "EVICT", 3: "FAIL", 4: "FINISH", 5: "KILL"}
LOST = 6
_JOB, _TASK = "job ID", "task index"


@dataclasses.dataclass
class GcutReport:
  """Task counts: seen, removed by each filter (applied in this order), kept, and returned."""
  tasks: int = 0
  no_end_event: int = 0
  discontinuous: int = 0
  empty_measurements: int = 0
  mismatched_end_time: int = 0
  too_long: int = 0
  kept: int = 0
  returned: int = 0


def _paths(paths) -> list[str]:
  if isinstance(paths, (str, os.PathLike)):
    return [os.fspath(paths)]
  return [os.fspath(p) for p in paths]


def _read_table(paths, columns, table, ints, floats) -> pd.DataFrame:
  """Concatenates headerless shards of one table; `ints` must be present integers in every row."""
  frames = []
  for path in paths:
    try:
      first = pd.read_csv(path, header=None, nrows=1, index_col=False)
    except pd.errors.EmptyDataError:
      continue  # an empty shard
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
      raise DataError(f"{path}: cannot parse {table} CSV ({e})") from None
    if first.shape[1] != len(columns):
      raise DataError(f"{path}: a {table} row of the 2011 trace has {len(columns)} columns, found "
                      f"{first.shape[1]} (is this the {table} table of clusterdata-2011-2?)")
    use = list(ints) + list(floats)
    try:
      df = pd.read_csv(path, header=None, names=list(columns), usecols=use, index_col=False,
                       dtype={**{c: "Int64" for c in ints}, **{c: np.float64 for c in floats}})
    except (pd.errors.ParserError, ValueError, TypeError) as e:
      raise DataError(f"{path}: cannot parse {table} CSV ({e})") from None
    for c in ints:
      if df[c].isna().any():
        raise DataError(f"{path}: {table} column {c!r} is empty in row {int(df[c].isna().to_numpy().argmax())}")
    frames.append(df.astype({c: np.int64 for c in ints}))
  if not frames:
    return pd.DataFrame({**{c: np.zeros(0, np.int64) for c in ints}, **{c: np.zeros(0) for c in floats}})
  return pd.concat(frames, ignore_index=True)


def load_gcut(task_usage_paths, task_events_paths, max_tasks: int | None = None, seed: int = 0,
              max_length: int | None = None) -> tuple[Dataset, GcutReport]:
  """Builds the GCUT dataset; returns (dataset, report of the tasks each filter removed).

  Filters, in the paper's order (each counts only tasks that passed the earlier ones):
    no_end_event: no EVICT/FAIL/FINISH/KILL event, or the last one is followed by LOST.
    discontinuous: some record's end time != the next record's start time.
    empty_measurements: no task_usage records, or a record with any of the 9 measurements empty.
    mismatched_end_time: the last end event's timestamp != the last record's end time.
  Then max_length drops (not truncates) tasks with more records, since a truncated series would no longer
  end with its end event. Finally max_tasks picks a uniform random subset (seeded), in (job, task) order.
  A task split across shards you did not pass will usually fail a filter; pass whole time ranges.
  """
  usage_paths, events_paths = _paths(task_usage_paths), _paths(task_events_paths)
  if not usage_paths or not events_paths:
    raise ValueError("need at least one task_usage and one task_events file")
  usage = _read_table(usage_paths, TASK_USAGE_COLUMNS, "task_usage", ["start time", "end time", _JOB, _TASK],
                      MEASUREMENTS)
  events = _read_table(events_paths, TASK_EVENTS_COLUMNS, "task_events", ["timestamp", _JOB, _TASK, "event type"],
                       [])
  source = usage_paths[0] + (f" (+{len(usage_paths) - 1} more task_usage files)" if len(usage_paths) > 1 else "")

  # Usage records grouped per task, in start time order.
  usage = usage.iloc[np.lexsort((usage["start time"], usage[_TASK], usage[_JOB]))].reset_index(drop=True)
  job, task = usage[_JOB].to_numpy(), usage[_TASK].to_numpy()
  start, end = usage["start time"].to_numpy(), usage["end time"].to_numpy()
  new_task = np.ones(len(usage), bool)
  new_task[1:] = (job[1:] != job[:-1]) | (task[1:] != task[:-1])
  first_row = np.flatnonzero(new_task)
  group = np.cumsum(new_task) - 1  # record -> task group
  counts = np.bincount(group, minlength=len(first_row))
  gap = np.zeros(len(usage), bool)  # this record's end != the next record's start, same task
  gap[:-1] = ~new_task[1:] & (end[:-1] != start[1:])
  empty_row = usage[list(MEASUREMENTS)].isna().any(axis=1).to_numpy()
  per_task = pd.DataFrame({
      "group": np.arange(len(first_row)),
      "records": counts,
      "gaps": np.bincount(group, weights=gap, minlength=len(first_row)).astype(np.int64),
      "empty_rows": np.bincount(group, weights=empty_row, minlength=len(first_row)).astype(np.int64),
      "last_end": end[first_row + counts - 1],
  }, index=pd.MultiIndex.from_arrays([job[first_row], task[first_row]], names=[_JOB, _TASK]))

  # The last terminal event of each task (stable sort: file order breaks timestamp ties).
  ends = events[events["event type"].isin(list(END_EVENTS) + [LOST])]
  ends = ends.iloc[np.lexsort((ends["timestamp"], ends[_TASK], ends[_JOB]))]
  last = ends.groupby([_JOB, _TASK], sort=False)[["event type", "timestamp"]].last()

  keys = pd.MultiIndex.from_frame(events[[_JOB, _TASK]].drop_duplicates()).union(per_task.index).sort_values()
  per_task = per_task.reindex(keys, fill_value=0)
  etype = last["event type"].reindex(keys, fill_value=-1).to_numpy()
  ets = last["timestamp"].reindex(keys, fill_value=-1).to_numpy()
  records = per_task["records"].to_numpy()

  report = GcutReport(tasks=len(keys))
  alive = np.ones(len(keys), bool)

  def drop(bad):
    bad = alive & bad
    alive[bad] = False
    return int(bad.sum())

  report.no_end_event = drop(~np.isin(etype, list(END_EVENTS)))
  report.discontinuous = drop(per_task["gaps"].to_numpy() > 0)
  report.empty_measurements = drop((records == 0) | (per_task["empty_rows"].to_numpy() > 0))
  report.mismatched_end_time = drop(per_task["last_end"].to_numpy() != ets)
  if max_length is not None:
    report.too_long = drop(records > max_length)
  kept = np.flatnonzero(alive)
  report.kept = len(kept)
  if max_tasks is not None and max_tasks < len(kept):
    kept = np.sort(np.random.default_rng(seed).choice(kept, max_tasks, replace=False))
  report.returned = len(kept)
  logging.info("%s: GCUT tasks %s", source, report)
  if not len(kept):
    raise DataError(f"{source}: no tasks left after filtering ({report})")

  # Scatter the kept tasks' records into [n, T, 9].
  lengths = records[kept]
  groups = per_task["group"].to_numpy()[kept]
  sample = np.repeat(np.arange(len(kept)), lengths)
  step = np.arange(len(sample)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  rows = first_row[groups][sample] + step
  features = np.zeros((len(kept), int(lengths.max()), len(MEASUREMENTS)), np.float32)
  features[sample, step] = usage[list(MEASUREMENTS)].to_numpy(np.float64)[rows]
  attributes = (etype[kept] - min(END_EVENTS)).astype(np.float64)[:, None]  # codes 2..5 -> 0..3
  ds = Dataset(features, lengths, attributes, [continuous(m) for m in MEASUREMENTS],
               [categorical("end_event_type", list(END_EVENTS.values()))], source=source)
  return ds.validate(), report
