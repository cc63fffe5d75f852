import numpy as np
import pandas as pd

from configs import tiny
from dg_jax.api import DoppelGANgerModel


def test_fit_generate_save_load_from_a_dataframe(tmp_path):
  rng = np.random.default_rng(0)
  rows = [dict(id=i, t=t, kind="big" if i % 2 else "small", load=float((i % 2 * 9 + 1) * (1 + np.sin(t))))
          for i in range(32) for t in range(rng.integers(4, 9))]
  df = pd.DataFrame(rows)
  config = tiny.get_config()
  config.model.sample_len = 2
  model = DoppelGANgerModel.fit(df, str(tmp_path / "run"), config, num_steps=10,
                                frame_options=dict(id_column="id", time_column="t", attribute_columns=["kind"]))
  assert [v.name for v in model.schema.feature_vars] == ["load"] and model.schema.max_length == 8
  synth = model.generate(20, seed=1)
  assert synth.features.shape == (20, 8, 1) and synth.attribute_vars[0].categories == ("big", "small")
  model.save(str(tmp_path / "bundle"))
  again = DoppelGANgerModel.load(str(tmp_path / "bundle")).generate(20, seed=1)
  np.testing.assert_array_equal(again.features, synth.features)
  conditioned = model.generate(0, seed=2, attributes=np.zeros((5, 1)))
  assert (conditioned.attributes == 0).all() and conditioned.num_samples == 5
