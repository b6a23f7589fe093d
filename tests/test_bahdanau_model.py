"""End-to-end properties of the tiny RNNsearch model (one example, no batch axis), under the
strict dtype/rank promotion of conftest.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo import models

SRC_V, TGT_V, H = 11, 13, 8


@pytest.fixture(scope="module")
def model():
    return models.build(
        "bahdanau", src_vocab_size=SRC_V, tgt_vocab_size=TGT_V,
        embed_dim=8, hidden_dim=H, attention_dim=8, maxout_dim=8,
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(graphdef, method, state, *args):
    """``model.<method>(*args)`` under one jit (eager calls would compile every scan anew)."""
    return getattr(nnx.merge(graphdef, state), method)(*args)


def forward(model, src, src_length, tgt_in):
    """Teacher-forced ``model(src, src_length, tgt_in)`` -> (logits (T, V), weights (T, S))."""
    graphdef, state = nnx.split(model)
    return _apply(graphdef, "__call__", state, jnp.asarray(src, jnp.int32), jnp.int32(src_length),
                  jnp.asarray(tgt_in, jnp.int32))


def encode(model, src, src_length):
    graphdef, state = nnx.split(model)
    return _apply(graphdef, "encode", state, jnp.asarray(src, jnp.int32), jnp.int32(src_length))


SRC = [3, 7, 5, 9, 0, 0, 0, 0]  # 4 real tokens, <pad> = 0
SRC_LEN = 4
TGT_IN = [1, 4, 8, 2, 6]  # [<bos>, y1, ...]


def test_forward_shapes_and_attention_rows(model):
    logits, weights = forward(model, SRC, SRC_LEN, TGT_IN)
    assert logits.shape == (len(TGT_IN), TGT_V) and logits.dtype == jnp.float32
    assert weights.shape == (len(TGT_IN), len(SRC))
    assert np.all(np.isfinite(logits))
    np.testing.assert_allclose(weights.sum(-1), np.ones(len(TGT_IN)), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(weights[:, SRC_LEN:], 0.0)
    assert np.all(np.asarray(weights[:, :SRC_LEN]) > 0)


def test_padding_invariance(model):
    real = SRC[:SRC_LEN]
    logits_ref, w_ref = forward(model, real, SRC_LEN, TGT_IN)  # unpadded
    garbage = real + [10, 1, 6, 2]  # non-pad ids beyond src_length
    # extra <pad> ids, and garbage beyond src_length (same padded length: one compilation)
    for src in (SRC, garbage):
        logits, w = forward(model, src, SRC_LEN, TGT_IN)
        np.testing.assert_allclose(logits, logits_ref, rtol=0, atol=1e-6)
        np.testing.assert_allclose(w[:, :SRC_LEN], w_ref, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(w[:, SRC_LEN:], 0.0)
    # sanity: treating the garbage as real tokens changes the logits
    logits_long, _ = forward(model, garbage, len(garbage), TGT_IN)
    assert np.abs(np.asarray(logits_long - logits_ref)).max() > 1e-4


def test_decode_step_reproduces_teacher_forcing(model):
    logits_tf, weights_tf = forward(model, SRC, SRC_LEN, TGT_IN)
    memory = encode(model, SRC, SRC_LEN)
    state = model.initial_decoder_state(memory)
    np.testing.assert_array_equal(state.shape, (H,))
    for t, y_prev in enumerate(TGT_IN):
        state, logits, weights = model.decode_step(memory, state, jnp.int32(y_prev))
        assert logits.shape == (TGT_V,)
        np.testing.assert_allclose(logits, logits_tf[t], rtol=0, atol=1e-5)
        np.testing.assert_allclose(weights, weights_tf[t], rtol=0, atol=1e-6)
    # sanity: the logits do depend on the previous token
    _, other, _ = model.decode_step(memory, model.initial_decoder_state(memory), jnp.int32(TGT_IN[0] + 1))
    assert np.abs(np.asarray(other - logits_tf[0])).max() > 1e-4


def test_gradient_is_finite_and_ignores_padding(model):
    # Token 10 occurs only beyond src_length: its embedding row must get exactly zero gradient.
    src = jnp.array([3, 7, 5, 9, 10, 10, 10, 10], jnp.int32)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        logits, _ = nnx.merge(graphdef, p, rest)(src, jnp.int32(SRC_LEN), jnp.array(TGT_IN, jnp.int32))
        return jnp.sum(logits)

    grads = nnx.to_pure_dict(jax.jit(jax.grad(loss))(params))
    leaves = jax.tree.leaves(grads)
    assert leaves and all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
    src_emb = np.asarray(grads["src_embed"]["embedding"])
    assert src_emb.shape == (SRC_V, 8)
    np.testing.assert_array_equal(src_emb[10], 0.0)
    assert np.abs(src_emb[3]).max() > 0  # a real token does get gradient
    np.testing.assert_array_equal(src_emb[0], 0.0)  # <pad> never read either (not in src here)
    assert np.abs(np.asarray(grads["encoder"]["backward"]["w_h"])).max() > 0


def test_encoder_directions_are_causal(model):
    src = np.array(SRC)
    changed = src.copy()
    changed[0] = 4
    a = np.asarray(encode(model, src, SRC_LEN).annotations)
    b = np.asarray(encode(model, changed, SRC_LEN).annotations)
    assert a.shape == (len(SRC), 2 * H)
    fwd_a, bwd_a, fwd_b, bwd_b = a[:, :H], a[:, H:], b[:, :H], b[:, H:]
    # backward half at j reads tokens >= j: unchanged for j >= 1, changed at j = 0
    np.testing.assert_allclose(bwd_b[1:], bwd_a[1:], rtol=0, atol=1e-7)
    assert np.abs(bwd_b[0] - bwd_a[0]).max() > 1e-4
    # forward half at j reads tokens <= j: changed at every real position
    assert np.all(np.abs(fwd_b[:SRC_LEN] - fwd_a[:SRC_LEN]).max(-1) > 1e-6)
    # annotations are zero at padding
    np.testing.assert_array_equal(a[SRC_LEN:], 0.0)
    # changing the last real token leaves the forward half before it unchanged
    last = src.copy()
    last[SRC_LEN - 1] = 2
    c = np.asarray(encode(model, last, SRC_LEN).annotations)
    np.testing.assert_allclose(c[:SRC_LEN - 1, :H], fwd_a[:SRC_LEN - 1], rtol=0, atol=1e-7)
    assert np.abs(c[SRC_LEN - 1, :H] - fwd_a[SRC_LEN - 1]).max() > 1e-4
