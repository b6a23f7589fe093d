"""Scaled dot-product and multi-head attention: hand-computed values, masks, and the three paths
(reference, fused ``jax.nn.dot_product_attention``, blocked online softmax) against each other."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import FAST_COMPILE
from flax import nnx

from zoo.functional.attention import blocked_attention, fused_attention, scaled_dot_product_attention
from zoo.functional.masks import attention_mask, length_mask
from zoo.nn import MultiHeadAttention


def test_scaled_dot_product_attention_by_hand():
    # one head, d_k = 2: logits [1/√2, 0], weights softmax, output Σ α_j v_j
    q = jnp.array([[[1.0, 0.0]]])  # (Tq=1, N=1, 2)
    k = jnp.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # (Tk=2, 1, 2)
    v = jnp.array([[[1.0, 2.0]], [[3.0, 4.0]]])
    out, weights = scaled_dot_product_attention(q, k, v)
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1.0)
    np.testing.assert_allclose(weights[0, 0], [a, 1 - a], rtol=1e-6)
    np.testing.assert_allclose(out[0, 0], [a * 1 + (1 - a) * 3, a * 2 + (1 - a) * 4], rtol=1e-6)


def test_bias_is_added_to_the_scaled_logits():
    q, k, v = jnp.ones((1, 1, 4)), jnp.ones((2, 1, 4)), jnp.array([[[0.0]], [[1.0]]])
    _, weights = scaled_dot_product_attention(q, k, v, bias=jnp.array([[[0.0, math.log(3.0)]]]))
    np.testing.assert_allclose(weights[0, 0], [0.25, 0.75], rtol=1e-6)  # equal logits, bias ln 3


def test_masks():
    np.testing.assert_array_equal(attention_mask(3, 3, causal=True), [[[1, 0, 0], [1, 1, 0], [1, 1, 1]]])
    np.testing.assert_array_equal(attention_mask(3, 3, 2, causal=True), [[[1, 0, 0], [1, 1, 0], [1, 1, 0]]])
    assert attention_mask(3, 3) is None
    # a batch of lengths (2,) -> (2, 1, Tq, Tk); keys 2..3 of a block starting at key 2
    by_length = attention_mask(2, 2, jnp.array([3, 4]), causal=True, key_offset=2)
    assert by_length.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(by_length[:, 0], [[[0, 0], [0, 0]], [[0, 0], [0, 0]]])  # queries 0, 1 < keys 2, 3
    np.testing.assert_array_equal(attention_mask(4, 2, jnp.array([3, 4]), key_offset=2)[:, 0, 0], [[1, 0], [1, 1]])


def _qkv(seed, tq=7, tk=7, heads=2, d=4, batch=()):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, batch + (tq, heads, d)), jax.random.normal(kk, batch + (tk, heads, d)),
            jax.random.normal(kv, batch + (tk, heads, d)))


def test_padding_and_causal_masks_give_exact_zeros_and_rows_sum_to_one():
    q, k, v = _qkv(0, tq=4, tk=4)
    mask = attention_mask(4, 4, 3, causal=True)  # (1, Tq, Tk)
    _, weights = scaled_dot_product_attention(q, k, v, mask)
    w = np.asarray(weights)
    np.testing.assert_array_equal(w[:, :, 3], 0.0)  # padding key
    np.testing.assert_array_equal(np.triu(w[0], 1), 0.0)  # the future
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def test_a_fully_masked_row_gives_zeros_not_nan_with_finite_gradients():
    q, k, v = _qkv(1, tq=2, tk=3)
    mask = jnp.array([[True, True, False], [False, False, False]])[None]  # query 1 reads nothing

    def loss(q, k, v):
        out, _ = scaled_dot_product_attention(q, k, v, mask)
        return jnp.sum(out**2)

    out, weights = scaled_dot_product_attention(q, k, v, mask)
    np.testing.assert_array_equal(weights[:, 1], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)
    for g in jax.grad(loss, argnums=(0, 1, 2))(q, k, v):
        assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(blocked_attention(q, k, v, 0, block_size=2), 0.0)  # no real key
    np.testing.assert_array_equal(fused_attention(q, k, v, 0), 0.0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_and_blocked_paths_equal_the_reference(causal, padded):
    q, k, v = _qkv(2, tq=13, tk=13, batch=(2,))
    lengths = jnp.array([13, 9]) if padded else jnp.array([13, 13])
    expected, _ = scaled_dot_product_attention(q, k, v, attention_mask(13, 13, lengths, causal))
    np.testing.assert_allclose(fused_attention(q, k, v, lengths, causal), expected, atol=1e-5)
    for block_size in (4, 13, 32):  # padded last block, one exact block, one block larger than Tk
        np.testing.assert_allclose(blocked_attention(q, k, v, lengths, causal, block_size=block_size), expected,
                                   atol=1e-5)


def test_blocked_attention_gradient_equals_the_reference():
    q, k, v = _qkv(3, tq=9, tk=11)
    key_mask = length_mask(8, 11)

    def loss(path):
        def f(q, k, v):
            return jnp.sum(jnp.sin(path(q, k, v)))
        return jax.grad(f, argnums=(0, 1, 2))

    def both(q, k, v):
        return (loss(lambda q, k, v: scaled_dot_product_attention(q, k, v, key_mask[None, None, :])[0])(q, k, v),
                loss(lambda q, k, v: blocked_attention(q, k, v, 8, block_size=4))(q, k, v))

    reference, blocked = jax.jit(both).lower(q, k, v).compile(FAST_COMPILE)(q, k, v)  # one program, not op by op
    for g_ref, g_blk in zip(reference, blocked):
        np.testing.assert_allclose(g_blk, g_ref, atol=1e-5)


def test_blocked_attention_memory_grows_linearly():
    def temp_bytes(path, n):
        q = jax.ShapeDtypeStruct((n, 1, 16), jnp.float32)
        return path.lower(q, q, q).compile(FAST_COMPILE).memory_analysis().temp_size_in_bytes

    blocked = jax.jit(lambda q, k, v: blocked_attention(q, k, v, block_size=64))
    reference = jax.jit(lambda q, k, v: scaled_dot_product_attention(q, k, v)[0])
    assert temp_bytes(blocked, 2048) < 2.5 * temp_bytes(blocked, 1024)  # linear: 2×
    assert temp_bytes(reference, 2048) > 3.5 * temp_bytes(reference, 1024)  # quadratic: 4×


def test_multi_head_attention_is_a_loop_over_heads_then_w_o():
    d_model, heads, d_head = 6, 3, 2
    mha = MultiHeadAttention(d_model, heads, rngs=nnx.Rngs(0))
    for name in ("b_query", "b_key", "b_value", "b_out"):  # non-zero biases, so they are checked too
        p = getattr(mha, name)
        p[...] = jax.random.normal(jax.random.key(len(name)), p.shape)
    assert mha.w_out.shape == (heads * d_head, d_model)
    x = np.asarray(jax.random.normal(jax.random.key(1), (4, d_model)))
    memory = np.asarray(jax.random.normal(jax.random.key(2), (5, d_model)))
    mask = np.array([True, True, True, True, False])  # the last key is padding
    out, weights = mha(jnp.asarray(x), jnp.asarray(memory), 4, return_weights=True)

    w = {name: np.asarray(getattr(mha, name)[...]) for name in ("w_query", "w_key", "w_value", "w_out",
                                                                 "b_query", "b_key", "b_value", "b_out")}
    head_outputs = []
    for n in range(heads):
        cols = slice(n * d_head, (n + 1) * d_head)
        q = x @ w["w_query"][:, cols] + w["b_query"][cols]
        k = memory @ w["w_key"][:, cols] + w["b_key"][cols]
        v = memory @ w["w_value"][:, cols] + w["b_value"][cols]
        logits = np.where(mask, q @ k.T / np.sqrt(d_head), -np.inf)
        alpha = np.exp(logits - logits.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        np.testing.assert_allclose(weights[n], alpha, atol=1e-6)
        head_outputs.append(alpha @ v)
    expected = np.concatenate(head_outputs, axis=-1) @ w["w_out"] + w["b_out"]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_multi_head_attention_refuses_indivisible_widths():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=4"):
        MultiHeadAttention(10, 4, rngs=nnx.Rngs(0))
