"""Session-wide JAX settings for the test suite.

* 4 host (CPU) devices for the whole session, so that sharding tests can run anywhere. This has
  to happen before JAX initialises its backends, hence before ``import jax``.
* Strict dtype promotion and no implicit rank promotion (as Equinox's tests do): mixing
  float32 with int32, or (S, H) + (H,), raises instead of silently promoting/broadcasting.
* float32 everywhere (x64 off).
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

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


@pytest.fixture(autouse=True, scope="session")
def _prepared_data_cache(tmp_path_factory):
    """train.py's prepared-data cache (zoo.data.prepare) in the session's temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_PREPARED_DIR", str(tmp_path_factory.mktemp("prepared")))
        yield
