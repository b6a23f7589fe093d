"""Mixed precision, Flax's convention (``dtype`` / ``param_dtype``): parameters are stored in
float32 (so are the optimizer state and the checkpoints); a module casts its parameters and its
inputs to the compute ``dtype`` where it uses them, so that matrix products, convolutions and
recurrent updates run in that dtype. Softmax, layer-norm statistics and the loss stay float32.

Only float32 and bfloat16 are offered: float16's narrow exponent needs loss scaling, which the
training step does not do.
"""

import jax.numpy as jnp

from zoo.config import COMPUTE_DTYPES

DTYPES = {name: jnp.dtype(name) for name in COMPUTE_DTYPES}


def compute_dtype(name: str):
    """The compute dtype named by a model config's ``dtype`` field.

    Raises:
      ValueError: a name other than float32 or bfloat16 (float16 included: no loss scaling).
    """
    if name not in DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose from {', '.join(DTYPES)} "
                         "(float16 would need loss scaling)")
    return DTYPES[name]
