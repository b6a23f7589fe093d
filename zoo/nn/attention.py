"""Attention modules (one example at a time)."""

import jax
from flax import nnx

from zoo.functional import attention


class AdditiveAttention(nnx.Module):
    """Bahdanau additive attention, e_j = vᵀ tanh(W_s s + W_h h_j) (Bahdanau et al. 2015, eq. 6).

    Parameters: ``w_query`` W_s (Q, A), ``w_key`` W_h (K, A), ``v`` (A,), with A the attention width.
    """

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, *, rngs: nnx.Rngs):
        init = jax.nn.initializers.glorot_uniform()
        self.w_query = nnx.Param(init(rngs.params(), (query_dim, attention_dim)))
        self.w_key = nnx.Param(init(rngs.params(), (key_dim, attention_dim)))
        self.v = nnx.Param(jax.nn.initializers.normal(0.01)(rngs.params(), (attention_dim,)))

    def project_keys(self, keys):
        """W_h h_j for every source position: keys (S, K) -> (S, A). Take it once per sentence."""
        return keys @ self.w_key[...]

    def __call__(self, query, keys_proj, values, mask):
        """query s (Q,), keys_proj (S, A) from :meth:`project_keys`, values (S, C), mask (S,).

        Returns ``(context (C,), weights (S,))``.
        """
        return attention.additive_attention(query @ self.w_query[...], keys_proj, values, self.v[...], mask)
