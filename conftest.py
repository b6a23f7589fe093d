"""Fixtures shared by the tests in ``tests/`` and the ``>>>`` examples in ``zoo/`` (``--doctest-modules``).

Nothing here imports JAX at import time: ``tests/conftest.py`` sets ``XLA_FLAGS`` before JAX starts.
"""

import pytest

# the doctests that read a trained workdir, given to them as the name ``workdir``
NEEDS_WORKDIR = {"zoo.load", "zoo.translation.TranslatorBase.translate"}


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """A workdir as ``train.py`` writes it, of a tiny Bahdanau model (embeddings, states and
    attention of width 4), with one Adam state at step 7 in ``checkpoints/`` and ``best/``;
    returns ``(workdir, params)``. The parameters are random, not trained: a real initialisation
    compiles for seconds."""
    import jax

    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats with int32 counts
        return _write_tiny_workdir(tmp_path_factory.mktemp("workdir"))


def _write_tiny_workdir(workdir):
    import jax
    import numpy as np
    import optax
    from flax import nnx

    from zoo.checkpoint import CheckpointStore, write_or_check_config
    from zoo.config import BahdanauConfig, Config, DataConfig, TrainConfig
    from zoo.data.pipeline import TextPipeline
    from zoo.data.tokenize import Tokenizer
    from zoo.data.vocab import SPECIALS, Vocab
    from zoo.models import build

    model = BahdanauConfig(src_vocab_size=10, tgt_vocab_size=9, embed_dim=4, hidden_dim=4, attention_dim=4, maxout_dim=4)
    pipeline = TextPipeline(Tokenizer("de", True), Tokenizer("en", True),
                            Vocab([*SPECIALS, "ein", "mann", "läuft", "hund", "katze", "."]),
                            Vocab([*SPECIALS, "a", "man", "runs", "dog", "."]))
    write_or_check_config(workdir, Config(model_name="bahdanau", model=model, data=DataConfig(min_freq=1),
                                          train=TrainConfig()))
    pipeline.save(workdir)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(0.0, 0.5, x.shape).astype(x.dtype),
                          nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build("bahdanau", model)))))
    store = CheckpointStore(workdir)
    store.save(7, {"params": params, "opt_state": optax.adam(1e-3).init(params), "step": np.int32(7)}, {}, val_loss=3.0)
    store.close()
    return workdir, params


@pytest.fixture(autouse=True)
def _doctest_workdir(request, doctest_namespace):
    """``workdir``: :func:`tiny_workdir`'s folder, for the doctests of :data:`NEEDS_WORKDIR` only."""
    if request.node.name in NEEDS_WORKDIR:
        doctest_namespace["workdir"] = request.getfixturevalue("tiny_workdir")[0]
