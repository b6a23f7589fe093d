"""ConvS2S's decoder attention through the fused and blocked paths (``config.attention_impl``):
one head of width E, scale 1, values (z_j + e_j)·√0.5 apart from the keys z_j, the source
length as the key length. The training loss and its gradients agree with the reference path,
the compiled blocked step holds no (B, T, S) attention map, JAX's cuDNN argument checks accept
what the bfloat16 model passes, and ``auto`` keeps cuDNN away from head widths above 128.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from attention_paths import assert_paths_equal_reference, mean_loss, padded_batch, stub_cudnn
from compile_options import FAST_COMPILE

from zoo import models
from zoo.config import TrainConfig
from zoo.nn import attention as nn_attention
from zoo.training import init_state, make_optimizer, make_train_step

SRC_V, TGT_V = 11, 13
TINY = dict(src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, embed_dim=8, hidden_dim=16, num_encoder_layers=2,
            num_decoder_layers=2, kernel_size=3, max_length=16)
ONE_LAYER = {**TINY, "num_encoder_layers": 1, "num_decoder_layers": 1}  # where nothing is per layer
B, T, S = 3, 5, 7



def test_xla_and_blocked_training_paths_equal_the_reference():
    """Loss and gradients, float32, padded sources; blocks of 4 keys: two blocks for the 7 source
    positions, the last one padded. One layer: the decoder's one attention is in it."""
    def build(impl):
        model = models.build("convs2s", **ONE_LAYER, attention_impl=impl, attention_block_size=4)
        assert model.attention_impl == impl
        return model

    assert_paths_equal_reference(build, padded_batch(SRC_V, TGT_V, S, T))


def test_weights_only_when_asked():
    """The training call returns no weights; ``return_weights`` returns every layer's, (T, L, 1, S),
    whatever ``attention_impl`` (they come from the reference path)."""
    batch = padded_batch(SRC_V, TGT_V, S, T)
    model = models.build("convs2s", **TINY, attention_impl="blocked", attention_block_size=4)
    args = (batch["src"][1], batch["src_length"][1], batch["tgt_in"][1])
    logits, weights = jax.eval_shape(model, *args)
    assert logits.shape == (T, TGT_V) and weights is None
    logits, weights = jax.eval_shape(lambda *a: model(*a, return_weights=True), *args)
    assert weights.shape == (T, 2, 1, S) and weights.dtype == jnp.float32


def _attention_maps(text: str) -> list:
    """Float tensors of an HLO (``f32[3,5,7]``) or StableHLO (``tensor<3x5x7xf32>``) text whose shape
    holds the batch and both sequence lengths: (B, T, S), (B, 1, T, S) and any stacking of them
    (B, T, S are distinct from every other size here)."""
    shapes = re.findall(r"\b(?:f32|bf16)\[([\d,]+)\]", text) + re.findall(r"tensor<([\dx]+)x(?:f32|bf16)>", text)
    return [s for s in shapes if {B, T, S} <= {int(d) for d in re.split("[,x]", s)}]


def test_the_training_step_holds_no_attention_maps(standard_dtype_promotion):
    """The blocked training step has no float (B, T, S) or (B, 1, T, S) tensor, neither in the
    program JAX traces (StableHLO) nor in the one XLA compiles; the reference path's traced step
    (the check's control) has them. (XLA's own attention materialises its logits on a CPU.) One
    layer: the maps are per attention, not per layer."""
    batch, tx = padded_batch(SRC_V, TGT_V, S, T), make_optimizer(TrainConfig())
    for impl in ("blocked", "reference"):
        model = models.build("convs2s", **ONE_LAYER, attention_impl=impl, attention_block_size=4)
        graphdef, state = init_state(model, tx)
        lowered = make_train_step(graphdef, tx).lower(state, batch, jax.random.key(0))
        if impl == "reference":
            assert _attention_maps(lowered.as_text())
        else:
            assert not _attention_maps(lowered.as_text())
            assert not _attention_maps(lowered.compile(FAST_COMPILE).as_text())


@pytest.mark.parametrize("embed_dim, hopper, accepted", [(16, False, True), (256, True, True), (256, False, False)])
def test_jax_cudnn_checks_on_what_the_bfloat16_convs2s_passes(monkeypatch, embed_dim, hopper, accepted):
    """The bfloat16 training loss traced for real, forward and backward under jax.vmap, with
    ``attention_impl="cudnn"``: JAX's argument checks (check_layout, check_is_flash_attention)
    and batching rules accept the (T, 1, E) queries, (S, 1, E) keys and values (z + e)·√0.5,
    scale 1 and the source lengths of every decoder layer. At the default E = 256 they accept it
    on a Hopper GPU and refuse it before (head width at most 128)."""
    checked = stub_cudnn(monkeypatch, hopper)
    model = models.build("convs2s", **{**TINY, "embed_dim": embed_dim}, attention_impl="cudnn", dtype="bfloat16")
    loss, params = mean_loss(model, padded_batch(SRC_V, TGT_V, 8, 6), jax.random.key(0))
    if not accepted:
        with pytest.raises(NotImplementedError, match="head dim must be <= 128"):
            jax.eval_shape(jax.value_and_grad(loss), params)
        return
    assert jax.eval_shape(jax.value_and_grad(loss), params)[0].dtype == jnp.float32
    assert len(checked) >= 2 and set(checked) == {jnp.dtype(jnp.bfloat16)}  # forward and backward of the scan body


def test_auto_picks_cudnn_only_where_the_head_width_fits_every_nvidia_gpu(monkeypatch):
    """auto: XLA on a CPU; on an NVIDIA GPU cuDNN for bfloat16 with E <= 128, XLA at the default
    E = 256 (cuDNN refuses it before Hopper) and for float32. Unknown names are refused."""
    assert models.build("convs2s", **TINY, dtype="bfloat16").attention_impl == "xla"  # this CPU
    monkeypatch.setattr(nn_attention, "on_nvidia_gpu", lambda: True)
    for embed_dim, dtype, expected in ((128, "bfloat16", "cudnn"), (256, "bfloat16", "xla"), (128, "float32", "xla")):
        model = models.build("convs2s", **{**TINY, "embed_dim": embed_dim}, dtype=dtype)
        assert model.attention_impl == expected, (embed_dim, dtype)
    with pytest.raises(ValueError, match="ConvS2SConfig.attention_impl='flash': must be one of auto, reference"):
        models.build("convs2s", **TINY, attention_impl="flash")
    with pytest.raises(ValueError, match="ConvS2SConfig.attention_block_size=0: must be at least 1"):
        models.build("convs2s", **TINY, attention_block_size=0)
