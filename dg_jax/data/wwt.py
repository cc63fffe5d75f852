"""Wikipedia Web Traffic (Kaggle "web traffic time series forecasting", train_1.csv layout).

A `Page` column `<name>_<domain>_<access>_<agent>` then one column per day of page views. As in the paper
(§5.1.1, Appendix A, Table 7): attributes domain, access, agent; one feature, daily views.
"""
from __future__ import annotations

import os

from absl import logging
import numpy as np
import pandas as pd

from dg_jax.data.schema import DataError, Dataset, categorical, continuous

PAGE_COLUMN = "Page"
# Values in the Kaggle train_1.csv; a domain not listed here is added after these.
DOMAINS = ("commons.wikimedia.org", "de.wikipedia.org", "en.wikipedia.org", "es.wikipedia.org",
           "fr.wikipedia.org", "ja.wikipedia.org", "ru.wikipedia.org", "www.mediawiki.org", "zh.wikipedia.org")
ACCESSES = ("all-access", "desktop", "mobile-web")
AGENTS = ("all-agents", "spider")


def load_wwt(path, num_pages: int | None = None, seed: int = 0, drop_missing: bool = True) -> Dataset:
  """Loads page views: one series per page, all of length = number of day columns.

  drop_missing: drop pages with any missing day (as the paper did); if False, missing views read as 0.
  num_pages: keep a uniform random subset of this many pages (after dropping), in file order.
  """
  path = os.fspath(path)
  try:
    df = pd.read_csv(path, dtype={PAGE_COLUMN: str})
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot parse CSV ({e})") from None
  if PAGE_COLUMN not in df.columns:
    raise DataError(f"{path}: missing column {PAGE_COLUMN!r}")
  days = [c for c in df.columns if c != PAGE_COLUMN]
  if not days:
    raise DataError(f"{path}: no day columns after {PAGE_COLUMN!r}")
  if len(df) == 0:
    raise DataError(f"{path}: the file has no pages")
  for c in days:
    if not pd.api.types.is_numeric_dtype(df[c].dtype):
      raise DataError(f"{path}: day column {c!r} is not numeric (dtype {df[c].dtype})")
  if df[PAGE_COLUMN].isna().any():
    raise DataError(f"{path}: column {PAGE_COLUMN!r} is empty in row {int(df[PAGE_COLUMN].isna().argmax())}")

  views = df[days].to_numpy(np.float64)
  missing = np.isnan(views).any(axis=1)
  if drop_missing:
    logging.info("%s: dropped %d of %d pages with missing values", path, int(missing.sum()), len(df))
    df, views = df[~missing], views[~missing]
  else:
    logging.info("%s: read missing views as 0 in %d of %d pages", path, int(missing.sum()), len(df))
    views = np.nan_to_num(views, nan=0.0)
  if len(df) == 0:
    raise DataError(f"{path}: no pages left" + (" after dropping pages with missing values" if drop_missing else ""))

  if num_pages is not None:
    if num_pages < 1:
      raise ValueError(f"num_pages must be at least 1, got {num_pages}")
    if num_pages < len(df):
      keep = np.sort(np.random.default_rng(seed).choice(len(df), num_pages, replace=False))
      df, views = df.iloc[keep], views[keep]
    else:
      logging.info("%s: num_pages=%d but only %d pages are available; keeping all", path, num_pages, len(df))

  parts = df[PAGE_COLUMN].str.rsplit("_", n=3)  # the name itself may contain underscores
  domain, access, agent = [], [], []
  for page, p in zip(df[PAGE_COLUMN], parts):
    if len(p) != 4 or p[2] not in ACCESSES or p[3] not in AGENTS:
      raise DataError(f"{path}: column {PAGE_COLUMN!r} value {page!r} is not <name>_<domain>_<access>_<agent> "
                      f"with access in {ACCESSES} and agent in {AGENTS}")
    domain.append(p[1])
    access.append(p[2])
    agent.append(p[3])
  domains = DOMAINS + tuple(sorted(set(domain) - set(DOMAINS)))
  attr_vars = (categorical("domain", domains), categorical("access", ACCESSES), categorical("agent", AGENTS))
  attributes = np.stack([[v.categories.index(x) for x in xs] for v, xs in zip(attr_vars, (domain, access, agent))],
                        axis=1).astype(np.float64)
  n = len(df)
  ds = Dataset(views[:, :, None].astype(np.float32), np.full(n, len(days)), attributes,
               (continuous("views", log1p=True),), attr_vars, source=path)
  return ds.validate()
