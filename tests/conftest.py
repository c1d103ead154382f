"""Test configuration: JAX in strict mode, as a careful user would run it."""

import os

import jax

# The tests use today's names `jax.enable_x64` and `jax.shard_map`; older jax has them only
# as `jax.experimental.enable_x64` (before 0.8) and
# `jax.experimental.shard_map.shard_map` (before 0.6). The library itself uses neither.
if not hasattr(jax, "enable_x64"):
    from jax.experimental import enable_x64 as _enable_x64

    jax.enable_x64 = _enable_x64
if not hasattr(jax, "shard_map"):
    from jax.experimental.shard_map import shard_map as _shard_map

    jax.shard_map = _shard_map

# Implicit rank promotion hides shape bugs; the library must work with it disabled.
jax.config.update("jax_numpy_rank_promotion", "raise")

# The 8-device tests need XLA_FLAGS set before JAX starts: `make test` runs them in a
# second pytest process (tests/multidevice), so the main process leaves them out.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    collect_ignore = ["multidevice"]

# Hypothesis profiles for the property tests (tests/test_properties.py). "ci" is the
# default: derandomized (the same examples on every run), no deadline (the first example
# of a shape compiles). Its max_examples is the unit that each property test scales
# (see test_properties.py for the per-run total, >= 10,000 examples). "long" runs ten
# times more: HYPOTHESIS_PROFILE=long make test.
from hypothesis import HealthCheck, settings  # noqa: E402

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=500,
    suppress_health_check=_SUPPRESSED,
    print_blob=True,
)
settings.register_profile(
    "long",
    deadline=None,
    max_examples=5000,
    suppress_health_check=_SUPPRESSED,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
