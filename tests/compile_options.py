"""XLA options that compile the tests' small programs several times faster on CPU (same results
up to rounding): pass as ``jax.jit(..., compiler_options=FAST_COMPILE)``."""

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
