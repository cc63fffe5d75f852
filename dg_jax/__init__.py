"""dg_jax: DoppelGANger (Lin et al., IMC 2020) in JAX."""
import os

# jaxlib 0.10's CPU backend sums a [R, B, 4H] array over its first axis ~70x slower through its
# YNNPACK reduce than without it; LSTM gradients hit that (DESIGN.md). XLA reads this flag when
# JAX starts its backends, which importing jax does not do yet.
_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
if "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
