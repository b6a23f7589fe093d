"""Session-wide JAX settings for the test suite.

* 4 host (CPU) devices for the whole session, so that sharding tests can run anywhere, and one
  Eigen thread a process for XLA's matrix products and convolutions: pytest-xdist runs one
  worker a core, and two workers with an Eigen pool of all cores each oversubscribe them (the
  suite took 7 min 43 s that way, 7 min 5 s with one thread, on the same quiet 2-core machine).
  This has to happen before JAX initialises its backends, hence before ``import jax``;
  subprocesses inherit it.
* Strict dtype promotion and no implicit rank promotion (as Equinox's tests do): mixing
  float32 with int32, or (S, H) + (H,), raises instead of silently promoting/broadcasting.
* float32 everywhere (x64 off).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _strict_jax_config():
    """Re-assert the strict settings before every test, so that no test module can loosen
    them for the tests that run after it (loosen locally with a context manager instead)."""
    jax.config.update("jax_enable_x64", False)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    yield


@pytest.fixture
def standard_dtype_promotion():
    """Standard dtype promotion for one test: optax and orbax mix Python floats with int32
    counts internally, which strict promotion refuses. Rank promotion stays strict."""
    with jax.numpy_dtype_promotion("standard"):
        yield
