"""Attention as pure functions. Every attention returns ``(context, weights)``.

Shapes: S source (key) positions, H score width, C value width.
"""

import jax.numpy as jnp


def masked_softmax(logits, mask):
    """Softmax over the last axis restricted to ``mask``.

        α_j = exp(e_j) / Σ_{k: mask_k} exp(e_k)  for mask_j, else 0.

    A row whose mask is all False gives all-zero weights (never NaN), and its gradient is zero.

    Args:
      logits: float array (..., S).
      mask: bool array broadcastable to ``logits``; True marks positions that may be attended.

    Returns:
      float array (..., S); each row sums to 1 (or to 0 if fully masked).
    """
    mask = jnp.broadcast_to(mask, logits.shape)
    row_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    exp = jnp.where(mask, jnp.exp(jnp.where(mask, logits - row_max, 0.0)), 0.0)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    return exp / jnp.where(total > 0, total, 1.0)


def context_vector(weights, values):
    """Context vector c = Σ_j α_j v_j (Bahdanau et al. 2015, eq. 5).

    Args:
      weights: α (..., S).
      values: v (S, C).

    Returns:
      c (..., C).
    """
    return weights @ values


def additive_score(query_proj, keys_proj, v):
    """Additive (Bahdanau) score e_j = vᵀ tanh(W_s s + W_h h_j) (Bahdanau et al. 2015, eq. 6
    and appendix A.1.2, where W_s, W_h, v are W_a, U_a, v_a).

    The projections are taken by the caller: ``keys_proj`` = W_h h_j is computed once per
    source sentence, outside the decoder's recurrence.

    Args:
      query_proj: W_s s, float (H,).
      keys_proj: W_h h_j for every source position, float (S, H).
      v: float (H,).

    Returns:
      scores e (S,).
    """
    return jnp.tanh(keys_proj + query_proj[None, :]) @ v


def additive_attention(query_proj, keys_proj, values, v, mask):
    """Bahdanau attention: α = masked_softmax(vᵀ tanh(W_s s + W_h h_j)), c = Σ_j α_j h_j.

    Args:
      query_proj: W_s s (H,).
      keys_proj: W_h h_j (S, H).
      values: annotations h_j (S, C).
      v: (H,).
      mask: bool (S,), True on real source tokens.

    Returns:
      ``(context, weights)``: c (C,) and α (S,), zero on padding.
    """
    weights = masked_softmax(additive_score(query_proj, keys_proj, v), mask)
    return context_vector(weights, values), weights
