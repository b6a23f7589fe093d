"""The Transformer on tiny configurations: every positional encoding, pre-LN and post-LN, shared
and separate embeddings.

For each: cached step-by-step decoding reproduces teacher forcing, the decoder ignores the
future bit for bit, source padding changes nothing, attention rows are distributions over the
real source positions for every layer and head, and gradients are finite and non-zero. Forward
passes run eagerly (``jax.disable_jit()``): cheaper than compiling each tiny model, and the
padded source has the target's length, so that most single-op programs serve both. Checks with
nothing layer-specific compile a 1-layer model (``ONE_LAYER``).
"""

import functools
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_paths import assert_paths_equal_reference, mean_loss, padded_batch, stub_cudnn
from compile_options import FAST_COMPILE
from flax import nnx

from zoo import models
from zoo.config import Positional, TrainConfig
from zoo.data.vocab import BOS_ID
from zoo.decoding import beam_search, greedy
from zoo.loss import example_nll
from zoo.training import init_state, learning_rate_schedule, make_optimizer, make_train_step

SRC_V, TGT_V, LAYERS, HEADS = 11, 13, 2, 2
POSITIONAL = typing.get_args(Positional)
TINY = dict(src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, d_model=8, num_heads=HEADS, d_ff=16, num_encoder_layers=LAYERS,
            num_decoder_layers=LAYERS, max_length=8, max_relative_position=2)
ONE_LAYER = {**TINY, "num_encoder_layers": 1, "num_decoder_layers": 1}
CONFIGS = {
    **{pos: {"positional": pos} for pos in POSITIONAL},
    "post-ln": {"norm": "post"},
    "separate-embeddings": {"share_embeddings": False},
}
NAMES = list(CONFIGS)

L = 3
SRC = np.array([5, 7, 9], np.int32)
SRC_PADDED = np.array([5, 7, 9, 10], np.int32)  # a garbage (non-<pad>) id after src_length
TGT_IN = np.array([BOS_ID, 4, 8, 6], np.int32)


@functools.cache
def _model(name, sizes="TINY"):
    return models.build("transformer", **{"TINY": TINY, "ONE_LAYER": ONE_LAYER}[sizes], **CONFIGS[name])


def _i32(a):
    return jnp.asarray(a, jnp.int32)


@functools.cache
def _teacher_forced(name):
    """(logits, weights) on the unpadded and the padded source."""
    model = _model(name)
    with jax.disable_jit():
        outs = [model(_i32(src), jnp.int32(L), _i32(TGT_IN), return_weights=True) for src in (SRC, SRC_PADDED)]
    return [tuple(np.asarray(a) for a in out) for out in outs]


