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
