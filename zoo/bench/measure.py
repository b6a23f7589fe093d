"""Measuring a compiled JAX program: wall time, XLA's memory and FLOP figures, the run's setting.

Every timing is the median of ``repeats`` (>= 5 in the benchmark's presets) calls after
``warmup`` calls, each ended by ``jax.block_until_ready``, so that asynchronous dispatch
never hides work; the spread (min, quartiles, max) and every run are kept.

The peak-memory figure is XLA's own, deterministic account of a compiled program
(``compiled.memory_analysis()``): arguments + outputs + temporaries − aliased (donated)
bytes. It is what the program needs on the device, independent of allocator caching and of
the other processes on the machine.
"""

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import numpy as np

# XLA options that compile a program several times faster on CPU (same results up to rounding): for
# programs run once, such as the counting runs, and the test suite's small programs. The last two
# (XLA:CPU's older loop emitters, one LLVM module a program) nearly halved the suite's compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the spread of the timed runs."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    runs: tuple[float, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def time_call(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time ``fn(*args)`` (blocked until its results are ready): ``warmup`` untimed calls, then
    ``repeats`` timed ones.

    Args:
      fn: a callable returning arrays (a compiled JAX program, or any callable that blocks).
      args: its arguments, reused by every call (so ``fn`` must not donate them).
      repeats: timed calls, >= 1. warmup: untimed calls first, >= 0.

    Returns:
      :class:`Timing` in seconds.

    Raises:
      ValueError: ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    q1, _, q3 = statistics.quantiles(runs, n=4, method="inclusive") if repeats > 1 else (runs[0],) * 3
    return Timing(float(np.median(runs)), q1, q3, min(runs), max(runs), tuple(runs))


def compile_program(fn: Callable, *args):
    """``jax.jit(fn)`` lowered and compiled for ``args``: the compiled executable (call it with ``args``)."""
    return jax.jit(fn).lower(*args).compile()


def memory_bytes(compiled) -> dict:
    """XLA's memory account of a compiled program (``memory_analysis()``).

    Returns:
      dict of ints: ``argument``, ``output``, ``temp``, ``alias`` bytes and ``peak`` =
      argument + output + temp − alias; all zero where the backend gives no analysis.
    """
    stats = compiled.memory_analysis()
    if stats is None:
        return {"argument": 0, "output": 0, "temp": 0, "alias": 0, "peak": 0}
    sizes = {"argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
             "temp": stats.temp_size_in_bytes, "alias": stats.alias_size_in_bytes}
    sizes["peak"] = sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"]
    return {k: int(v) for k, v in sizes.items()}


def xla_flops(compiled) -> float:
    """The FLOP count of XLA's ``cost_analysis()`` (a dict, or a list of dicts, one per program).

    XLA counts the body of a ``while`` loop (a ``lax.scan``) once, whatever its trip count; see
    :func:`zoo.flops.loop_corrected`. Returns NaN when the backend gives no estimate.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, dict):
        analysis = [analysis]
    flops = [a["flops"] for a in analysis or [] if a and "flops" in a]
    return float(sum(flops)) if flops else float("nan")


def device_memory_peak(device) -> int | None:
    """The device allocator's peak bytes in use so far in this process (GPU/TPU), or None (CPU)."""
    stats = device.memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0))


def pick_device(name: str | None):
    """The first JAX device of platform ``name`` ("cpu", "gpu", "tpu"; None: JAX's default).

    Raises:
      RuntimeError: no device of that platform (the message names the platforms JAX sees).
    """
    if name is None:
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError:
        seen = sorted({d.platform for d in jax.devices()})
        raise RuntimeError(f"JAX sees no {name} device (it sees: {', '.join(seen)})") from None


def run_setting(device, dtype: str) -> dict:
    """What a measurement depends on: device, dtype, versions, host CPU."""
    import flax
    import jaxlib

    return {"device": str(device), "platform": device.platform, "device_kind": device.device_kind,
            "dtype": dtype, "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0], "host_cpu": _cpu_name(),
            "host_cores": host_threads()}


def host_threads() -> int:
    """The cores this process may run on: the threads XLA's CPU backend uses for one program, and
    what a peer framework gets by default so that a comparison is at equal threads."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _cpu_name() -> str:
    """The host CPU's model name (/proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
