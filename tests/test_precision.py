"""Mixed precision (``dtype="bfloat16"`` in every model config, Flax's dtype/param_dtype
convention): the bfloat16 training step multiplies in bfloat16 only, keeps parameters and
optimizer state in float32, and computes nearly the float32 loss and gradients.

One exception to "every dot_general has bfloat16 operands" in the training step: the backward
pass of ``jax.nn.dot_product_attention(implementation="xla")`` (the Transformer's and
ConvS2S's "auto" on a CPU) multiplies the float32 cotangent of its float32 softmax with bfloat16
queries or keys, in a dot_general whose ``precision`` is the algorithm ``BF16_BF16_F32``: XLA
rounds both operands to bfloat16 and accumulates in float32, so the product still runs in
bfloat16 (JAX's code, not the zoo's). The step's float32 parts (softmax, log-softmax of the
logits, loss, gradient norm, Adam) hold no matrix product.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import FAST_COMPILE
from flax import nnx

from zoo import models
from zoo.checkpoint import config_from_dict
from zoo.config import Config, TaggerConfig, TrainConfig
from zoo.loss import batch_nll
from zoo.models.labelling import SequenceTagger
from zoo.training import init_state, make_optimizer, make_train_step

SIZES = {
    "bahdanau": dict(embed_dim=8, hidden_dim=8, attention_dim=8, maxout_dim=4),
    "cho": dict(embed_dim=8, hidden_dim=8, maxout_dim=4),
    "sutskever": dict(embed_dim=8, hidden_dim=8),
    "luong": dict(embed_dim=8, hidden_dim=8, attention_dim=8),
    "transformer": dict(d_model=8, num_heads=2, d_ff=16, num_encoder_layers=1, num_decoder_layers=1),
    "convs2s": dict(embed_dim=8, hidden_dim=8, num_encoder_layers=2, num_decoder_layers=2),
}
MULTIPLIES = ("dot_general", "conv_general_dilated")
BF16_ALGORITHM = jax.lax.DotAlgorithmPreset.BF16_BF16_F32  # operands rounded to bfloat16, float32 sums


def _batch():
    rng = np.random.default_rng(0)
    return {"src": jnp.asarray(rng.integers(3, 11, (3, 7)), jnp.int32), "src_length": jnp.array([7, 4, 1], jnp.int32),
            "tgt_in": jnp.asarray(rng.integers(3, 13, (3, 5)), jnp.int32),
            "tgt_out": jnp.asarray(rng.integers(3, 13, (3, 5)), jnp.int32), "tgt_length": jnp.array([5, 3, 2], jnp.int32)}


def _build(name, dtype):
    return models.build(name, src_vocab_size=11, tgt_vocab_size=13, dropout=0.1, dtype=dtype, **SIZES[name])


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (jit, scan, custom VJP, remat...)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _equations(sub)


@pytest.mark.parametrize("name", list(SIZES))
def test_the_bfloat16_train_step_multiplies_in_bfloat16_and_keeps_float32_state(name, standard_dtype_promotion):
    # standard promotion for optax's own Python-float/int32 arithmetic; the model's part is
    # traced under strict promotion in the next test
    tx = make_optimizer(TrainConfig())
    graphdef, state = init_state(_build(name, "bfloat16"), tx)
    step = make_train_step(graphdef, tx)
    args = (state, _batch(), jax.random.key(0))
    products = [eqn for eqn in _equations(jax.make_jaxpr(step)(*args).jaxpr) if eqn.primitive.name in MULTIPLIES]
    assert len(products) >= 4  # forward and backward matrix products were found
    for eqn in products:
        if eqn.params.get("precision") == BF16_ALGORITHM:  # the exception of the module docstring
            assert name in ("transformer", "convs2s"), eqn
            continue
        assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16] * len(eqn.invars), eqn
    new_state, _ = jax.eval_shape(step, *args)
    for tree in (state["params"], new_state["params"], new_state["opt_state"]):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            assert leaf.dtype in (jnp.float32, jnp.int32), (path, leaf.dtype)
    assert {leaf.dtype for leaf in jax.tree.leaves(new_state["params"])} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", list(SIZES))
def test_bfloat16_loss_and_gradients_follow_float32(name):
    """Without dropout: with it, one of the three examples of Bahdanau's batch gives a cosine of
    0.975 (the others 0.99999), most likely a maxout unit whose two inputs round to a different
    winner in bfloat16."""
    batch = _batch()
    results = []
    for dtype in ("float32", "bfloat16"):
        graphdef, params = nnx.split(_build(name, dtype))  # same seed: the same float32 parameters

        def loss(params):
            nll, n = batch_nll(graphdef, params, batch)
            return nll / n

        traced = jax.jit(jax.value_and_grad(loss)).trace(params)  # the zoo's code under strict promotion
        with jax.numpy_dtype_promotion("standard"):  # JAX's lowering of a BF16_BF16_F32 dot promotes dtypes
            value_and_grad = traced.lower().compile(FAST_COMPILE)
        results.append(value_and_grad(params))
    (loss32, grads32), (loss16, grads16) = results
    assert loss16.dtype == jnp.float32
    np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
    assert {leaf.dtype for leaf in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
    g32, g16 = (np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]) for grads in (grads32, grads16))
    cosine = g32 @ g16 / (np.linalg.norm(g32) * np.linalg.norm(g16))
    assert cosine > 0.99, cosine


def test_float16_is_refused_and_an_old_config_reads_as_float32():
    with pytest.raises(ValueError, match=r"ChoConfig.dtype='float16': must be one of float32, bfloat16 \(.*loss scaling"):
        _build("cho", "float16")
    raw = json.loads(Config().to_json())
    del raw["model"]["dtype"]  # a config.json written before the field existed
    assert config_from_dict(raw, "config.json").model.dtype == "float32"


def test_the_labelling_models_take_a_compute_dtype():
    tokens = jnp.array([3, 1, 4, 1, 5, 0], jnp.int32)
    sizes = dict(vocab_size=7, num_tags=5, embed_dim=8, hidden_dim=8)
    logits = [SequenceTagger(TaggerConfig(**sizes, cell="gru", dtype=dtype), rngs=nnx.Rngs(0))(tokens, 4)
              for dtype in ("float32", "bfloat16")]
    assert logits[1].dtype == jnp.float32
    np.testing.assert_allclose(logits[1][:4], logits[0][:4], atol=3e-2)
    assert np.abs(np.asarray(logits[0][:4])).max() > 0.1  # the comparison is not between zeros
    with pytest.raises(ValueError, match=r"TaggerConfig.dtype='float16': must be one of float32, bfloat16 \(.*loss scaling"):
        TaggerConfig(**sizes, dtype="float16")
