"""Shared by the fused-attention tests of the Transformer and ConvS2S: a padded batch, a model's
mean-loss function, the check that the ``xla`` and ``blocked`` paths equal ``reference``, and
JAX's cuDNN attention with its GPU queries stubbed."""

import jax
import jax.numpy as jnp
import numpy as np
from compile_options import FAST_COMPILE
from flax import nnx

from zoo.loss import batch_nll


def padded_batch(src_vocab: int, tgt_vocab: int, src_len: int = 7, tgt_len: int = 5) -> dict:
    """Three sentences with source lengths (src_len, 4, 1) and target lengths (tgt_len, 3, 2)."""
    rng = np.random.default_rng(0)
    ids = lambda vocab, length: jnp.asarray(rng.integers(3, vocab, (3, length)), jnp.int32)
    return {"src": ids(src_vocab, src_len), "src_length": jnp.asarray([src_len, 4, 1], jnp.int32),
            "tgt_in": ids(tgt_vocab, tgt_len), "tgt_out": ids(tgt_vocab, tgt_len),
            "tgt_length": jnp.asarray([tgt_len, 3, 2], jnp.int32)}


def mean_loss(model, batch, key=None):
    """``(loss(params), params)``: the batch's mean token NLL as a function of the parameters."""
    graphdef, params = nnx.split(model)
    return (lambda p: (lambda nll, n: nll / n)(*batch_nll(graphdef, p, batch, key))), params


def assert_paths_equal_reference(build, batch) -> None:
    """Loss and gradients of ``build(impl)`` through ``xla`` and ``blocked`` equal ``reference`` to
    1e-5 (float32), and the reference gradients are not all ~0 (so the check can fail). The three
    paths run in one compiled program (one compile instead of three)."""
    impls = ("reference", "xla", "blocked")
    losses, params = zip(*(mean_loss(build(impl), batch) for impl in impls))
    paths = jax.jit(lambda params: [jax.value_and_grad(loss)(p) for loss, p in zip(losses, params)])
    results = dict(zip(impls, paths.lower(params).compile(FAST_COMPILE)(params)))
    loss_ref, grads_ref = results["reference"]
    assert np.abs(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads_ref)])).max() > 1e-3
    for impl in ("xla", "blocked"):
        loss, grads = results[impl]
        np.testing.assert_allclose(loss, loss_ref, rtol=0, atol=1e-5)
        for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_ref)):
            np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-5, err_msg=f"{impl} {jax.tree_util.keystr(path)}")


def stub_cudnn(monkeypatch, hopper: bool) -> list:
    """JAX's cuDNN attention with only the GPU queries answered (cuDNN 9.10; a Hopper or an
    Ampere GPU); returns the list the dtypes of every checked call are appended to."""
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    monkeypatch.setattr(cudnn, "check_cudnn_version", lambda: 91000)
    monkeypatch.setattr(cudnn, "check_compute_capability", lambda capability: hopper)
    monkeypatch.setattr(cudnn, "is_cuda_compute_capability_equal", lambda capability: False)
    checked = []
    check_layout = cudnn.check_layout
    monkeypatch.setattr(cudnn, "check_layout", lambda *args: checked.append(args[0].dtype) or check_layout(*args))
    return checked
