"""Masks built from sequence lengths: the one place where the zoo says which positions are real
and which keys a query may read (every attention, recurrence and loss takes its padding and
causal masks from here; local attention's window, a function of a predicted centre, is
:func:`zoo.functional.attention.local_window`).

Padding is always a suffix, so a sequence's mask is its length; attention kernels that take
lengths (``jax.nn.dot_product_attention``'s ``key_value_seq_lengths``, cuDNN) get the lengths,
the reference and blocked paths the boolean masks below.
"""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Int, Shaped


def length_mask(seq_length: Int[ArrayLike, ""], max_length: int) -> Bool[Array, " T"]:
    """Boolean mask of the real (non-padding) positions of one sequence.

    Args:
      seq_length: int scalar, number of real tokens (0 <= seq_length <= max_length).
      max_length: padded length T.

    Returns:
      bool array (T,), True at positions t < seq_length.
    """
    return jnp.arange(max_length) < seq_length


def attention_mask(num_queries: int, num_keys: int, key_length: Int[ArrayLike, "*batch"] | None = None, causal: bool = False,
                   key_offset: Int[ArrayLike, ""] = 0) -> Bool[Array, "*batch 1 Tq Tk"] | None:
    """The keys each query may read, for queries 0..Tq−1 over keys at positions o + j, j < Tk:

        allowed[..., i, j] = (o + j < key_length) ∧ (¬causal ∨ o + j <= i)

    (o = ``key_offset``: the first key of a block of keys, see
    :func:`zoo.functional.attention.blocked_attention`.)

    Args:
      num_queries: Tq. num_keys: Tk.
      key_length: int array (...) of real keys per sequence (padding is a suffix), or None: all real.
      causal: the decoder's mask (Vaswani et al. 2017, section 3.2.3), query i reads keys j <= i.
      key_offset: o, int scalar.

    Returns:
      bool (..., 1, Tq, Tk), broadcastable to the attention logits (..., N, Tq, Tk) of N heads;
      None when every query reads every key (no length, not causal).
    """
    if key_length is None and not causal:
        return None
    keys = key_offset + jnp.arange(num_keys)
    allowed = jnp.ones((num_queries, num_keys), bool)
    if causal:
        allowed = jnp.arange(num_queries)[:, None] >= keys[None, :]
    if key_length is None:
        return allowed[None]
    length = jnp.asarray(key_length)
    batch = (1,) * length.ndim
    real = keys.reshape(batch + (1, num_keys)) < length[..., None, None]  # (..., 1, Tk)
    return (allowed.reshape(batch + allowed.shape) & real)[..., None, :, :]


def reverse_padded(xs: Shaped[ArrayLike, " T *rest"], seq_length: Int[ArrayLike, ""]) -> Shaped[Array, " T *rest"]:
    """Reverse the first ``seq_length`` entries of xs (T, ...) and leave the padding after them:
    [a, b, c, pad] -> [c, b, a, pad] (the source reversal of Sutskever et al. 2014, section 3.3).

    Args:
      xs: array (T, ...). seq_length: int scalar.

    Returns:
      array like xs.
    """
    t = jnp.arange(xs.shape[0])
    return xs[jnp.where(t < seq_length, seq_length - 1 - t, t)]
