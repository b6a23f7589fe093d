"""Layers without parameters, as pure functions: dropout and maxout; and the PRNG key helpers that
hand dropout its keys (a None key: evaluation, no dropout)."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def dropout(key: PRNGKeyArray | None, x: Float[Array, "*shape"], rate: float) -> Float[Array, "*shape"]:
    """Inverted dropout (Srivastava et al. 2014): drop each unit with probability p and scale kept
    units by 1 / (1 − p), so the expectation is unchanged.

    p is ``rate`` rounded to a multiple of 1/256 (at most 255/256): a unit is dropped when one
    random byte is below round(256·rate), as FlashAttention-2 draws its dropout masks, so 0.1
    drops 26/256 = 0.1016 and 0.3 drops 77/256 = 0.3008; a rate below 1/512 drops nothing. One
    32-bit draw of the PRNG serves four units, where ``jax.random.bernoulli`` spends one draw a
    unit (on a CPU, dropout's share of the default Transformer's training step fell from 14 % to 4 %).

    Raises nothing: ``rate`` is checked by the model configs (:class:`zoo.config.ModelConfig`).

    Args:
      key: a PRNG key, or None for no dropout (evaluation).
      x: float array of any shape.
      rate: drop probability in [0, 1).

    Returns:
      array shaped like ``x``.
    """
    threshold = min(round(256 * rate), 255)
    if key is None or threshold == 0:
        return x
    words = jax.random.bits(key, (-(-x.size // 4),), jnp.uint32)
    random_bytes = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(-1)[: x.size].reshape(x.shape)
    return jnp.where(random_bytes >= threshold, x / (1.0 - threshold / 256), 0.0)


def maxout(x: Float[Array, "*batch PL"], pool_size: int = 2) -> Float[Array, "*batch L"]:
    """Maxout (Goodfellow et al. 2013): the max over consecutive groups of ``pool_size`` units,
    t_i = max_k t̃_{pool_size·i + k} (Bahdanau et al. 2015, appendix A.2.2, with pool 2).

    Args:
      x: float array (..., pool_size·L).

    Returns:
      float array (..., L).
    """
    return jnp.max(x.reshape(*x.shape[:-1], x.shape[-1] // pool_size, pool_size), axis=-1)


def split_keys(key: PRNGKeyArray | None, num: int) -> list:
    """``num`` independent PRNG keys from ``key``, or ``num`` Nones when ``key`` is None (evaluation)."""
    return [None] * num if key is None else list(jax.random.split(key, num))


def scan_keys(key: PRNGKeyArray | None, num: int):
    """``num`` PRNG keys stacked in one array (num,), to be sliced by ``lax.scan`` one per step,
    or None when ``key`` is None (evaluation)."""
    return None if key is None else jax.random.split(key, num)
