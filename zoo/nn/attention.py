"""Attention modules (one example at a time)."""

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Real

from zoo.functional import attention, masks, positional
from zoo.functional.counting import record

RELATIVE = (None, "shaw", "rope", "alibi")
IMPLEMENTATIONS = ("reference", "xla", "cudnn", "blocked")  # scaled dot-product paths of MultiHeadAttention


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
      dtype: the compute dtype (:mod:`zoo.nn.precision`); the parameters are cast to it at use.

    Raises:
      ValueError: unknown score, widths a parameter-free score cannot compare, or hard
        attention with the Gaussian window.
    """

    def __init__(self, score: str, query_dim: int, key_dim: int, attention_dim: int, *, hard: bool = False,
                 window: int | None = None, gaussian: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
        if hard and gaussian:
            raise ValueError("hard attention picks one position; it has no Gaussian-weighted (local-p) form")
        if gaussian and window is None:
            raise ValueError("the Gaussian (local-p) weighting needs a window")
        self.score_name, self.hard, self.window, self.gaussian = score, hard, window, gaussian
        self.dtype = dtype
        params = attention.get_score(score).init(rngs.params(), query_dim, key_dim, attention_dim)
        self.names = tuple(params)
        for name, value in params.items():
            setattr(self, name, nnx.Param(value))

    @property
    def params(self) -> dict:
        return {name: getattr(self, name)[...].astype(self.dtype) for name in self.names}

    def project_keys(self, keys: Float[Array, "S K"]) -> Float[Array, "S A"]:
        """The query-independent part of the score for every source position: keys (S, K) -> (S, K').
        Take it once per sentence."""
        return attention.get_score(self.score_name).project_keys(self.params, keys)

    def __call__(self, query: Float[Array, " Q"], keys_proj: Float[Array, "S A"], values: Float[Array, "S C"],
                 mask: Bool[Array, " S"], key: PRNGKeyArray | None = None,
                 center: Real[ArrayLike, ""] | None = None) -> tuple[Float[Array, " C"], Float[Array, " S"]]:
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


def on_nvidia_gpu() -> bool:
    """Whether JAX's first device is an NVIDIA (CUDA) GPU."""
    device = jax.devices()[0]
    return device.platform == "gpu" and "cuda" in device.client.platform_version.lower()


def attention_implementation(name: str, dtype, d_head: int, relative: str | None = None) -> str:
    """The scaled dot-product implementation a :class:`MultiHeadAttention`, or ConvS2S's
    attention (:class:`zoo.models.convs2s.ConvS2S`, one head of width ``embed_dim``), uses for ``name``.

    "auto" picks cuDNN's flash attention for bfloat16 on an NVIDIA GPU when d_head fits it on any
    such GPU (a multiple of 8, at most 128: JAX's check allows 256 from Hopper on, 128 before),
    XLA's kernel otherwise; with Shaw's relative positions, whose value term reads the attention
    weights, it picks the reference path.

    Args:
      name: one of :data:`IMPLEMENTATIONS` or "auto". dtype: the compute dtype. d_head: the head
        width. relative: the module's relative positions (None, "shaw", "rope", "alibi").

    Raises:
      ValueError: an unknown name, or a path other than "reference" with Shaw's relative positions.
    """
    if name not in IMPLEMENTATIONS + ("auto",):
        raise ValueError(f"unknown attention implementation {name!r}; choose from auto, {', '.join(IMPLEMENTATIONS)}")
    if relative == "shaw":
        if name not in ("auto", "reference"):
            raise ValueError(f"Shaw's relative positions read the attention weights: attention_impl={name!r} cannot "
                             "serve them (use reference or auto)")
        return "reference"
    if name != "auto":
        return name
    fits_cudnn = dtype == jnp.bfloat16 and d_head % 8 == 0 and d_head <= 128
    return "cudnn" if fits_cudnn and on_nvidia_gpu() else "xla"


class MultiHeadAttention(nnx.Module):
    """Multi-head attention (Vaswani et al. 2017, section 3.2.2):

        head_n = Attention(X_q W_Q^n, X_k W_K^n, X_v W_V^n),  n = 1..N
        MultiHead = [head_1; ...; head_N] W_O,   W_O: (N·d_head, d_model)

    with the scaled dot-product attention of :mod:`zoo.functional.attention` and, optionally,
    relative positions inside it: Shaw et al.'s (2018) tables a^K, a^V shared by the heads, RoPE
    (rotating queries and keys) or ALiBi (a per-head distance bias).

    The attention weights are computed only when asked for (``return_weights``: plots,
    ``translate``, ``decode_step``) and then always by the reference path
    (:func:`~zoo.functional.attention.scaled_dot_product_attention`); otherwise ``implementation``
    runs: "reference", "xla" or "cudnn" (:func:`~zoo.functional.attention.fused_attention`:
    padding as key lengths, causality as ``is_causal``, ALiBi as a bias) or "blocked"
    (:func:`~zoo.functional.attention.blocked_attention`, memory linear in the length). Shaw's
    value term Σ_j α_ij a^V_ij needs the weights: "reference" only.

    Parameters: ``w_query``, ``w_key``, ``w_value`` (d_model, N·d_head) with biases ``b_*`` (N·d_head,),
    ``w_out`` (N·d_head, d_model), ``b_out`` (d_model,); with Shaw, ``relative_key`` and
    ``relative_value`` (2k+1, d_head). They are float32, cast to ``dtype`` at use.

    Args:
      d_model: model width. num_heads: N; d_head = d_model / N.
      relative: None, "shaw", "rope" or "alibi". max_relative_position: Shaw's clipping distance k.
      dtype: the compute dtype (:mod:`zoo.nn.precision`): projections and attention products run
        in it; logits and softmax in float32. Inputs must have it.
      implementation: one of :data:`IMPLEMENTATIONS`, or "auto" (see :func:`attention_implementation`).
        block_size: keys per block of "blocked".

    Raises:
      ValueError: d_model not divisible by num_heads, unknown ``relative`` or ``implementation``,
        or Shaw's positions with an implementation other than "reference".
    """

    def __init__(self, d_model: int, num_heads: int, *, relative: str | None = None, max_relative_position: int = 16,
                 dtype=jnp.float32, implementation: str = "reference", block_size: int = 128, rngs: nnx.Rngs):
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if relative not in RELATIVE:
            raise ValueError(f"unknown relative position method {relative!r}; choose from shaw, rope, alibi")
        self.num_heads, self.d_head, self.relative = num_heads, d_model // num_heads, relative
        self.max_relative_position, self.dtype = max_relative_position, dtype
        self.implementation = attention_implementation(implementation, dtype, self.d_head, relative)
        self.block_size = block_size
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

    def _param(self, name: str):
        """A parameter in the compute dtype."""
        return getattr(self, name)[...].astype(self.dtype)

    def _project(self, x, name: str, positions):
        """x (T, d_model) -> (T, N, d_head), rotated by RoPE for queries and keys."""
        y = (x @ self._param(f"w_{name}") + self._param(f"b_{name}")[None, :]).reshape(
            x.shape[0], self.num_heads, self.d_head)
        if self.relative == "rope" and name != "value":
            y = positional.rotary(y, positions)
        return y

    def queries(self, x: Float[Array, "T d_model"], positions: Int[ArrayLike, " T"]) -> Float[Array, "T N d_head"]:
        """Queries Q = x W_Q + b (T, N, d_head) of inputs x (T, d_model) at int positions (T,)."""
        return self._project(x, "query", positions)

    def keys_values(self, x: Float[Array, "T d_model"],
                    positions: Int[ArrayLike, " T"]) -> tuple[Float[Array, "T N d_head"], Float[Array, "T N d_head"]]:
        """``(K, V)``, each (T, N, d_head), of inputs x (T, d_model) at int positions (T,).
        A decoder caches them; cross-attention takes them once per source sentence."""
        return self._project(x, "key", positions), self._project(x, "value", positions)

    def attend(self, query: Float[Array, "Tq N d_head"], key: Float[Array, "Tk N d_head"], value: Float[Array, "Tk N d_head"],
               query_positions: Int[ArrayLike, " Tq"], key_positions: Int[ArrayLike, " Tk"] | None,
               key_length: Int[ArrayLike, ""] | None = None, causal: bool = False,
               return_weights: bool = False) -> tuple[Float[Array, "Tq d_model"], Float[Array, "N Tq Tk"] | None]:
        """Attention of projected queries (Tq, N, d_head) over projected keys and values (Tk, N, d_head).

        Args:
          query_positions: int (Tq,). key_positions: int (Tk,) (used by Shaw and ALiBi; None if neither).
          key_length: int scalar, the keys j < key_length are real (the rest padding); None: all.
          causal: query i reads keys j <= i only (the decoder's self-attention on a whole sentence).
          return_weights: compute and return the attention weights (the reference path).

        Returns:
          ``(output (Tq, d_model), weights (N, Tq, Tk) or None)``.
        """
        num_queries, num_keys = query.shape[0], key.shape[0]
        bias_fn = None  # ALiBi's bias of the keys at given indices, (N, Tq, B)
        if self.relative == "alibi":
            slopes = positional.alibi_slopes(self.num_heads)
            bias_fn = lambda j: positional.alibi_bias(slopes, query_positions, jnp.take(key_positions, j, mode="clip"))
        weights = None
        if return_weights or self.implementation == "reference":
            bias = None if bias_fn is None else bias_fn(jnp.arange(num_keys))
            if self.relative == "shaw":
                indices = positional.relative_positions(query_positions, key_positions, self.max_relative_position)
                bias = positional.relative_logits(query, self._param("relative_key"), indices)
            mask = masks.attention_mask(num_queries, num_keys, key_length, causal)
            heads, weights = attention.scaled_dot_product_attention(query, key, value, mask, bias)
            if self.relative == "shaw":
                heads = heads + positional.relative_values(weights, self._param("relative_value"), indices)
        elif self.implementation == "blocked":
            heads = attention.blocked_attention(query, key, value, key_length, causal, bias_fn, self.block_size)
        else:
            bias = None if bias_fn is None else bias_fn(jnp.arange(num_keys))
            heads = attention.fused_attention(query, key, value, key_length, causal, bias, self.implementation)
        output = heads.reshape(num_queries, -1) @ self._param("w_out") + self._param("b_out")[None, :]
        return output, weights if return_weights else None

    def __call__(self, inputs_q: Float[Array, "Tq d_model"], inputs_kv: Float[Array, "Tk d_model"],
                 key_length: Int[ArrayLike, ""] | None = None, causal: bool = False,
                 query_positions: Int[ArrayLike, " Tq"] | None = None, key_positions: Int[ArrayLike, " Tk"] | None = None,
                 return_weights: bool = False) -> tuple[Float[Array, "Tq d_model"], Float[Array, "N Tq Tk"] | None]:
        """Attention of inputs_q (Tq, d_model) over inputs_kv (Tk, d_model) (the same array for
        self-attention); positions default to 0..T−1; ``key_length``, ``causal`` and
        ``return_weights`` as :meth:`attend`.

        Returns:
          ``(output (Tq, d_model), weights (N, Tq, Tk) or None)``.
        """
        if query_positions is None:
            query_positions = jnp.arange(inputs_q.shape[0])
        if key_positions is None:
            key_positions = jnp.arange(inputs_kv.shape[0])
        key, value = self.keys_values(inputs_kv, key_positions)
        return self.attend(self.queries(inputs_q, query_positions), key, value, query_positions, key_positions,
                           key_length, causal, return_weights)
