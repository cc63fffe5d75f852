"""dg_jax: DoppelGANger (Lin et al., IMC 2020) in JAX."""
