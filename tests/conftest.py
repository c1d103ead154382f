"""Test configuration: JAX in strict mode, as a careful user would run it."""

import os

import jax

# Implicit rank promotion hides shape bugs; the library must work with it disabled.
jax.config.update("jax_numpy_rank_promotion", "raise")

# The 8-device tests need XLA_FLAGS set before JAX starts: `make test` runs them in a
# second pytest process (tests/multidevice), so the main process leaves them out.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    collect_ignore = ["multidevice"]
