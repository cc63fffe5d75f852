"""FCC MBA (§5.1.1) in the original DoppelGANger folder format: 600 series x 56 six-hourly steps,
2 features (traffic bytes, ping loss), attributes ISP / technology / state.

Run:
  python launch.py --config=configs/mba.py --workdir=/tmp/dg_mba
  python launch.py --mode=generate --workdir=/tmp/dg_mba --num_samples=600 --output=/tmp/mba_gen.npz
"""
import os

from configs import default

SHARED_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


def get_config():
  c = default.get_config()
  c.data.format = "dg"
  c.data.path = os.path.normpath(os.path.join(SHARED_DATA, "mba"))
  c.data.feature_names = "traffic_byte_counter,ping_loss_rate"
  c.data.attribute_names = "ISP,technology,state"
  return c
