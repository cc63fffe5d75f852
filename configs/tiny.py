"""A tiny model on a tiny demo dataset: for tests and smoke runs (seconds on a CPU).

Run:
  python launch.py --config=configs/tiny.py --workdir=/tmp/dg_tiny
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.demo.num_samples = 64
  c.data.demo.length = 24
  c.data.demo.variable_lengths = True
  c.model.sample_len = 4
  c.model.attribute_num_units = 16
  c.model.additional_num_units = 16
  c.model.feature_num_units = 16
  c.model.critic_num_layers = 2
  c.model.critic_num_units = 32
  c.train.batch_size = 16
  c.train.num_steps = 20
  c.train.lr_decay_start = 1.0  # constant: tests compare a run stopped at step s with one trained to s
  c.train.steps_per_dispatch = 5
  c.train.log_every = 10
  c.train.checkpoint_every = 10
  return c
