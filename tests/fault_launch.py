"""launch.py with one fault injected, named by the DG_JAX_FAULT environment variable (tests and
benchmarks/chaos.py start it as they would start launch.py; the package itself has no fault hooks):

  nan:R@S[,S...]    replica R's batches of training steps S hold NaN (bad batches: that replica diverges;
                    the data is then host-fed)
  write_error:P@N   process P's Nth metrics.jsonl row fails to write with ENOSPC (a full disk)
  flat:R            what replica R's generator generates is flat: each series repeats its first record
                    (a collapsed generator, as the sweep sees it)
  busy_watch        the peer watcher (dg_jax/failures.py) polls without pause, so it is inside the
                    coordination client's call whenever the process exits
"""
import errno
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def inject(fault: str) -> None:
  kind, _, where = fault.partition(":")
  first, _, second = where.partition("@")
  if kind == "nan":  # on the host-fed path (train.data_placement=host), whatever the config says
    from dg_jax.data import feed
    replica, steps, host_batches = int(first), [int(s) for s in second.split(",")], feed.Feed.host_batches

    def host_batches_with_nan(self, indices):
      done = self.batches.replicas[0].step - len(indices)  # these batches are steps done+1..done+len(indices)
      out = host_batches(self, indices)
      for step in steps:
        if done < step <= done + len(indices):
          out["features"][step - done - 1, replica] = np.nan
      return out
    feed.choose = lambda placement, nbytes: "host"
    feed.Feed.host_batches = host_batches_with_nan
  elif kind == "write_error":
    import jax
    from dg_jax import io_utils
    process, nth, append, rows = int(first), int(second), io_utils.append_text, []

    def append_or_fail(path, text):
      if jax.process_index() == process and str(path).endswith("metrics.jsonl"):
        rows.append(text)
        if len(rows) == nth:
          raise OSError(errno.ENOSPC, "No space left on device (injected)", str(path))
      append(path, text)
    io_utils.append_text = append_or_fail
  elif kind == "flat":
    import dataclasses
    from dg_jax import sampling
    replica, load, generate, chosen = int(first), sampling.load_generator, sampling.generate, []

    def load_and_note(*args, seed_index=None, **kwargs):
      chosen.append(seed_index)
      return load(*args, seed_index=seed_index, **kwargs)

    def generate_flat(*args, **kwargs):
      out = generate(*args, **kwargs)
      if chosen and chosen[-1] == replica:
        valid = np.arange(out.features.shape[1])[None, :, None] < out.lengths[:, None, None]
        out = dataclasses.replace(out, features=np.where(valid, out.features[:, :1], 0).astype(out.features.dtype))
      return out
    sampling.load_generator, sampling.generate = load_and_note, generate_flat
  elif kind == "busy_watch":
    import functools
    from dg_jax import failures
    failures.watch_peers = functools.partial(failures.watch_peers, poll_seconds=0.0)
  elif kind:
    raise SystemExit(f"DG_JAX_FAULT={fault!r}: unknown fault")


if __name__ == "__main__":
  from absl import app
  import launch
  inject(os.environ.get("DG_JAX_FAULT", ""))
  app.run(launch.main)
