"""XLA options that compile the tests' small programs several times faster on CPU (same results
up to rounding): pass as ``jax.jit(..., compiler_options=FAST_COMPILE)``. One definition, the
benchmark's."""

from zoo.bench.measure import FAST_COMPILE

__all__ = ["FAST_COMPILE"]
