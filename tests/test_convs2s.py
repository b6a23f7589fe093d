"""The convolutions of zoo.functional.convolution and the ConvS2S model (Gehring et al. 2017),
on tiny sizes.

Forward passes of the model run under ``jax.disable_jit()`` (cached single-op programs); the
gradients are compiled with the fast-compile XLA options.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import FAST_COMPILE
from flax import nnx

import zoo
from zoo.data.vocab import BOS_ID
from zoo.functional.convolution import conv1d, glu
from zoo.models.convs2s import ConvS2S

SRC_V, TGT_V, E, H, LAYERS, K = 11, 13, 8, 16, 2, 3
L = 3  # real source tokens
SRC = np.array([5, 7, 9], np.int32)
SRC_PADDED = np.array([5, 7, 9, 10, 10], np.int32)  # garbage (non-<pad>) ids after src_length
TGT_IN = np.array([BOS_ID, 4, 8, 6], np.int32)
TGT_OUT = np.array([4, 8, 6, 3], np.int32)


def _i32(a):
    return jnp.asarray(a, jnp.int32)


def _np_conv(x, w, b, left, right):
    """Reference: zero-pad x (T, C) by ``left``/``right`` steps and cross-correlate, in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    xp = np.pad(x, ((left, right), (0, 0)))
    T, k = x.shape[0], w.shape[0]
    return np.stack([np.einsum("kc,kco->o", xp[t : t + k], w) for t in range(T)]) + np.asarray(b, np.float64)


# ---------------------------------------------------------------- functional


def test_glu_hand_values():
    x = jnp.array([[1.0, 2.0, 0.0, math.log(3.0)], [-4.0, 0.5, math.log(1 / 3), 0.0]])
    # A ⊗ σ(B): σ(0) = 1/2, σ(ln 3) = 3/4, σ(−ln 3) = 1/4
    np.testing.assert_allclose(glu(x), [[0.5, 1.5], [-1.0, 0.25]], rtol=1e-6)
    assert glu(jnp.zeros((2, 3, 6))).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="even"):
        glu(jnp.zeros((3,)))


