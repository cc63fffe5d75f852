"""Wikipedia Web Traffic (§5.1.1): Kaggle train_1.csv, 550 daily page views per page, attributes
domain / access / agent. The paper sampled 100k pages; page views are modelled as log1p.

Run:
  python launch.py --config=configs/wwt.py --config.data.path=train_1.csv --workdir=/tmp/dg_wwt
"""
import os

from configs import default
from configs.mba import SHARED_DATA


def get_config():
  c = default.get_config()
  c.data.format = "wwt"
  c.data.path = os.path.normpath(os.path.join(SHARED_DATA, "wwt10", "train_1_sample.csv"))  # 10 pages
  c.data.max_samples = 100_000
  c.model.sample_len = 10           # the paper's WWT setting (T/S = 55)
  return c
