"""Positional information for attention, which by itself is blind to word order.

Absolute encodings are added to the embeddings: sinusoidal (Vaswani et al. 2017, section 3.5)
or a learned table (Gehring et al. 2017). Relative ones act inside self-attention: relative
position representations (Shaw et al. 2018), rotary embeddings (RoPE, Su et al. 2021) and
linear biases (ALiBi, Press et al. 2022). Every function takes explicit integer positions, so the
same code serves a whole sentence and one decoding step at position t.

Shapes: T positions, Tq queries, Tk keys, N heads, d width (d_model or d_head).
"""

import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Float32, Int, Int32

LAYOUTS = ("interleaved", "concat")


def sinusoidal(positions: Int[ArrayLike, " T"], dim: int, layout: str = "interleaved",
               base: float = 10000.0) -> Float32[Array, "T d"]:
    """Sinusoidal position encodings (Vaswani et al. 2017, section 3.5):

        PE(pos, 2i) = sin(pos / base^{2i/d}),   PE(pos, 2i+1) = cos(pos / base^{2i/d})

    ``layout="interleaved"`` places them as in the formula (sin, cos, sin, cos, ...);
    ``"concat"`` puts all sines first, then all cosines (tensor2tensor's and fairseq's layout).
    The two are permutations of each other.

    Args:
      positions: int (T,). dim: d, even. layout: "interleaved" or "concat". base: 10000 in the paper.

    Returns:
      float32 (T, d).

    Raises:
      ValueError: odd ``dim`` or unknown ``layout``.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal encodings need an even width, got {dim}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    inv_freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # (d/2,)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # (T, d/2)
    if layout == "concat":
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(positions.shape[0], dim)


def relative_positions(query_positions: Int[ArrayLike, " Tq"], key_positions: Int[ArrayLike, " Tk"],
                       max_distance: int) -> Int32[Array, "Tq Tk"]:
    """Indices of Shaw et al.'s (2018, eq. 3-4) clipped relative positions:

        idx(i, j) = clip(j − i, −k, k) + k ∈ [0, 2k]

    Args:
      query_positions: int (Tq,). key_positions: int (Tk,). max_distance: k.

    Returns:
      int32 (Tq, Tk), rows of the (2k+1, d) tables of :func:`relative_logits` and :func:`relative_values`.
    """
    offset = key_positions[None, :] - query_positions[:, None]
    return (jnp.clip(offset, -max_distance, max_distance) + max_distance).astype(jnp.int32)


def relative_logits(query: Float[Array, "Tq N d"], table: Float[Array, "R d"],
                    indices: Int[Array, "Tq Tk"]) -> Float[Array, "N Tq Tk"]:
    """The key-side term of Shaw et al. (2018, eq. 5): q_i · a^K_ij, scaled like the logits,

        bias[n, i, j] = q_{i,n} · a^K[idx(i, j)] / √d

    Args:
      query: float (Tq, N, d). table: a^K, float (2k+1, d). indices: int (Tq, Tk) from
        :func:`relative_positions`.

    Returns:
      float (N, Tq, Tk): add to the logits of
      :func:`zoo.functional.attention.scaled_dot_product_attention` as ``bias``.
    """
    return jnp.einsum("qnd,qkd->nqk", query, table[indices]) / math.sqrt(query.shape[-1])


def relative_values(weights: Float[Array, "N Tq Tk"], table: Float[Array, "R d"],
                    indices: Int[Array, "Tq Tk"]) -> Float[Array, "Tq N d"]:
    """The value-side term of Shaw et al. (2018, eq. 3): Σ_j α_ij a^V_ij.

    Args:
      weights: α, float (N, Tq, Tk). table: a^V, float (2k+1, d). indices: int (Tq, Tk).

    Returns:
      float (Tq, N, d): add to the attention output.
    """
    return jnp.einsum("nqk,qkd->qnd", weights, table[indices])


def rotary(x: Float[Array, "T *heads d"], positions: Int[ArrayLike, " T"], base: float = 10000.0) -> Float[Array, "T *heads d"]:
    """Rotary position embedding (RoPE, Su et al. 2021, eq. 34): each pair (x_{2i}, x_{2i+1}) of
    the vector at position m is rotated by the angle m θ_i, θ_i = base^{−2i/d}:

        (x_{2i}, x_{2i+1}) ↦ (x_{2i} cos mθ_i − x_{2i+1} sin mθ_i,  x_{2i} sin mθ_i + x_{2i+1} cos mθ_i)

    Applied to queries and keys, q_mᵀ k_n then depends on the positions only through n − m.

    Args:
      x: float (T, N, d) or (T, d), d even. positions: int (T,). base: 10000 in the paper.

    Returns:
      float like ``x``.

    Raises:
      ValueError: odd width.
    """
    dim = x.shape[-1]
    if dim % 2:
        raise ValueError(f"rotary embeddings need an even width, got {dim}")
    inv_freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # (d/2,)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # (T, d/2)
    angles = angles.reshape(angles.shape[:1] + (1,) * (x.ndim - 2) + angles.shape[1:])
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    pairs = x.reshape(x.shape[:-1] + (dim // 2, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1).reshape(x.shape)


def alibi_slopes(num_heads: int) -> Float32[Array, " N"]:
    """ALiBi's head-specific slopes (Press et al. 2022, section 3): for N a power of two, the
    geometric sequence m_h = 2^{−8h/N}, h = 1..N (1/2, 1/4, ..., 1/256 for 8 heads). Otherwise
    the slopes of the closest smaller power of two 2^a, then every other slope of 2^{a+1} (the
    paper's code).

    Returns:
      float32 (N,).
    """
    def powers(n):
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = powers(closest) + powers(2 * closest)[0::2][: num_heads - closest]
    return jnp.asarray(slopes, jnp.float32)


def alibi_bias(slopes: Float[Array, " N"], query_positions: Int[ArrayLike, " Tq"],
               key_positions: Int[ArrayLike, " Tk"]) -> Float32[Array, "N Tq Tk"]:
    """ALiBi (Press et al. 2022, eq. in section 3): a penalty linear in the distance::

        bias[h, i, j] = −m_h · |i − j|

    which equals the paper's m_h · (j − i) on the causal (j <= i) part; the absolute value makes
    it symmetric for encoders, which read both directions.

    Args:
      slopes: float (N,) from :func:`alibi_slopes`. query_positions: int (Tq,). key_positions: int (Tk,).

    Returns:
      float32 (N, Tq, Tk): the ``bias`` of :func:`zoo.functional.attention.scaled_dot_product_attention`.
    """
    distance = jnp.abs(query_positions[:, None] - key_positions[None, :]).astype(jnp.float32)
    return -slopes[:, None, None] * distance[None]
