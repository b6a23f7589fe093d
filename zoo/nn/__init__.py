"""Flax NNX modules: they hold the parameters and call :mod:`zoo.functional`.

Every module works on one example (no batch axis); batching is ``jax.vmap`` by the caller.
"""

from zoo.nn.attention import Attention, MultiHeadAttention
from zoo.nn.precision import compute_dtype
from zoo.nn.recurrent import Bidirectional, RNNLayer, StackedRNN

__all__ = ["Attention", "MultiHeadAttention", "Bidirectional", "RNNLayer", "StackedRNN", "compute_dtype"]
