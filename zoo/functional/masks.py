"""Masks built from sequence lengths."""

import jax.numpy as jnp


def length_mask(seq_length, max_length: int):
    """Boolean mask of the real (non-padding) positions of one sequence.

    Args:
      seq_length: int scalar, number of real tokens (0 <= seq_length <= max_length).
      max_length: padded length T.

    Returns:
      bool array (T,), True at positions t < seq_length.
    """
    return jnp.arange(max_length) < seq_length


def causal_mask(num_positions: int):
    """The decoder's mask (Vaswani et al. 2017, section 3.2.3): query i may read keys j <= i.

    Returns:
      bool (T, T), lower triangular.
    """
    t = jnp.arange(num_positions)
    return t[:, None] >= t[None, :]


def combine_masks(*masks):
    """Logical AND of broadcastable bool masks, skipping None (None if all are None)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def reverse_padded(xs, seq_length):
    """Reverse the first ``seq_length`` entries of xs (T, ...) and leave the padding after them:
    [a, b, c, pad] -> [c, b, a, pad] (the source reversal of Sutskever et al. 2014, section 3.3).

    Args:
      xs: array (T, ...). seq_length: int scalar.

    Returns:
      array like xs.
    """
    t = jnp.arange(xs.shape[0])
    return xs[jnp.where(t < seq_length, seq_length - 1 - t, t)]
