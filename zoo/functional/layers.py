"""Small feed-forward pieces: dropout and maxout."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


def dropout(key: PRNGKeyArray | None, x: Float[Array, "*shape"], rate: float) -> Float[Array, "*shape"]:
    """Inverted dropout (Srivastava et al. 2014): keep each unit with probability 1 − rate and
    scale kept units by 1 / (1 − rate), so the expectation is unchanged.

    Args:
      key: a PRNG key, or None for no dropout (evaluation).
      x: float array of any shape.
      rate: drop probability in [0, 1).

    Returns:
      array shaped like ``x``.
    """
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


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
