"""Flax NNX modules: they hold the parameters and call :mod:`zoo.functional`.

Every module works on one example (no batch axis); batching is ``jax.vmap`` by the caller.
"""

from zoo.nn.attention import AdditiveAttention
from zoo.nn.recurrent import GRU, BidirectionalGRU

__all__ = ["AdditiveAttention", "GRU", "BidirectionalGRU"]
