"""Properties shared by every recurrent seq2seq model of the zoo, on tiny configurations.

For each configuration: step-by-step decoding reproduces teacher forcing, padding changes
nothing, gradients are finite and non-zero (with and without dropout), attention rows are
distributions over the real source positions, and the evaluation counts show the cost: m·t
scores for an attention decoder over m source and t target steps (t·(2D + 1) for local attention
with its window of D), O(m + t) recurrent steps and no score for the models without attention.

Everything runs under ``jax.disable_jit()``, gradients included: ``lax.scan`` then runs as a
Python loop of cached single-op programs, far cheaper on a small CPU than compiling a forward and
a backward program for each of 18 configurations. Each configuration's forward passes, counts and
gradients are computed once (:func:`_run`) and shared by its tests: the counted teacher-forced
runs are the unpadded and garbage-read passes, the gradient's forward pass the padded one.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import FAST_COMPILE
from flax import nnx

from zoo import models
from zoo.data.vocab import BOS_ID
from zoo.decoding import greedy
from zoo.functional.counting import count_evaluations
from zoo.functional.masks import reverse_padded

SRC_V, TGT_V, E, H = 11, 13, 8, 16
# A = H and 2L = H: fewer distinct shapes, hence fewer single-op programs to compile.
SMALL = {"attention_dim": H}  # the projected scores' width A (default 512)
ONE = {"num_layers": 1, **SMALL}  # Luong variants: one layer (luong-general keeps the default two)

CONFIGS = {
    "sutskever": ("sutskever", {}),
    "sutskever-forward": ("sutskever", {"reverse_source": False}),
    "cho": ("cho", {"maxout_dim": 8}),
    "cho-reset-after": ("cho", {"maxout_dim": 8, "reset_after": True}),
    "bahdanau": ("bahdanau", {"maxout_dim": 8, **SMALL}),
    "bahdanau-hard": ("bahdanau", {"maxout_dim": 8, "hard_attention": True, **SMALL}),
    "luong-general": ("luong", {"score": "general", **SMALL}),
    **{f"luong-{s}": ("luong", {"score": s, **ONE}) for s in ("dot", "scaled_dot", "cosine", "mlp", "additive")},
    "luong-local-m": ("luong", {"attention": "local-m", "window": 1, **ONE}),
    "luong-local-p": ("luong", {"attention": "local-p", "window": 1, **ONE}),
    "luong-no-input-feeding": ("luong", {"input_feeding": False, **ONE}),
    "luong-hard": ("luong", {"hard_attention": True, **ONE}),
    "luong-brnn": ("luong", {"bidirectional_encoder": True, **ONE}),
    "luong-zeros": ("luong", {"decoder_init": "zeros", **ONE}),
}
NAMES = list(CONFIGS)

L = 3  # real source tokens
SRC = np.array([5, 7, 9], np.int32)
SRC_PADDED = np.array([5, 7, 9, 10, 10], np.int32)  # garbage (non-<pad>) ids after src_length
TGT_IN = np.array([BOS_ID, 4, 8], np.int32)
TGT_OUT = np.array([4, 8, 3], np.int32)
TGT_LONG = np.array([BOS_ID, 4, 8, 6, 11], np.int32)  # as long as SRC_PADDED: no new shapes


# the tests of a configuration share _run's cache: one xdist worker runs them all (tests/conftest.py)
pytestmark = pytest.mark.xdist_group("tests/test_recurrent_models.py")


@functools.cache
def _model(name):
    model_name, extra = CONFIGS[name]
    return models.build(model_name, src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, embed_dim=E, hidden_dim=H, **extra)


def _i32(a):
    return jnp.asarray(a, jnp.int32)


PAIRS = [(3, 3), (5, 3), (3, 5)]  # (m source tokens, t target steps) of the counted runs


class Run(NamedTuple):
    """What the per-configuration tests read, computed once per configuration (see :func:`_run`)."""

    unpadded: tuple  # teacher-forced (logits, weights) on SRC with src_length L
    padded: tuple  # ... on SRC_PADDED with src_length L (garbage ids after it)
    garbage_read: tuple  # ... on SRC_PADDED with its garbage counted as real tokens
    counts: list  # per pair of PAIRS: (m, t, teacher-forced counts, greedy counts)
    grads: list  # of the NLL on SRC_PADDED, TGT_OUT: without a key, with one (dropout on)


@functools.cache
def _run(name):
    """The forward passes, evaluation counts and gradients of configuration ``name``, eagerly.

    The counted teacher-forced runs of the first two pairs are the unpadded and the garbage-read
    forward passes; the forward pass of the gradient without a key is the padded one."""
    model = _model(name)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, key):
        logits, weights = nnx.merge(graphdef, p, rest)(_i32(SRC_PADDED), jnp.int32(L), _i32(TGT_IN), key)
        nll = -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), _i32(TGT_OUT)[:, None], axis=-1))
        return nll, (logits, weights)

    inputs = [(SRC, TGT_IN), (SRC_PADDED, TGT_IN), (SRC, TGT_LONG)]
    counts, forced_outputs = [], []
    with jax.disable_jit():  # un-jitted: every score and recurrent step is recorded as it runs
        for (m, t), (src, tgt) in zip(PAIRS, inputs, strict=True):
            assert (len(src), len(tgt)) == (m, t)
            with count_evaluations() as forced:
                forced_outputs.append(tuple(np.asarray(a) for a in model(_i32(src), jnp.int32(m), _i32(tgt))))
            with count_evaluations() as free:
                greedy(model, model.encode(_i32(src), jnp.int32(m)), t)
            counts.append((m, t, forced, free))
        (_, padded), grads = jax.value_and_grad(loss, has_aux=True)(params, None)
        grads_key, _ = jax.grad(loss, has_aux=True)(params, jax.random.key(0))
    return Run(unpadded=forced_outputs[0], padded=tuple(np.asarray(a) for a in padded), garbage_read=forced_outputs[1],
               counts=counts, grads=[nnx.to_pure_dict(g) for g in (grads, grads_key)])


@pytest.mark.parametrize("name", NAMES)
def test_decode_step_reproduces_teacher_forcing(name):
    model = _model(name)
    logits_tf, weights_tf = _run(name).padded
    assert logits_tf.shape == (len(TGT_IN), TGT_V) and weights_tf.shape == (len(TGT_IN), len(SRC_PADDED))
    assert np.all(np.isfinite(logits_tf))
    with jax.disable_jit():
        memory = model.encode(_i32(SRC_PADDED), jnp.int32(L))
        state = model.initial_decoder_state(memory)
        for t, y_prev in enumerate(TGT_IN):
            state, logits, weights = model.decode_step(memory, state, jnp.int32(y_prev))
            np.testing.assert_allclose(logits, logits_tf[t], rtol=0, atol=1e-5)
            np.testing.assert_allclose(weights, weights_tf[t], rtol=0, atol=1e-6)
        # sanity: the step does read its input token
        _, other, _ = model.decode_step(memory, model.initial_decoder_state(memory), jnp.int32(TGT_IN[0] + 1))
    assert np.abs(np.asarray(other) - logits_tf[0]).max() > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_source_padding_changes_nothing(name):
    run = _run(name)
    (logits, weights), (logits_pad, weights_pad), (logits_read, _) = run.unpadded, run.padded, run.garbage_read
    np.testing.assert_allclose(logits_pad, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(weights_pad[:, :L], weights, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(weights_pad[:, L:], 0.0)
    assert np.abs(logits_read - logits).max() > 1e-4  # sanity: the garbage matters once it is read


@pytest.mark.parametrize("name", NAMES)
def test_attention_rows(name):
    model = _model(name)
    _, weights = _run(name).padded
    real = weights[:, :L]
    np.testing.assert_array_equal(weights[:, L:], 0.0)  # padding: exactly zero
    if not model.has_attention:
        np.testing.assert_array_equal(weights, 0.0)
        return
    assert np.all(real >= 0)
    cfg = model.config
    if getattr(cfg, "attention", "global") == "local-p":  # Gaussian-weighted: sums to at most 1
        assert np.all(real.sum(-1) <= 1.0 + 1e-6) and np.all(real.sum(-1) > 0)
        return
    np.testing.assert_allclose(real.sum(-1), 1.0, rtol=0, atol=1e-6)
    if cfg.hard_attention:  # one-hot rows
        assert set(np.unique(real)) <= {0.0, 1.0}
    if getattr(cfg, "attention", "global") == "local-m":  # p_t = min(t, S - 1); zero outside |s - p_t| <= D
        s, t = np.arange(len(SRC_PADDED)), np.arange(len(TGT_IN))[:, None]
        outside = np.abs(s - np.minimum(t, L - 1)) > cfg.window
        assert outside[:, :L].any()  # the window does exclude real positions here
        np.testing.assert_array_equal(weights[outside], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_and_nonzero_with_and_without_dropout(name):
    grads = _run(name).grads
    for g in grads:
        leaves = jax.tree.leaves(g)
        assert leaves and all(np.all(np.isfinite(x)) for x in leaves)
        assert sum(float(jnp.abs(x).sum()) for x in leaves) > 0
        # token 10 occurs only after src_length: its embedding gets exactly zero gradient
        src_embed = np.asarray(g["src_embed"]["embedding"])
        np.testing.assert_array_equal(src_embed[10], 0.0)
        assert np.abs(src_embed[SRC]).max() > 0
    # the key does switch dropout on (default rate 0.5)
    no_key, with_key = (jax.tree.leaves(g) for g in grads)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(no_key, with_key)) > 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_counts(name):
    """Teacher forcing and greedy decoding alike: m·t scores with attention (W·t, W = min(2D + 1, m),
    for local attention), and without it no score and layers·(m + t) recurrent steps."""
    model = _model(name)
    for m, t, forced, free in _run(name).counts:
        if model.has_attention:  # local attention: only its window's W = min(2D + 1, m) positions
            local = getattr(model.config, "attention", "global") != "global"
            per_step = min(2 * model.config.window + 1, m) if local else m
            assert forced["scores"] == per_step * t and free["scores"] == per_step * t, (m, t, forced, free)
        else:
            assert forced["scores"] == 0 and free["scores"] == 0
            layers = model.config.num_layers if name.startswith("sutskever") else 1
            assert forced["recurrent_steps"] == free["recurrent_steps"] == layers * (m + t), (m, t, forced, free)


def test_score_count_under_jit():
    model = _model("luong-dot")
    graphdef, state = nnx.split(model)
    m, t = 5, 3
    src, tgt = _i32(np.arange(4, 4 + m)), _i32(np.arange(2, 2 + t))
    with count_evaluations() as counts:  # traced inside the context: the scans count every iteration
        forward = jax.jit(lambda s: nnx.merge(graphdef, s)(src, jnp.int32(m), tgt), compiler_options=FAST_COMPILE)
        jax.block_until_ready(forward(state))
    assert counts["scores"] == m * t


def test_sutskever_reverse_source_reverses_the_real_tokens():
    reversed_model = _model("sutskever")
    graphdef, _ = nnx.split(_model("sutskever-forward"))
    forward_model = nnx.merge(graphdef, nnx.split(reversed_model)[1])  # same parameters, reverse_source False
    assert reversed_model.config.reverse_source and not forward_model.config.reverse_source
    src, n = _i32(SRC_PADDED), jnp.int32(L)
    with jax.disable_jit():
        a = reversed_model.encode(src, n).carries
        b = forward_model.encode(reverse_padded(src, n), n).carries
        c = forward_model.encode(src, n).carries
    np.testing.assert_array_equal(reverse_padded(src, n), [9, 7, 5, 10, 10])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    assert max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c))) > 1e-4


def test_luong_bidirectional_encoder_concatenates_the_two_directions():
    """h̄_s = [→h_s; ←h_s] with H/2 cells a direction; the decoder starts from [→h_L; ←h_1]."""
    model = _model("luong-brnn")
    with jax.disable_jit():
        memory = model.encode(_i32(SRC_PADDED), jnp.int32(L))
    states, ((h, c),) = np.asarray(memory.states), memory.carries
    half = H // 2
    assert states.shape == (len(SRC_PADDED), H) and h.shape == c.shape == (H,)
    np.testing.assert_array_equal(h, np.concatenate([states[L - 1, :half], states[0, half:]]))
    np.testing.assert_array_equal(states[L:], 0.0)
    assert np.abs(states[:L, :half] - states[:L, half:]).max() > 1e-3  # two directions, two sets of weights
    with pytest.raises(ValueError, match=r"LuongConfig.hidden_dim=15: .*must be even"):
        models.build("luong", hidden_dim=15, bidirectional_encoder=True)


@pytest.mark.parametrize(("name", "same"), [("luong-zeros", True), ("luong-no-input-feeding", False)])
def test_luong_decoder_init_zeros_hears_the_source_only_through_attention(name, same):
    """With zero initial carries the decoder's first carries are the same for every source."""
    model = _model(name)

    def first_carries(src):
        memory = model.encode(_i32(src), jnp.int32(L))
        (carries, _, _), _, _ = model.decode_step(memory, model.initial_decoder_state(memory), jnp.int32(BOS_ID))
        return jax.tree.leaves(carries)

    with jax.disable_jit():
        gap = max(float(jnp.abs(a - b).max()) for a, b in zip(first_carries(SRC), first_carries(SRC[::-1] + 1)))
    assert gap == 0.0 if same else gap > 1e-4
    with pytest.raises(ValueError, match="LuongConfig.decoder_init='last': must be one of encoder, zeros"):
        models.build("luong", decoder_init="last")