def test_conv1d_same_matches_numpy_correlation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    for k in (1, 3, 5):
        w = rng.normal(size=(k, 3, 4)).astype(np.float32)
        b = rng.normal(size=(4,)).astype(np.float32)
        y = np.asarray(conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), "same"))
        # np.correlate(·, ·, "same") per input/output channel pair
        expected = b + sum(np.stack([np.correlate(x[:, c], w[:, c, o], "same") for o in range(4)], -1) for c in range(3))
        assert y.shape == (7, 4)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y, _np_conv(x, w, b, (k - 1) // 2, (k - 1) // 2), rtol=1e-5, atol=1e-5)


def test_conv1d_hand_values():
    x = jnp.array([[1.0], [2.0], [3.0]])  # (T=3, C_in=1)
    w = jnp.array([[[1.0]], [[10.0]], [[100.0]]])  # (k=3, 1, 1)
    b = jnp.array([0.5])
    # same: y_t = x_{t-1} + 10 x_t + 100 x_{t+1}
    np.testing.assert_allclose(conv1d(x, w, b, "same")[:, 0], [210.5, 321.5, 32.5])
    # causal: y_t = x_{t-2} + 10 x_{t-1} + 100 x_t
    np.testing.assert_allclose(conv1d(x, w, b, "causal")[:, 0], [100.5, 210.5, 321.5])


def test_conv1d_causal_reads_only_the_past():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    w, b = rng.normal(size=(4, 3, 2)).astype(np.float32), rng.normal(size=(2,)).astype(np.float32)  # even k is fine
    y = np.asarray(conv1d(jnp.asarray(x), jnp.asarray(w), jnp.asarray(b), "causal"))
    np.testing.assert_allclose(y, _np_conv(x, w, b, 3, 0), rtol=1e-5, atol=1e-5)
    for t in range(6):
        x2 = x.copy()
        x2[t] += 1.0
        y2 = np.asarray(conv1d(jnp.asarray(x2), jnp.asarray(w), jnp.asarray(b), "causal"))
        np.testing.assert_array_equal(y2[:t], y[:t])
        assert np.abs(y2[t] - y[t]).max() > 1e-3


def test_conv1d_raises():
    x, b = jnp.zeros((5, 2)), jnp.zeros((3,))
    with pytest.raises(ValueError, match="odd"):
        conv1d(x, jnp.zeros((2, 2, 3)), b, "same")
    with pytest.raises(ValueError, match="unknown padding"):
        conv1d(x, jnp.zeros((3, 2, 3)), b, "valid")


# ---------------------------------------------------------------- the model


@functools.cache
def _model(**extra):
    return zoo.build("convs2s", src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, embed_dim=E, hidden_dim=H,
                     num_encoder_layers=LAYERS, num_decoder_layers=LAYERS, kernel_size=K, max_length=16, **extra)


@functools.cache
def _teacher_forced():
    """Teacher-forced (logits, weights) on the unpadded source, the padded one, and the padded one
    with its garbage counted as real tokens."""
    model = _model()
    with jax.disable_jit():
        outs = [model(_i32(src), jnp.int32(n), _i32(TGT_IN), return_weights=True)
                for src, n in ((SRC, L), (SRC_PADDED, L), (SRC_PADDED, len(SRC_PADDED)))]
    return [tuple(np.asarray(a) for a in out) for out in outs]


def test_build_and_registry():
    assert "convs2s" in zoo.list_models()
    model = _model()
    assert isinstance(model, ConvS2S) and model.has_attention and model.config.hidden_dim == H
    # parameters: embeddings, in/out projections, convolutions (k·H·2H + 2H), attention (2 projections)
    embeddings = (SRC_V + TGT_V + 2 * 16) * E
    linears = 2 * (E * H + H) + 2 * (H * E + E) + E * TGT_V + TGT_V
    convs = 2 * LAYERS * (K * H * 2 * H + 2 * H)
    attention = LAYERS * (H * E + E + E * H + H)
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == embeddings + linears + convs + attention
    with pytest.raises(ValueError, match="^ConvS2SConfig.kernel_size=4: must be odd"):
        zoo.build("convs2s", kernel_size=4, embed_dim=E, hidden_dim=H)


def test_too_long_raises():
    model = _model()
    with pytest.raises(ValueError, match="max_length"):
        model.encode(_i32(np.full(17, 5)), jnp.int32(17))
    with pytest.raises(ValueError, match="max_length"):
        model(_i32(SRC), jnp.int32(L), _i32(np.full(17, 5)))


def test_decode_step_reproduces_teacher_forcing():
    model = _model()
    _, (logits_tf, weights_tf), _ = _teacher_forced()
    T, S = len(TGT_IN), len(SRC_PADDED)
    assert logits_tf.shape == (T, TGT_V) and weights_tf.shape == (T, LAYERS, 1, S)
    assert np.all(np.isfinite(logits_tf))
    with jax.disable_jit():
        memory = model.encode(_i32(SRC_PADDED), jnp.int32(L))
        assert memory.mask.shape == (S,) and memory.mask.dtype == bool
        state = model.initial_decoder_state(memory)
        assert state.buffer.shape == (LAYERS, K - 1, H)
        for t, y_prev in enumerate(TGT_IN):
            state, logits, weights = model.decode_step(memory, state, jnp.int32(y_prev))
            assert logits.shape == (TGT_V,) and weights.shape == (LAYERS, 1, S)
            np.testing.assert_allclose(logits, logits_tf[t], rtol=0, atol=1e-5)
            np.testing.assert_allclose(weights, weights_tf[t], rtol=0, atol=1e-6)
        assert int(state.step) == T
        # sanity: the step does read its input token; with a key, dropout runs and stays finite
        _, other, _ = model.decode_step(memory, model.initial_decoder_state(memory), jnp.int32(TGT_IN[0] + 1))
        _, dropped, _ = model.decode_step(memory, model.initial_decoder_state(memory), jnp.int32(TGT_IN[0]),
                                          jax.random.key(0))
    assert np.abs(np.asarray(other) - logits_tf[0]).max() > 1e-4
    assert np.all(np.isfinite(dropped)) and np.abs(np.asarray(dropped) - logits_tf[0]).max() > 1e-4


def test_later_targets_do_not_change_earlier_outputs():
    model = _model()
    _, (logits, weights), _ = _teacher_forced()
    changed = TGT_IN.copy()
    changed[2] = 11
    with jax.disable_jit():
        logits2, weights2 = (np.asarray(a) for a in model(_i32(SRC_PADDED), jnp.int32(L), _i32(changed), return_weights=True))
    np.testing.assert_array_equal(logits2[:2], logits[:2])
    np.testing.assert_array_equal(weights2[:2], weights[:2])
    assert np.abs(logits2[2:] - logits[2:]).max() > 1e-4


def test_source_padding_changes_nothing():
    (logits, weights), (logits_pad, weights_pad), (logits_read, _) = _teacher_forced()
    np.testing.assert_allclose(logits_pad, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(weights_pad[..., :L], weights, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(weights_pad[..., L:], 0.0)
    assert np.abs(logits_read - logits).max() > 1e-4  # sanity: the garbage matters once it is read


def test_attention_rows_are_distributions_over_real_positions():
    _, (_, weights), _ = _teacher_forced()
    real = weights[..., :L]
    np.testing.assert_array_equal(weights[..., L:], 0.0)
    assert np.all(real >= 0)
    np.testing.assert_allclose(real.sum(-1), 1.0, rtol=0, atol=1e-6)
    assert np.abs(weights[:, 0] - weights[:, 1]).max() > 1e-4  # each layer attends on its own


def test_gradients_finite_and_nonzero_with_and_without_dropout():
    model = _model()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, key):
        logits, _ = nnx.merge(graphdef, p, rest)(_i32(SRC_PADDED), jnp.int32(L), _i32(TGT_IN), key)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), _i32(TGT_OUT)[:, None], axis=-1))

    def both(p, key):
        return jax.grad(loss)(p, None), jax.grad(loss)(p, key)

    compiled = jax.jit(both).lower(params, jax.random.key(0)).compile(FAST_COMPILE)
    grads = [nnx.to_pure_dict(g) for g in compiled(params, jax.random.key(0))]
    for g in grads:
        for path, x in jax.tree_util.tree_leaves_with_path(g):
            x = np.asarray(x)
            assert np.all(np.isfinite(x)), path
            assert np.abs(x).max() > 0, path  # every parameter group receives a gradient
        # token 10 occurs only after src_length: its embedding gets exactly zero gradient
        src_embed = np.asarray(g["src_embed"]["embedding"])
        np.testing.assert_array_equal(src_embed[10], 0.0)
        assert np.abs(src_embed[SRC]).max() > 0
        np.testing.assert_array_equal(np.asarray(g["src_position"]["embedding"])[L:], 0.0)
    no_key, with_key = (jax.tree.leaves(g) for g in grads)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(no_key, with_key)) > 1e-6  # the key switches dropout on
