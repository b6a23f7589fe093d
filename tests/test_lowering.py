"""Every model's compiled functions lower for NVIDIA GPUs and TPUs on this CPU machine.

``jax.jit(f).trace(*abstract).lower(lowering_platforms=("cuda", "tpu"))`` builds one StableHLO
module for both platforms (a ``_platform_index`` argument picks the branch where their lowerings
differ) without a GPU, a TPU or their compilers: what fails here (an op with no CUDA or TPU
lowering, a dtype a platform refuses, a donation that does not alias) would fail there. From
abstract shapes (``nnx.eval_shape``, ``jax.ShapeDtypeStruct``) of tiny models: nothing is
allocated or run. Checked for every model × {float32, bfloat16}: the training step
(:func:`zoo.training.make_train_step`), the validation NLL (:func:`zoo.evaluation.make_eval_nll`)
and the translator's jitted greedy decode (:meth:`zoo.translator.Translator._decode`). The
bfloat16 Transformer with ``attention_impl="cudnn"`` lowers for CUDA to cuDNN's fused attention.
"""

import functools
import re

import jax
import jax.numpy as jnp
import pytest
from attention_paths import stub_cudnn
from flax import nnx

import zoo
from zoo.config import TrainConfig
from zoo.evaluation import make_eval_nll
from zoo.training import init_state, make_optimizer, make_train_step
from zoo.translator import Translator

PLATFORMS = ("cuda", "tpu")
B, S, T = 2, 8, 6  # batch, source and target length
TINY = {
    "bahdanau": dict(embed_dim=8, hidden_dim=8, attention_dim=8, maxout_dim=8),
    "cho": dict(embed_dim=8, hidden_dim=8, maxout_dim=8),
    "convs2s": dict(embed_dim=8, hidden_dim=8, num_encoder_layers=1, num_decoder_layers=1, max_length=16),
    "luong": dict(embed_dim=8, hidden_dim=8, num_layers=1, attention_dim=8),
    "sutskever": dict(embed_dim=8, hidden_dim=8, num_layers=1),
    "transformer": dict(d_model=16, num_heads=2, d_ff=16, num_encoder_layers=1, num_decoder_layers=1, max_length=16),
}
BATCH = {name: jax.ShapeDtypeStruct(shape, jnp.int32) for name, shape in
         (("src", (B, S)), ("src_length", (B,)), ("tgt_in", (B, T)), ("tgt_out", (B, T)), ("tgt_length", (B,)))}
TX = make_optimizer(TrainConfig())
DOT = re.compile(r"stablehlo\.dot_general .*: \((tensor<[^>]*>), (tensor<[^>]*>)\)")


def abstract_model(name: str, **overrides):
    """``(graphdef, state)`` of :func:`zoo.training.init_state` for a tiny ``name``, as shapes only."""
    build = lambda: zoo.build(name, src_vocab_size=11, tgt_vocab_size=13, **{**TINY[name], **overrides})
    graphdef, _ = nnx.split(nnx.eval_shape(build))
    return graphdef, jax.eval_shape(lambda: init_state(build(), TX)[1])


def lower(name: str, dtype: str, platforms=PLATFORMS, **overrides) -> dict[str, jax.stages.Lowered]:
    """The training step, the validation NLL and the greedy decode of ``name`` lowered for ``platforms``."""
    graphdef, state = abstract_model(name, dtype=dtype, **overrides)
    key = jax.eval_shape(lambda: jax.random.key(0))
    translator = object.__new__(Translator)  # _decode reads only .graphdef; __init__ would place real parameters
    translator.graphdef = graphdef
    decode_batch = {"src": BATCH["src"], "src_length": BATCH["src_length"]}
    traced = {"train_step": make_train_step(graphdef, TX).trace(state, BATCH, key),
              "eval_nll": make_eval_nll(graphdef).trace(state["params"], BATCH),
              "greedy": Translator._decode.trace(translator, state["params"], decode_batch, 1, T)}
    return {fn: t.lower(lowering_platforms=platforms) for fn, t in traced.items()}


@functools.cache
def lowered(name: str, dtype: str) -> dict[str, jax.stages.Lowered]:
    return lower(name, dtype)


def main_signature(text: str) -> str:
    return next(line for line in text.splitlines() if "func.func public @main(" in line)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", zoo.list_models())
def test_training_validation_and_decoding_lower_for_cuda_and_tpu(name, dtype, standard_dtype_promotion):
    """One module for both platforms; the whole training state is donated (every state argument
    aliases an output); parameters and optimizer state stay float32 in and out. float32: no
    bfloat16 value anywhere. bfloat16: every matrix product (dot_general) reads at least one bfloat16
    operand: none is left in float32, forward or backward. Greedy decoding returns (B, T) int32 tokens."""
    result = lowered(name, dtype)
    texts = {fn: low.as_text() for fn, low in result.items()}
    for fn, text in texts.items():
        arguments = main_signature(text).split(" -> ")[0]
        assert '%arg0: tensor<i32> {jax.global_constant = "_platform_index"}' in arguments, fn
        assert "bf16" not in arguments, fn
        dots = DOT.findall(text)
        assert dots, fn
        if dtype == "float32":
            assert "bf16" not in text, fn
        else:
            assert [d for d in dots if "bf16" not in d[0] + d[1]] == [], fn
    state, metrics = result["train_step"].out_info
    assert main_signature(texts["train_step"]).count("tf.aliasing_output") == len(jax.tree.leaves(state))
    kept = jax.tree.leaves((state["params"], state["opt_state"], metrics))
    assert {a.dtype for a in kept} <= {jnp.dtype("float32"), jnp.dtype("int32")}
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(result["eval_nll"].out_info)] == [((), jnp.float32)] * 2
    tokens, weights = result["greedy"].out_info
    assert (tokens.shape, tokens.dtype) == ((B, T), jnp.int32)
    assert weights.shape[:2] == (B, T) and weights.shape[-1] == S


def test_bfloat16_transformer_lowers_to_cudnn_fused_attention_for_cuda(monkeypatch, standard_dtype_promotion):
    """``attention_impl="cudnn"`` (JAX's cuDNN version and GPU queries stubbed, as on a Hopper GPU
    with cuDNN 9.10): the training step holds cuDNN's fused attention forward and backward for
    each of the 3 attentions (encoder self, decoder self, decoder cross), in bfloat16; the
    validation NLL the 3 forwards; greedy decoding (one query a step over the cache) the 2 of the
    decoder. ``auto`` on this CPU picks XLA's attention: no custom call (the control)."""
    stub_cudnn(monkeypatch, hopper=True)
    cudnn = lower("transformer", "bfloat16", ("cuda",), attention_impl="cudnn")
    calls = {fn: re.findall(r'custom_call @(__cudnn\$fmha\w*)\(.*\) -> \(?tensor<[^>]*xbf16>', low.as_text())
             for fn, low in cudnn.items()}
    assert sorted(set(calls["train_step"])) == ["__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"]
    assert calls["train_step"].count("__cudnn$fmhaSoftmax") == 3
    assert calls["train_step"].count("__cudnn$fmhaSoftmaxBackward") == 3
    assert calls["eval_nll"] == ["__cudnn$fmhaSoftmax"] * 3
    assert calls["greedy"] == ["__cudnn$fmhaSoftmax"] * 2
    assert all("__cudnn" not in low.as_text() for low in lowered("transformer", "bfloat16").values())
