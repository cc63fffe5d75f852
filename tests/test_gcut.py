"""GCUT loader on a small trace written here in the 2011 trace's CSV layout."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from dg_jax.data import gcut
from dg_jax.data.gcut import MEASUREMENTS, TASK_EVENTS_COLUMNS, TASK_USAGE_COLUMNS, load_gcut
from dg_jax.data.schema import DataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUBMIT, SCHEDULE, EVICT, FAIL, FINISH, KILL, LOST = 0, 1, 2, 3, 4, 5, 6


def usage(job, task, start, end, **blank):
  """A task_usage row; measurement column c of a record starting at s holds index(c) + s / 1000."""
  row = {c: TASK_USAGE_COLUMNS.index(c) + start / 1000 for c in TASK_USAGE_COLUMNS}
  row.update({"start time": start, "end time": end, "job ID": job, "task index": task, "machine ID": 7})
  for c in blank.get("empty", ()):
    row[c] = None
  return row


def event(t, job, task, kind):
  row = {c: 0 for c in TASK_EVENTS_COLUMNS}
  row.update({"timestamp": t, "job ID": job, "task index": task, "event type": kind, "user": "aGFzaA=="})
  return row


def write(path, columns, rows):
  text = "".join(",".join("" if r[c] is None else str(r[c]) for c in columns) + "\n" for r in rows)
  if str(path).endswith(".gz"):
    with gzip.open(path, "wt") as fh:
      fh.write(text)
  else:
    Path(path).write_text(text)
  return path


# (job, task): what it tests. Usage records are 300 time units long, as the trace's 5-minute windows.
USAGE = [
    usage(1, 0, 600, 900), usage(1, 0, 0, 300), usage(1, 0, 300, 600),  # good, out of order in the file
    usage(1, 1, 300, 600),  # good, KILL
    usage(2, 0, 0, 300),  # SUBMIT/SCHEDULE only: no end event
    usage(2, 1, 0, 300),  # last end event LOST: no end event
    usage(2, 2, 0, 300),  # no events at all: no end event
    usage(3, 0, 0, 300), usage(3, 0, 400, 700),  # gap 300 -> 400: discontinuous
    usage(3, 2, 0, 300, empty=["sampled CPU usage"]),  # an empty measurement
    usage(4, 0, 0, 300), usage(4, 0, 300, 600),  # end event at 650: mismatched
    usage(4, 1, 0, 300), usage(4, 1, 300, 600),  # evicted, rescheduled, finished: good, FINISH
    *[usage(5, 0, s, s + 300) for s in range(0, 1500, 300)],  # good, EVICT, 5 records
]
EVENTS = [
    event(0, 1, 0, SUBMIT), event(0, 1, 0, SCHEDULE), event(900, 1, 0, FINISH),
    event(600, 1, 1, KILL),
    event(0, 2, 0, SUBMIT), event(0, 2, 0, SCHEDULE),
    event(0, 2, 1, SCHEDULE), event(200, 2, 1, EVICT), event(300, 2, 1, LOST),
    event(700, 3, 0, FAIL),
    event(500, 3, 1, EVICT),  # no usage records: empty
    event(300, 3, 2, FINISH),
    event(650, 4, 0, FINISH),
    event(600, 4, 1, FINISH), event(300, 4, 1, EVICT), event(300, 4, 1, SCHEDULE),
    event(1500, 5, 0, EVICT),
]


@pytest.fixture
def trace(tmp_path):
  u1 = write(tmp_path / "task_usage-part-00000-of-00002.csv.gz", TASK_USAGE_COLUMNS, USAGE[:7])
  u2 = write(tmp_path / "task_usage-part-00001-of-00002.csv", TASK_USAGE_COLUMNS, USAGE[7:])
  ev = write(tmp_path / "task_events-part-00000-of-00001.csv.gz", TASK_EVENTS_COLUMNS, EVENTS)
  return [u1, u2], ev


def test_filters_and_report(trace):
  ds, report = load_gcut(*trace)
  assert report == gcut.GcutReport(tasks=11, no_end_event=3, discontinuous=1, empty_measurements=2,
                                   mismatched_end_time=1, too_long=0, kept=4, returned=4)
  assert [v.name for v in ds.feature_vars] == list(MEASUREMENTS)
  (attr,) = ds.attribute_vars
  assert attr.name == "end_event_type" and attr.categories == ("EVICT", "FAIL", "FINISH", "KILL")
  # Kept tasks in (job, task) order: (1,0) FINISH, (1,1) KILL, (4,1) FINISH, (5,0) EVICT.
  assert ds.lengths.tolist() == [3, 1, 2, 5]
  assert [attr.categories[int(c)] for c in ds.attributes[:, 0]] == ["FINISH", "KILL", "FINISH", "EVICT"]
  assert ds.features.shape == (4, 5, 9)


def test_features_follow_start_time_and_table6_order(trace):
  ds, _ = load_gcut(*trace)
  for j, m in enumerate(MEASUREMENTS):
    expected = TASK_USAGE_COLUMNS.index(m) + np.array([0, 300, 600]) / 1000
    np.testing.assert_allclose(ds.features[0, :3, j], expected, rtol=1e-6)
  assert np.all(ds.features[0, 3:] == 0) and np.all(ds.features[1, 1:] == 0)


def test_max_length_drops_longer_tasks(trace):
  ds, report = load_gcut(*trace, max_length=3)
  assert report.too_long == 1 and report.kept == 3
  assert ds.lengths.tolist() == [3, 1, 2]


def test_max_tasks_samples_reproducibly(trace):
  a, report = load_gcut(*trace, max_tasks=2, seed=3)
  b, _ = load_gcut(*trace, max_tasks=2, seed=3)
  assert report.kept == 4 and report.returned == 2 and a.num_samples == 2
  np.testing.assert_array_equal(a.features, b.features)
  np.testing.assert_array_equal(a.attributes, b.attributes)


def test_matches_original_schema():
  if not (DATA / "gcut_schema").is_dir():
    pytest.skip(f"real data not found at {DATA}/gcut_schema")
  from dg_jax.data.dg_format import load_dg_schema
  fvars, avars = load_dg_schema(DATA / "gcut_schema")
  assert len(fvars) == len(MEASUREMENTS) and all(not v.is_categorical for v in fvars)
  assert avars[0].dim == len(gcut.END_EVENTS)


def test_wrong_column_count_names_file(tmp_path, trace):
  bad = tmp_path / "task_usage-2011-1.csv"  # clusterdata-2011-1 lacks "sampled CPU usage"
  bad.write_text(",".join(["1"] * 19) + "\n")
  with pytest.raises(DataError, match=r"task_usage-2011-1\.csv.*20 columns, found 19"):
    load_gcut(bad, trace[1])


def test_missing_key_names_file_and_column(tmp_path, trace):
  rows = [event(0, 1, 0, FINISH), {**event(5, 1, 1, FINISH), "job ID": None}]
  bad = write(tmp_path / "events.csv", TASK_EVENTS_COLUMNS, rows)
  with pytest.raises(DataError, match=r"events\.csv: task_events column 'job ID' is empty in row 1"):
    load_gcut(trace[0], bad)


def test_non_integer_key_names_file(tmp_path, trace):
  bad = write(tmp_path / "events.csv", TASK_EVENTS_COLUMNS, [{**event(0, 1, 0, FINISH), "event type": "x"}])
  with pytest.raises(DataError, match=r"events\.csv: cannot parse task_events"):
    load_gcut(trace[0], bad)


def test_nothing_left_is_an_error(tmp_path, trace):
  ev = write(tmp_path / "events.csv", TASK_EVENTS_COLUMNS, [event(0, 1, 0, SUBMIT)])
  with pytest.raises(DataError, match=r"task_usage-part-00000.*no tasks left.*tasks=10, no_end_event=10"):
    load_gcut(trace[0], ev)


def test_empty_shard_is_skipped(tmp_path, trace):
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  ds, report = load_gcut(trace[0] + [empty], trace[1])
  assert report.kept == 4
