"""Session-wide JAX settings for the test suite.

* 4 host (CPU) devices for the whole session, so that sharding tests can run anywhere. This has
  to happen before JAX initialises its backends (at the first device query, not at ``import jax``).
* Strict dtype promotion and no implicit rank promotion (as Equinox's tests do): mixing
  float32 with int32, or (S, H) + (H,), raises instead of silently promoting/broadcasting.
* float32 everywhere (x64 off).
* XLA's fast-compile options (``zoo.bench.measure.FAST_COMPILE``: backend optimisation level 0, no
  expensive LLVM passes, the older loop emitters, one LLVM module a program): the tests'
  programs are small and run a few times, so compiling dominates; results agree up to rounding.
  In ``XLA_FLAGS``, so that the subprocesses the tests start (``train.py``, several processes)
  inherit them too.
* One persistent compilation cache for the session (``$ZOO_COMPILATION_CACHE``, a fresh
  temporary folder unless set from outside), shared by the xdist workers and the processes they
  start: a program the session compiled once (the tiny configs train in many tests, and a run
  resumed compiles what it compiled before) is loaded, not compiled again.
"""

import atexit
import os
import shutil
import tempfile

from zoo.bench.measure import FAST_COMPILE  # imports jax but starts no backend: XLA_FLAGS is read at the first

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=4"
FAST_COMPILE_FLAGS = " ".join(f"--{name}={str(value).lower()}" for name, value in FAST_COMPILE.items())
os.environ.setdefault("XLA_FLAGS", f"{DEVICE_COUNT_FLAG} {FAST_COMPILE_FLAGS}")

if "ZOO_COMPILATION_CACHE" not in os.environ:  # the first process of the session (xdist's workers inherit it)
    os.environ["ZOO_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="zoo-tests-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["ZOO_COMPILATION_CACHE"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

from zoo.compilation import default_cache_dir, enable_compilation_cache  # noqa: E402

jax.config.update("jax_enable_x64", False)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
enable_compilation_cache(default_cache_dir())


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


def pytest_collection_modifyitems(items):
    """Tests that use a module-scoped fixture (a trained run, a compiled step, two processes) run on
    one xdist worker, in one ``xdist_group`` a module (``--dist loadgroup``), so the fixture is built
    once and not once a worker; the other tests spread over the workers one at a time. The groups,
    the longest work units, are handed out first, so that no worker is left with one at the end.
    A module whose tests share another cache says so with its own ``xdist_group`` mark."""
    grouped = {item for item in items if item.get_closest_marker("xdist_group")}
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        if fixtures and any(defs[-1].scope == "module" for defs in fixtures.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
            grouped.add(item)
    items.sort(key=lambda item: item not in grouped)  # stable: collection order within each part
