"""Attention modules (one example at a time)."""

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.functional import attention, positional
from zoo.functional.counting import record

RELATIVE = (None, "shaw", "rope", "alibi")


class Attention(nnx.Module):
    """Attention of one query over S keys with any score of :data:`zoo.functional.attention.SCORES`.

        e_j = score(q, k_j),  α = softmax(e) over real positions (soft) or one-hot (hard),
        c = Σ_j α_j v_j

    The score's parameters are attributes of the module under the score's names (e.g.
    ``w_query``, ``w_key``, ``v`` for the additive score).

    Args:
      score: a key of ``SCORES``: additive, dot, general, scaled_dot, cosine, mlp.
      query_dim, key_dim: Q and K. attention_dim: A, the width of projected scores.
      hard: hard attention (:func:`zoo.functional.attention.hard_weights`): one-hot weights,
        trained by straight-through Gumbel-softmax when a PRNG key is given.
      window: local attention (Luong et al. 2015, section 3.2): only positions within D =
        ``window`` of a centre p_t given at each call take part, and only the 2D + 1 positions
        around it are gathered and scored. None: global attention.
      gaussian: local-p: multiply the weights by exp(−(s − p_t)²/(2σ²)), σ = D/2 (eq. 10); the
        weights then sum to less than 1, as in the paper.

    Raises:
      ValueError: unknown score, widths a parameter-free score cannot compare, or hard
        attention with the Gaussian window.
    """

    def __init__(self, score: str, query_dim: int, key_dim: int, attention_dim: int, *, hard: bool = False,
                 window: int | None = None, gaussian: bool = False, rngs: nnx.Rngs):
        if hard and gaussian:
            raise ValueError("hard attention picks one position; it has no Gaussian-weighted (local-p) form")
        if gaussian and window is None:
            raise ValueError("the Gaussian (local-p) weighting needs a window")
        self.score_name, self.hard, self.window, self.gaussian = score, hard, window, gaussian
        params = attention.get_score(score).init(rngs.params(), query_dim, key_dim, attention_dim)
        self.names = tuple(params)
        for name, value in params.items():
            setattr(self, name, nnx.Param(value))

    @property
    def params(self) -> dict:
        return {name: getattr(self, name)[...] for name in self.names}

    def project_keys(self, keys):
        """The query-independent part of the score for every source position: keys (S, K) -> (S, K').
        Take it once per sentence."""
        return attention.get_score(self.score_name).project_keys(self.params, keys)

    def __call__(self, query, keys_proj, values, mask, key=None, center=None):
        """query (Q,), keys_proj (S, K') from :meth:`project_keys`, values (S, C), mask (S,) True on
        real positions; ``key`` draws the hard attention's sample during training; ``center``
        p_t (float scalar) for local attention.

        Global attention scores all S positions. Local attention gathers the W = min(2D + 1, S)
        positions of its window (:func:`zoo.functional.attention.local_window`) and scores only
        those: W evaluations, whatever S.

        Returns ``(context (C,), weights (S,))``; weights are zero on masked positions and, for
        local attention, outside the window.
        """
        num_positions = mask.shape[0]
        if self.window is not None:
            start, positions, in_window = attention.local_window(center, num_positions, self.window)
            keys_proj, values, mask = (attention.gather_window(x, start, positions.shape[0])
                                       for x in (keys_proj, values, mask))
            mask = mask & in_window
        logits = attention.get_score(self.score_name).score(self.params, query, keys_proj)
        record("scores", logits.size)
        weights = attention.hard_weights(logits, mask, key) if self.hard else attention.masked_softmax(logits, mask)
        if self.gaussian:
            weights = weights * attention.gaussian_window(center, positions, self.window).astype(weights.dtype)
        context = attention.context_vector(weights, values)
        if self.window is not None:
            weights = attention.scatter_window(weights, start, num_positions)
        return context, weights


