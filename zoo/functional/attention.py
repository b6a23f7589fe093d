"""Attention as pure functions: scores, soft and hard weights, the context vector, and the
scaled dot-product attention of the Transformer in three forms (reference, fused, blocked).

An attention over S source positions computes logits e_j = score(query, k_j), weights
α = softmax(e) restricted to the real positions (soft), or a one-hot α (hard), and the context
vector c = Σ_j α_j v_j. Every score in :data:`SCORES` has the signature
``score(params, query (Q,), keys (S, K')) -> logits (S,)`` where the keys have first gone
through the score's ``project_keys(params, keys (S, K))``: that part does not depend on the
query, so a decoder takes it once per source sentence, outside its recurrence.

Shapes: S source (key) positions, Q query width, K key width, A attention width, C value width.
Multi-head attention uses the layout of ``jax.nn.dot_product_attention``: queries (..., Tq, N, d_k),
keys (..., Tk, N, d_k), values (..., Tk, N, d_v) with N heads, weights (..., N, Tq, Tk).
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Float32, Int, PRNGKeyArray, Real, Shaped

from zoo.functional.masks import attention_mask


def masked_softmax(logits: Float[Array, "*batch S"], mask: Bool[ArrayLike, "..."]) -> Float[Array, "*batch S"]:
    """Softmax over the last axis restricted to ``mask``.

        α_j = exp(e_j) / Σ_{k: mask_k} exp(e_k)  for mask_j, else 0.

    A row whose mask is all False gives all-zero weights (never NaN), and its gradient is zero.
    The exponentials and their sum are taken in float32 whatever the logits' dtype (mixed
    precision: a bfloat16 sum over hundreds of keys loses the small weights); the weights come
    back in the logits' dtype.

    Args:
      logits: float array (..., S).
      mask: bool array broadcastable to ``logits``; True marks positions that may be attended.

    Returns:
      float array (..., S) of the logits' dtype; each row sums to 1 (or to 0 if fully masked).

    Examples:
      >>> import jax.numpy as jnp
      >>> masked_softmax(jnp.array([1.0, 1.0, 9.0]), jnp.array([True, True, False])).tolist()
      [0.5, 0.5, 0.0]
      >>> masked_softmax(jnp.array([1.0, 2.0]), jnp.array([False, False])).tolist()  # no allowed key: zeros, not NaN
      [0.0, 0.0]
    """
    dtype, logits = logits.dtype, logits.astype(jnp.float32)
    mask = jnp.broadcast_to(mask, logits.shape)
    row_max = jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    exp = jnp.where(mask, jnp.exp(jnp.where(mask, logits - row_max, 0.0)), 0.0)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    return (exp / jnp.where(total > 0, total, 1.0)).astype(dtype)


def hard_weights(logits: Float[Array, " S"], mask: Bool[Array, " S"], key: PRNGKeyArray | None = None,
                 temperature: float = 1.0) -> Float[Array, " S"]:
    """Hard attention: a one-hot weight row on a single source position.

    Without a key (inference) the row is one-hot at argmax_j e_j over the real positions.
    With a key (training) it is the straight-through Gumbel-softmax estimator (Jang et al. 2017;
    Maddison et al. 2017): the forward value is one-hot at argmax_j (e_j + g_j) with Gumbel noise
    g_j, i.e. a sample from softmax(e); the gradient is that of the relaxed weights
    softmax((e + g)/τ) — biased, but of low variance, unlike REINFORCE.

    Args:
      logits: float (S,); mask: bool (S,); key: PRNG key or None; temperature: τ > 0.

    Returns:
      float (S,): exactly one 1 on a real position (all zeros if no position is real).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits, mask = jnp.array([1.0, 3.0, 2.0]), jnp.array([True, False, True])
      >>> hard_weights(logits, mask).tolist()  # inference: the argmax over the real positions
      [0.0, 0.0, 1.0]
      >>> float(hard_weights(logits, mask, jax.random.key(0)).sum())  # training: a one-hot sample
      1.0
    """
    if key is not None:
        logits = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
    relaxed = masked_softmax(logits / temperature, mask)
    one_hot = jax.nn.one_hot(jnp.argmax(jnp.where(mask, logits, -jnp.inf)), logits.shape[-1], dtype=logits.dtype)
    one_hot = jnp.where(jnp.any(mask), one_hot, 0.0)
    if key is None:
        return one_hot
    return one_hot + (relaxed - jax.lax.stop_gradient(relaxed))  # forward: exactly one_hot


def local_window(center: Real[ArrayLike, ""], num_positions: int,
                 window: int) -> tuple[Int[Array, ""], Int[Array, " W"], Bool[Array, " W"]]:
    """Local attention's window (Luong et al. 2015, section 3.2), to be gathered rather than masked.

    The positions s with ``|s − p_t| <= D`` lie in [floor(p_t) − D, floor(p_t) + D], so they all fall
    among the W = min(2D + 1, S) consecutive positions from

        start = clip(floor(p_t) − D, 0, S − W)

    (the clipping keeps the window inside [0, S) at the edges and for any p_t). Only those W
    positions are scored: t·W scores for t target steps instead of t·S.

    Args:
      center: p_t, float scalar (real-valued for local-p; taken in float32).
      num_positions: S. window: D >= 0.

    Returns:
      ``(start, positions, in_window)``: int32 scalar; int32 (W,), start .. start + W − 1; bool (W,),
      True where ``|s − p_t| <= D``.
    """
    center = jnp.asarray(center, jnp.float32)  # exact positions beyond 256, whatever the compute dtype
    width = min(2 * window + 1, num_positions)
    start = jnp.clip(jnp.floor(center).astype(jnp.int32) - window, 0, num_positions - width)
    positions = start + jnp.arange(width, dtype=jnp.int32)
    return start, positions, jnp.abs(positions.astype(center.dtype) - center) <= window


def gather_window(x: Shaped[Array, " S *rest"], start: Int[ArrayLike, ""], width: int) -> Shaped[Array, " W *rest"]:
    """Rows start .. start + W − 1 of x (S, ...) (``jax.lax.dynamic_slice``): (W, ...). ``start`` from
    :func:`local_window`, which keeps them inside [0, S)."""
    return jax.lax.dynamic_slice_in_dim(x, start, width, axis=0)


def scatter_window(weights: Float[Array, " W"], start: Int[ArrayLike, ""], num_positions: int) -> Float[Array, " S"]:
    """A window's weights (W,) back in a full row (S,), zero outside the window (the inverse of
    :func:`gather_window`, by ``jax.lax.dynamic_update_slice``)."""
    return jax.lax.dynamic_update_slice_in_dim(jnp.zeros((num_positions,), weights.dtype), weights, start, axis=0)


def gaussian_window(center: Real[ArrayLike, ""], positions: Int[Array, " W"], window: int) -> Float32[Array, " W"]:
    """Local-p's preference for positions near p_t (Luong et al. 2015, eq. 10):
    exp(−(s − p_t)² / (2σ²)) with σ = D/2, at int ``positions`` s (W,), with p_t a float scalar.
    Returns float32 (W,)."""
    center = jnp.asarray(center, jnp.float32)  # exact positions beyond 256, whatever the compute dtype
    sigma = window / 2.0
    return jnp.exp(-jnp.square(positions.astype(center.dtype) - center) / (2.0 * sigma**2))


def context_vector(weights: Float[Array, "*batch S"], values: Float[Array, "S C"]) -> Float[Array, "*batch C"]:
    """Context vector c = Σ_j α_j v_j (Bahdanau et al. 2015, eq. 5).

    Args:
      weights: α (..., S).
      values: v (S, C).

    Returns:
      c (..., C).

    Examples:
      >>> import jax.numpy as jnp
      >>> context_vector(jnp.array([0.25, 0.75]), jnp.array([[4.0, 0.0], [0.0, 4.0]])).tolist()
      [1.0, 3.0]
    """
    return weights @ values


def scaled_dot_product_attention(
    query: Float[Array, "*batch Tq N d_k"], key: Float[Array, "*batch Tk N d_k"], value: Float[Array, "*batch Tk N d_v"],
    mask: Bool[ArrayLike, "..."] | None = None, bias: Float[Array, "..."] | None = None,
) -> tuple[Float[Array, "*batch Tq N d_v"], Float[Array, "*batch N Tq Tk"]]:
    """Scaled dot-product attention (Vaswani et al. 2017, eq. 1), for every head at once:

        weights = softmax(Q Kᵀ / √d_k + bias) over the allowed keys,   output = weights V

    The reference path: it returns the weights. A row with no allowed key gets zero weights and a
    zero output (never NaN). The products run in the inputs' dtype; the logits, the bias and the
    softmax in float32 (mixed precision), the weights come back in the values' dtype.

    Args:
      query: float (..., Tq, N, d_k). key: float (..., Tk, N, d_k). value: float (..., Tk, N, d_v),
        all of one dtype.
      mask: bool broadcastable to (..., N, Tq, Tk), True where query i may attend key j
        (:func:`zoo.functional.masks.attention_mask`); None: all.
      bias: float broadcastable to (..., N, Tq, Tk), added to the scaled logits (ALiBi, relative
        positions); None: no bias.

    Returns:
      ``(output (..., Tq, N, d_v), weights (..., N, Tq, Tk))``.

    Examples:
      Three queries and three keys (T, N, d) with two heads of width 4; the third key is padding:

      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
      >>> output, weights = jax.jit(scaled_dot_product_attention)(q, k, v, mask=jnp.array([True, True, False]))
      >>> output.shape, weights.shape
      ((3, 2, 4), (2, 3, 3))
      >>> weights.sum(axis=-1).tolist(), float(weights[..., 2].max())
      ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], 0.0)
    """
    logits = jnp.einsum("...qnd,...knd->...nqk", query, key).astype(jnp.float32) / math.sqrt(query.shape[-1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1) if mask is None else masked_softmax(logits, mask)
    weights = weights.astype(value.dtype)
    return jnp.einsum("...nqk,...knd->...qnd", weights, value), weights


def _standard_promotion(f):
    """``f`` traced, and differentiated, under standard dtype promotion. JAX's XLA attention
    promotes bfloat16 to float32 implicitly in its forward and its backward pass, which strict
    promotion (the test suite's) refuses; the backward pass runs outside any ``with`` block
    around the call, hence the custom VJP."""

    @jax.custom_vjp
    def wrapped(*args):
        with jax.numpy_dtype_promotion("standard"):
            return f(*args)

    def forward(*args):
        with jax.numpy_dtype_promotion("standard"):
            return jax.vjp(f, *args)

    def backward(vjp_fn, cotangent):
        with jax.numpy_dtype_promotion("standard"):
            return vjp_fn(cotangent)

    wrapped.defvjp(forward, backward)
    return wrapped


def fused_attention(
    query: Float[Array, "*batch Tq N d_k"], key: Float[Array, "*batch Tk N d_k"], value: Float[Array, "*batch Tk N d_v"],
    key_length: Int[ArrayLike, "..."] | None = None, causal: bool = False, bias: Float[Array, "..."] | None = None,
    implementation: str | None = None, scale: float | None = None,
) -> Float[Array, "*batch Tq N d_v"]:
    """Scaled dot-product attention through ``jax.nn.dot_product_attention`` (no weights returned).

    The fast path: XLA's kernel, or cuDNN's flash attention with ``implementation="cudnn"``
    (NVIDIA GPUs, float16/bfloat16, d_k a multiple of 8). Padding reaches the kernel as the
    number of real keys of every sequence (``key_value_seq_lengths``; cuDNN also gets
    ``query_seq_lengths`` = Tq) and causality as ``is_causal``, the forms cuDNN accepts (it
    refuses a boolean mask: "Bias must have same seq length as QKV"). A query with no real key
    gets a zero output, as in :func:`scaled_dot_product_attention`. The logits and the softmax
    are float32 inside the kernel whatever the inputs' dtype.

    Args:
      query, key, value: as :func:`scaled_dot_product_attention`; with no batch axis (one
        example, as the zoo's modules), a batch axis of 1 is added inside (``jax.vmap`` batches it).
      key_length: int (...) real keys per sequence, a suffix being padding; None: all real.
      causal: query i reads only keys j <= i.
      bias: float broadcastable to (..., N, Tq, Tk), added to the scaled logits (ALiBi); None: no bias.
      implementation: None or "xla" (XLA), or "cudnn".
      scale: the logits' factor; None: 1/√d_k (ConvS2S passes 1.0: its dot products are unscaled).

    Returns:
      output (..., Tq, N, d_v), of the inputs' dtype.

    Examples:
      The same attention as the reference path, padding given as a length:

      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
      >>> reference, _ = jax.jit(scaled_dot_product_attention)(q, k, v, mask=jnp.arange(3) < 2)
      >>> bool(jnp.allclose(jax.jit(fused_attention)(q, k, v, key_length=2), reference, atol=1e-6))
      True
    """
    one_example = query.ndim == 3
    if one_example:  # jax.nn.dot_product_attention reads a leading axis as the batch
        query, key, value = query[None], key[None], value[None]
        bias = None if bias is None else bias[None]
        key_length = None if key_length is None else jnp.reshape(key_length, (1,))
    if bias is not None:
        bias = bias.astype(query.dtype if implementation == "cudnn" else jnp.float32)
    lengths = None if key_length is None else jnp.asarray(key_length, jnp.int32)
    query_lengths = None
    if implementation == "cudnn":
        # JAX's cuDNN batching rule wants query, keys, values and lengths all batched under jax.vmap or
        # none (a decoder's cached keys are batched while its first query may not be; a constant length
        # is not): tie them by adding zeros (B,) that depend on each of them. All Tq queries count.
        rows = [x[:, 0, 0, 0] for x in (query, key, value)] + ([] if lengths is None else [lengths])
        tie = sum(jnp.where(jnp.isfinite(row), 0, 0) for row in rows).astype(jnp.int32)
        query, key, value = (x + tie.astype(x.dtype)[:, None, None, None] for x in (query, key, value))
        if lengths is not None:
            query_lengths, lengths = tie + query.shape[-3], tie + lengths
    kernel = _standard_promotion(lambda q, k, v, b, n, m: jax.nn.dot_product_attention(
        q, k, v, b, scale=scale, is_causal=causal, query_seq_lengths=m, key_value_seq_lengths=n,
        implementation=implementation))
    output = kernel(query, key, value, bias, lengths, query_lengths)
    if lengths is not None:
        output = jnp.where((lengths > 0)[..., None, None, None], output, jnp.zeros_like(output))
    return output[0] if one_example else output


def blocked_attention(
    query: Float[Array, "*batch Tq N d_k"], key: Float[Array, "*batch Tk N d_k"], value: Float[Array, "*batch Tk N d_v"],
    key_length: Int[ArrayLike, "..."] | None = None, causal: bool = False, bias_fn: Callable | None = None,
    block_size: int = 128, scale: float | None = None,
) -> Float[Array, "*batch Tq N d_v"]:
    """Memory-efficient scaled dot-product attention: the keys are read in blocks of B with an
    online softmax (Milakov & Gimelshein 2018; Rabe & Staats 2021; FlashAttention, Dao et al. 2022):

        m' = max(m, max_j s_j),  l' = l·e^{m−m'} + Σ_j e^{s_j−m'},  o' = o·e^{m−m'} + Σ_j e^{s_j−m'} v_j

    and output = o / l after the last block. Only a (N, Tq, B) block of logits exists at a time,
    so memory grows linearly in the sequence length; the block is rematerialised in the backward
    pass (``jax.checkpoint``), so training memory stays linear too. Equal to
    :func:`scaled_dot_product_attention` up to float rounding; fully masked rows give zeros.
    The products run in the inputs' dtype, the logits and the running sums m, l, o in float32.

    Args:
      query, key, value: as :func:`scaled_dot_product_attention`.
      key_length: int (...) real keys per sequence, a suffix being padding; None: all real.
      causal: query i reads only keys j <= i.
      bias_fn: None, or a function of the key indices of one block, int (B,) (past Tk for the
        padding of the last block), giving the bias added to the scaled logits of those keys,
        float broadcastable to (..., N, Tq, B) (ALiBi: no (N, Tq, Tk) bias is ever built).
      block_size: B, keys per block (the keys are padded to a multiple of B).
      scale: the logits' factor; None: 1/√d_k.

    Returns:
      output (..., Tq, N, d_v), of the values' dtype.

    Examples:
      Three keys in blocks of two (the last block padded), the last key masked: the reference's output.

      >>> import jax, jax.numpy as jnp
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 3, 2, 4))
      >>> reference, _ = jax.jit(scaled_dot_product_attention)(q, k, v, mask=jnp.arange(3) < 2)
      >>> blocked = jax.jit(blocked_attention, static_argnames="block_size")(q, k, v, key_length=2, block_size=2)
      >>> bool(jnp.allclose(blocked, reference, atol=1e-5))
      True
    """
    num_queries, num_keys = query.shape[-3], key.shape[-3]
    num_blocks = -(-num_keys // block_size)
    pad = num_blocks * block_size - num_keys
    key_length = jnp.broadcast_to(num_keys if key_length is None else key_length, query.shape[:-3])
    widths = [(0, 0)] * (key.ndim - 3) + [(0, pad), (0, 0), (0, 0)]
    key, value = jnp.pad(key, widths), jnp.pad(value, widths)

    def blocks(x):  # (..., nb·B, N, d) -> (nb, ..., B, N, d)
        x = x.reshape(x.shape[:-3] + (num_blocks, block_size) + x.shape[-2:])
        return jnp.moveaxis(x, -4, 0)

    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    batch = query.shape[:-3]
    heads = query.shape[-2]

    @jax.checkpoint
    def step(carry, block):
        row_max, total, acc = carry  # (..., N, Tq), (..., N, Tq), (..., Tq, N, d_v) float32
        k, v, start = block
        logits = jnp.einsum("...qnd,...knd->...nqk", query, k).astype(jnp.float32) * scale
        if bias_fn is not None:
            logits = logits + bias_fn(start + jnp.arange(block_size)).astype(jnp.float32)
        allowed = attention_mask(num_queries, block_size, key_length, causal, start)
        logits = jnp.where(allowed, logits, -jnp.inf)
        new_max = jnp.maximum(row_max, jnp.max(logits, axis=-1))
        safe_max = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        p = jnp.exp(logits - safe_max[..., None])  # exactly 0 where not allowed
        correction = jnp.exp(row_max - safe_max)  # 0 while row_max = −∞
        total = total * correction + jnp.sum(p, axis=-1)
        update = jnp.einsum("...nqk,...knd->...qnd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        acc = acc * jnp.swapaxes(correction, -1, -2)[..., None] + update
        return (new_max, total, acc), None

    init = (jnp.full(batch + (heads, num_queries), -jnp.inf, jnp.float32), jnp.zeros(batch + (heads, num_queries), jnp.float32),
            jnp.zeros(batch + (num_queries, heads, value.shape[-1]), jnp.float32))
    starts = jnp.arange(num_blocks) * block_size
    (_, total, acc), _ = jax.lax.scan(step, init, (blocks(key), blocks(value), starts))
    total = jnp.swapaxes(total, -1, -2)[..., None]  # (..., Tq, N, 1)
    return (acc / jnp.where(total > 0, total, 1.0)).astype(value.dtype)


def _identity(params, keys):
    return keys


def _project_keys(params, keys):
    return keys @ params["w_key"]


def dot_score(params: dict, query: Float[Array, " Q"], keys: Float[Array, "S Q"]) -> Float[Array, " S"]:
    """Dot score e_j = qᵀ k_j (Luong et al. 2015, eq. 8, "dot"). Needs Q = K; no parameters.

    Examples:
      >>> import jax.numpy as jnp
      >>> dot_score({}, jnp.array([1.0, 2.0]), jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])).tolist()
      [1.0, 2.0, 3.0]
    """
    return keys @ query


def general_score(params: dict, query: Float[Array, " Q"], keys: Float[Array, "S K"]) -> Float[Array, " S"]:
    """General (bilinear) score e_j = qᵀ W k_j (Luong et al. 2015, eq. 8, "general").

    Computed as (qᵀ W) k_j: one (Q, K) product per query, none per key. ``params["w"]``: (Q, K).
    """
    return keys @ (query @ params["w"])


def additive_score(params: dict, query: Float[Array, " Q"], keys_proj: Float[Array, "S A"]) -> Float[Array, " S"]:
    """Additive (concat) score e_j = vᵀ tanh(W_q q + W_k k_j), i.e. vᵀ tanh(W [q; k_j]) with
    W = [W_q W_k] (Bahdanau et al. 2015, eq. 6 and appendix A.1.2, where W_q, W_k, v are
    W_a, U_a, v_a; Luong et al. 2015, eq. 8, "concat").

    Args:
      params: ``w_query`` (Q, A), ``w_key`` (K, A), ``v`` (A,).
      query: (Q,). keys_proj: W_k k_j (S, A) from ``project_keys``.
    """
    return jnp.tanh(keys_proj + (query @ params["w_query"])[None, :]) @ params["v"]


def scaled_dot_score(params: dict, query: Float[Array, " Q"], keys_proj: Float[Array, "S A"]) -> Float[Array, " S"]:
    """Scaled dot-product score with learned projections, e_j = (W_Q q)ᵀ (W_K k_j) / √A
    (Vaswani et al. 2017, eq. 1, with q = W_Q s and k_j = W_K h_j).

    Args:
      params: ``w_query`` (Q, A), ``w_key`` (K, A). keys_proj: W_K k_j (S, A).
    """
    return keys_proj @ (query @ params["w_query"]) / math.sqrt(keys_proj.shape[-1])


def cosine_score(params: dict, query: Float[Array, " Q"], keys: Float[Array, "S Q"]) -> Float[Array, " S"]:
    """Cosine similarity scaled by a learned key strength β > 0 (Graves et al. 2014, Neural
    Turing Machines, eq. 5-6): e_j = β qᵀ k_j / (‖q‖ ‖k_j‖), β = exp(``params["log_beta"]``).

    The cosine lies in [−1, 1], so softmax over it alone is nearly uniform; β sets how sharp the
    attention may get. It is learned rather than fixed because the right sharpness changes with
    sentence length and during training; it starts at β = 10 (logit range 20). Needs Q = K;
    a zero vector counts as norm 1e-6.
    """
    q = query * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(query)), 1e-12))  # no 0/0 gradient at 0
    k = keys * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(keys), axis=-1, keepdims=True), 1e-12))
    return jnp.exp(params["log_beta"]) * (k @ q)


def mlp_score(params: dict, query: Float[Array, " Q"], keys_proj: Float[Array, "S A"]) -> Float[Array, " S"]:
    """Two-hidden-layer perceptron on [q; k_j], generalising the additive score's single tanh
    layer: e_j = vᵀ ReLU(W_2 ReLU(W_q q + W_k k_j + b_1) + b_2).

    Costs S·A² per query on top of the additive score's S·A.

    Args:
      params: ``w_query`` (Q, A), ``w_key`` (K, A), ``b_1`` (A,), ``w_2`` (A, A), ``b_2`` (A,), ``v`` (A,).
      keys_proj: W_k k_j (S, A).
    """
    hidden = jax.nn.relu(keys_proj + (query @ params["w_query"] + params["b_1"])[None, :])
    hidden = jax.nn.relu(hidden @ params["w_2"] + params["b_2"][None, :])
    return hidden @ params["v"]


class Score(NamedTuple):
    """A score function with its parameter initialiser and its query-independent key projection."""

    init: Callable  # (key, query_dim, key_dim, attention_dim) -> params dict
    project_keys: Callable  # (params, keys (S, K)) -> (S, K')
    score: Callable  # (params, query (Q,), projected keys (S, K')) -> logits (S,)


def _same_width(name):
    def check(query_dim, key_dim):
        if query_dim != key_dim:
            raise ValueError(f"the {name} score needs query and key of one width, got {query_dim} and {key_dim}")

    return check


def _init_dot(key, query_dim, key_dim, attention_dim):
    _same_width("dot")(query_dim, key_dim)
    return {}


def _init_general(key, query_dim, key_dim, attention_dim):
    return {"w": jax.nn.initializers.glorot_uniform()(key, (query_dim, key_dim))}


def _init_additive(key, query_dim, key_dim, attention_dim):
    k1, k2, k3 = jax.random.split(key, 3)
    glorot = jax.nn.initializers.glorot_uniform()
    return {"w_query": glorot(k1, (query_dim, attention_dim)), "w_key": glorot(k2, (key_dim, attention_dim)),
            "v": jax.nn.initializers.normal(0.01)(k3, (attention_dim,))}


def _init_scaled_dot(key, query_dim, key_dim, attention_dim):
    k1, k2 = jax.random.split(key)
    glorot = jax.nn.initializers.glorot_uniform()
    return {"w_query": glorot(k1, (query_dim, attention_dim)), "w_key": glorot(k2, (key_dim, attention_dim))}


def _init_cosine(key, query_dim, key_dim, attention_dim):
    _same_width("cosine")(query_dim, key_dim)
    return {"log_beta": jnp.full((), math.log(10.0))}


def _init_mlp(key, query_dim, key_dim, attention_dim):
    k1, k2 = jax.random.split(key)
    params = _init_additive(k1, query_dim, key_dim, attention_dim)
    params.update(b_1=jnp.zeros((attention_dim,)), b_2=jnp.zeros((attention_dim,)),
                  w_2=jax.nn.initializers.he_uniform()(k2, (attention_dim, attention_dim)))
    return params


SCORES: dict[str, Score] = {
    "additive": Score(_init_additive, _project_keys, additive_score),
    "dot": Score(_init_dot, _identity, dot_score),
    "general": Score(_init_general, _identity, general_score),
    "scaled_dot": Score(_init_scaled_dot, _project_keys, scaled_dot_score),
    "cosine": Score(_init_cosine, _identity, cosine_score),
    "mlp": Score(_init_mlp, _project_keys, mlp_score),
}


def get_score(name: str) -> Score:
    """The registered score ``name`` (one of :data:`SCORES`).

    Raises:
      ValueError: an unknown name; the message names the choices.

    Examples:
      The additive score of a query of width 4 over 5 keys of width 6, attention width 8:

      >>> import jax, jax.numpy as jnp
      >>> score = get_score("additive")
      >>> params = score.init(jax.random.key(0), 4, 6, 8)
      >>> keys = score.project_keys(params, jnp.ones((5, 6)))  # once per sentence, outside the decoder's loop
      >>> score.score(params, jnp.ones(4), keys).shape
      (5,)
    """
    if name not in SCORES:
        raise ValueError(f"unknown attention score {name!r}; choose from {', '.join(sorted(SCORES))}")
    return SCORES[name]