@pytest.mark.parametrize("name", NAMES)
def test_cached_decoding_reproduces_teacher_forcing(name):
    model = _model(name)
    _, (logits_tf, weights_tf) = _teacher_forced(name)
    assert logits_tf.shape == (len(TGT_IN), TGT_V) and weights_tf.shape == (len(TGT_IN), LAYERS, HEADS, len(SRC_PADDED))
    with jax.disable_jit():
        memory = model.encode(_i32(SRC_PADDED), jnp.int32(L))
        state = model.initial_decoder_state(memory)
        for t, y_prev in enumerate(TGT_IN):
            state, logits, weights = model.decode_step(memory, state, jnp.int32(y_prev))
            np.testing.assert_allclose(logits, logits_tf[t], rtol=0, atol=1e-5)
            np.testing.assert_allclose(weights, weights_tf[t], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_decoder_ignores_the_future(name):
    model = _model(name)
    (logits, weights), _ = _teacher_forced(name)
    changed = TGT_IN.copy()
    changed[2] = 11
    with jax.disable_jit():
        logits_changed, weights_changed = model(_i32(SRC), jnp.int32(L), _i32(changed), return_weights=True)
    np.testing.assert_array_equal(logits_changed[:2], logits[:2])  # bit-identical before position 2
    np.testing.assert_array_equal(weights_changed[:2], weights[:2])
    assert np.abs(np.asarray(logits_changed[2:]) - logits[2:]).max() > 1e-4  # sanity: the change is read


@pytest.mark.parametrize("name", NAMES)
def test_source_padding_changes_nothing_and_rows_are_distributions(name):
    (logits, weights), (logits_pad, weights_pad) = _teacher_forced(name)
    np.testing.assert_allclose(logits_pad, logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(weights_pad[..., :L], weights, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(weights_pad[..., L:], 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_with_dropout_are_finite_and_reach_every_parameter(name):
    """Every layer's parameters on the sinusoidal model (2 layers); each other variant's own
    parameters (position tables, Shaw's embeddings, the output layer, post-LN) on 1 layer."""
    model = _model(name, "TINY" if name == "sinusoidal" else "ONE_LAYER")
    graphdef, params = nnx.split(model, nnx.Param)
    example = {"src": _i32(SRC_PADDED), "src_length": jnp.int32(L), "tgt_in": _i32(TGT_IN),
               "tgt_out": _i32([4, 8, 6, 3]), "tgt_length": jnp.int32(4)}

    def loss(params, key):
        nll, _ = example_nll(nnx.merge(graphdef, params), example, key)
        return nll

    grads = jax.jit(jax.grad(loss)).lower(params, jax.random.key(0)).compile(FAST_COMPILE)(params, jax.random.key(0))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        assert np.abs(np.asarray(g)).max() > 0, path


def test_beam_search_returns_every_layer_and_head():
    """A beam of 1 is greedy decoding, weights of every layer and head included. Greedy runs eagerly
    (the decoding test's single-op programs); the beam search, vmapped over the beam, compiled."""
    model = _model("sinusoidal")
    with jax.disable_jit():
        memory = model.encode(_i32(SRC_PADDED), jnp.int32(L))
        tokens, _, weights = greedy(model, memory, 5)
    beam = jax.jit(lambda memory: beam_search(model, memory, 1, 5))
    beam_tokens, beam_weights = beam.lower(memory).compile(FAST_COMPILE)(memory)
    assert beam_weights.shape == (5, LAYERS, HEADS, len(SRC_PADDED))
    np.testing.assert_array_equal(beam_weights[..., L:], 0.0)
    np.testing.assert_array_equal(beam_tokens, tokens)
    np.testing.assert_allclose(beam_weights, weights, atol=1e-6)


def test_unknown_positional_encoding_is_refused():
    with pytest.raises(ValueError, match=r"^TransformerConfig.positional='rotary': must be one of sinusoidal, .*alibi$"):
        models.build("transformer", positional="rotary")


def test_warmup_then_inverse_square_root(standard_dtype_promotion):
    lr = learning_rate_schedule(TrainConfig(learning_rate=1e-3, warmup_steps=100))
    np.testing.assert_allclose([lr(0), lr(50), lr(100), lr(400)], [0.0, 5e-4, 1e-3, 5e-4], rtol=1e-6)
    assert float(learning_rate_schedule(TrainConfig(learning_rate=1e-3))(1000)) == pytest.approx(1e-3)


def test_label_smoothing_cross_entropy_by_hand(standard_dtype_promotion):
    class Fixed(nnx.Module):  # a "model" whose logits are fixed, to check the loss alone
        def __call__(self, src, src_length, tgt_in, key=None):
            return jnp.array([[0.0, 1.0, 2.0]]), None

    example = {"src": _i32([0]), "src_length": jnp.int32(1), "tgt_in": _i32([0]), "tgt_out": _i32([2]),
               "tgt_length": jnp.int32(1)}
    logp = np.log(np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum())
    eps = 0.3  # targets: ε/3 on every token plus 1 − ε on token 2
    expected = -(eps / 3 * logp.sum() + (1 - eps) * logp[2])
    nll, n = example_nll(Fixed(), example, label_smoothing=eps)
    np.testing.assert_allclose(nll, expected, rtol=1e-6)
    np.testing.assert_allclose(example_nll(Fixed(), example)[0], -logp[2], rtol=1e-6)
    assert float(n) == 1.0


@pytest.mark.parametrize("positional", [p for p in POSITIONAL if p != "shaw"])
def test_xla_and_blocked_training_paths_equal_the_reference(positional):
    """Loss and gradients, float32, padded sources (one of length 1), causal decoder; blocks of 4
    keys: two blocks for the 7 source positions, the last one padded. One layer: each attention
    (encoder, causal decoder, cross) of each path is in it."""
    assert_paths_equal_reference(lambda impl: models.build("transformer", **ONE_LAYER, positional=positional,
                                                           attention_impl=impl, attention_block_size=4),
                                 padded_batch(SRC_V, TGT_V))


def test_shaw_stays_on_the_reference_path():
    assert models.build("transformer", **TINY, positional="shaw").decoder[0].self_attention.implementation == "reference"
    with pytest.raises(ValueError, match="Shaw's relative positions read the attention weights: attention_impl='xla'"):
        models.build("transformer", **TINY, positional="shaw", attention_impl="xla")
    with pytest.raises(ValueError, match="TransformerConfig.attention_impl='flash': must be one of auto, reference"):
        models.build("transformer", **TINY, attention_impl="flash")
    assert models.build("transformer", **TINY).encoder[0].self_attention.implementation == "xla"  # auto on a CPU


def _attention_maps(hlo: str, sizes) -> list:
    """Float tensors of the HLO whose shape holds batch, heads and two sequence lengths."""
    batch, heads, tgt, src = sizes
    maps = [sorted(d) for d in ([batch, heads, tgt, src], [batch, heads, src, src], [batch, heads, tgt, tgt])]
    shapes = re.findall(r"\b(?:f32|bf16)\[([\d,]+)\]", hlo)
    return [s for s in shapes if any(all(sorted(int(d) for d in s.split(",")).count(n) >= m.count(n) for n in m)
                                     for m in maps)]


def test_the_training_step_holds_no_attention_maps(standard_dtype_promotion):
    """The compiled step with blocked attention has no (B, N, T, S), (B, N, S, S) or (B, N, T, T)
    float tensor; the reference path (the check's control) has them. (XLA's own attention
    materialises its logits on a CPU: the "xla" path is no example there.) One layer: the maps
    are per attention, not per layer."""
    batch, sizes, tx = padded_batch(SRC_V, TGT_V), (3, HEADS, 5, 7), make_optimizer(TrainConfig())
    for impl, expect_maps in (("blocked", False), ("reference", True)):
        model = models.build("transformer", **ONE_LAYER, attention_impl=impl, attention_block_size=4)
        graphdef, state = init_state(model, tx)
        step = make_train_step(graphdef, tx)
        hlo = step.lower(state, batch, jax.random.key(0)).compile(FAST_COMPILE).as_text()
        assert bool(_attention_maps(hlo, sizes)) == expect_maps, impl


def test_jax_cudnn_checks_accept_what_the_bfloat16_transformer_passes(monkeypatch):
    """JAX's cuDNN attention (jax._src.cudnn.fused_attention_stablehlo) traced for real, forward
    and backward under jax.vmap, with only the GPU queries answered (cuDNN 9.10 on a Hopper):
    its argument checks (check_layout, check_is_flash_attention) and batching rules accept the
    arrays of every attention of the training step and of a decoding step, ALiBi's bias included.
    Lengths are even, as batches padded to ``length_multiple`` are (cuDNN wants it with a bias)."""
    checked = stub_cudnn(monkeypatch, hopper=True)
    batch = padded_batch(SRC_V, TGT_V, 8, 6)
    for positional in ("sinusoidal", "alibi"):
        model = models.build("transformer", **{**TINY, "d_model": 16}, positional=positional, attention_impl="cudnn",
                             dtype="bfloat16")
        loss, params = mean_loss(model, batch, jax.random.key(0))
        assert jax.eval_shape(jax.value_and_grad(loss), params)[0].dtype == jnp.float32
        memory = jax.eval_shape(lambda: jax.vmap(model.encode)(batch["src"], batch["src_length"]))
        step = jax.vmap(lambda m, s: model.decode_step(m, s, jnp.int32(4)))
        jax.eval_shape(step, memory, jax.eval_shape(jax.vmap(model.initial_decoder_state), memory))
    # at least, per model: 2 encoder layers + 2 × 2 decoder layers in training, 2 self-attentions decoding
    assert len(checked) >= 2 * (2 + 4 + 2) and set(checked) == {jnp.dtype(jnp.bfloat16)}