class MultiHeadAttention(nnx.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2):

        head_n = Attention(X_q W_Q^n, X_k W_K^n, X_v W_V^n),  n = 1..N
        MultiHead = [head_1; ...; head_N] W_O,   W_O: (N·d_head, d_model)

    with the scaled dot-product attention of :func:`zoo.functional.attention.scaled_dot_product_attention`
    and, optionally, relative positions inside it: Shaw et al.'s (2018) tables a^K, a^V shared by
    the heads, RoPE (rotating queries and keys) or ALiBi (a per-head distance bias).

    Parameters: ``w_query``, ``w_key``, ``w_value`` (d_model, N·d_head) with biases ``b_*`` (N·d_head,),
    ``w_out`` (N·d_head, d_model), ``b_out`` (d_model,); with Shaw, ``relative_key`` and
    ``relative_value`` (2k+1, d_head).

    Args:
      d_model: model width. num_heads: N; d_head = d_model / N.
      relative: None, "shaw", "rope" or "alibi". max_relative_position: Shaw's clipping distance k.

    Raises:
      ValueError: d_model not divisible by num_heads, or unknown ``relative``.
    """

    def __init__(self, d_model: int, num_heads: int, *, relative: str | None = None, max_relative_position: int = 16,
                 rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if relative not in RELATIVE:
            raise ValueError(f"unknown relative position method {relative!r}; choose from shaw, rope, alibi")
        self.num_heads, self.d_head, self.relative = num_heads, d_model // num_heads, relative
        self.max_relative_position = max_relative_position
        glorot, width = jax.nn.initializers.glorot_uniform(), num_heads * self.d_head
        for name in ("query", "key", "value"):
            setattr(self, f"w_{name}", nnx.Param(glorot(rngs.params(), (d_model, width))))
            setattr(self, f"b_{name}", nnx.Param(jnp.zeros((width,))))
        self.w_out = nnx.Param(glorot(rngs.params(), (width, d_model)))
        self.b_out = nnx.Param(jnp.zeros((d_model,)))
        if relative == "shaw":
            shape = (2 * max_relative_position + 1, self.d_head)
            self.relative_key = nnx.Param(glorot(rngs.params(), shape))
            self.relative_value = nnx.Param(glorot(rngs.params(), shape))

    def _project(self, x, name: str, positions):
        """x (T, d_model) -> (T, N, d_head), rotated by RoPE for queries and keys."""
        y = (x @ getattr(self, f"w_{name}")[...] + getattr(self, f"b_{name}")[None, :]).reshape(
            x.shape[0], self.num_heads, self.d_head)
        if self.relative == "rope" and name != "value":
            y = positional.rotary(y, positions)
        return y

    def queries(self, x, positions):
        """Queries Q = x W_Q + b (T, N, d_head) of inputs x (T, d_model) at int positions (T,)."""
        return self._project(x, "query", positions)

    def keys_values(self, x, positions):
        """``(K, V)``, each (T, N, d_head), of inputs x (T, d_model) at int positions (T,).
        A decoder caches them; cross-attention takes them once per source sentence."""
        return self._project(x, "key", positions), self._project(x, "value", positions)

    def attend(self, query, key, value, mask, query_positions, key_positions):
        """Attention of projected queries (Tq, N, d_head) over projected keys and values (Tk, N, d_head).

        Args:
          mask: bool broadcastable to (N, Tq, Tk), True where query i may read key j, or None.
          query_positions: int (Tq,). key_positions: int (Tk,) (used by Shaw and ALiBi).

        Returns:
          ``(output (Tq, d_model), weights (N, Tq, Tk))``.
        """
        bias = None
        if self.relative == "shaw":
            indices = positional.relative_positions(query_positions, key_positions, self.max_relative_position)
            bias = positional.relative_logits(query, self.relative_key[...], indices)
        elif self.relative == "alibi":
            bias = positional.alibi_bias(positional.alibi_slopes(self.num_heads), query_positions, key_positions)
        heads, weights = attention.scaled_dot_product_attention(query, key, value, mask, bias)
        if self.relative == "shaw":
            heads = heads + positional.relative_values(weights, self.relative_value[...], indices)
        output = heads.reshape(heads.shape[0], -1) @ self.w_out[...] + self.b_out[None, :]
        return output, weights

    def __call__(self, inputs_q, inputs_kv, mask=None, query_positions=None, key_positions=None):
        """Attention of inputs_q (Tq, d_model) over inputs_kv (Tk, d_model) (the same array for
        self-attention); positions default to 0..T−1.

        Returns:
          ``(output (Tq, d_model), weights (N, Tq, Tk))``.
        """
        if query_positions is None:
            query_positions = jnp.arange(inputs_q.shape[0])
        if key_positions is None:
            key_positions = jnp.arange(inputs_kv.shape[0])
        key, value = self.keys_values(inputs_kv, key_positions)
        return self.attend(self.queries(inputs_q, query_positions), key, value, mask, query_positions, key_positions)
