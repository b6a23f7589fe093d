"""JAX's persistent compilation cache, on by default, and a count of what was compiled.

A run of ``train.py`` (and ``evaluate.py``, ``benchmark.py``) keeps every XLA program it
compiles under ``$ZOO_COMPILATION_CACHE`` (default: ``~/.cache/zoo/jax``; ``off`` disables it),
so a second run or a resume of the same config on the same machine loads its programs instead
of compiling them. :class:`CompileCounter` reads JAX's monitoring events to say how many
programs a run needed and how many came from the cache.
"""

import os
from pathlib import Path

import jax
from jax import monitoring

ENV = "ZOO_COMPILATION_CACHE"
# JAX's event names (jax/_src/dispatch.py and jax/_src/compiler.py): every program handed to
# the backend, whether compiled or loaded from the cache; and the loads from the cache.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def default_cache_dir() -> Path | None:
    """``$ZOO_COMPILATION_CACHE`` (None if it is ``off``), else ``~/.cache/zoo/jax``."""
    value = os.environ.get(ENV)
    if value is not None and value.lower() in ("off", "none", ""):
        return None
    return Path(value) if value else Path.home() / ".cache" / "zoo" / "jax"


def enable_compilation_cache(directory: Path | str | None) -> None:
    """Keep every compiled program in ``directory`` (None: leave the cache off).

    Programs are cached whatever their compile time and size, so that a second identical run
    compiles nothing.
    """
    if directory is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class CompileCounter:
    """Counts the programs handed to XLA inside ``with CompileCounter() as counts:``:
    ``programs`` in all, ``cached`` of them loaded from the persistent cache, ``compiled`` the rest."""

    def __init__(self):
        self.programs = self.cached = 0

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            self.programs += 1

    def _on_event(self, event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT:
            self.cached += 1

    @property
    def compiled(self) -> int:
        return self.programs - self.cached

    def __enter__(self) -> "CompileCounter":
        monitoring.register_event_duration_secs_listener(self._on_duration)
        monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        monitoring.unregister_event_duration_listener(self._on_duration)
        monitoring.unregister_event_listener(self._on_event)

    def __str__(self) -> str:
        return f"{self.programs} programs: {self.compiled} compiled, {self.cached} from the cache"
