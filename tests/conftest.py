"""Test configuration: JAX in strict mode, as a careful user would run it."""

import jax

# Implicit rank promotion hides shape bugs; the library must work with it disabled.
jax.config.update("jax_numpy_rank_promotion", "raise")
