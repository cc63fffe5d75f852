"""Google cluster usage trace 2011 (Appendix A): variable-length task series of 9 measurements,
attribute = end event type. The paper sampled 100k tasks; max length 2497 but 97% within 50.

Run:
  python launch.py --config=configs/gcut.py --config.data.path='task_usage/*.csv.gz' \
      --config.data.events_path='task_events/*.csv.gz' --workdir=/tmp/dg_gcut
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.format = "gcut"
  c.data.max_samples = 100_000
  return c
