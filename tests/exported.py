"""Tiny workdirs of every model with random parameters (a real initialisation compiles for
seconds, training longer), for the export and serving tests."""

import contextlib
from pathlib import Path

import jax
import jaxtyping
import numpy as np
from corpus import sentence_pairs
from flax import nnx

from zoo import export
from zoo.checkpoint import CheckpointStore, write_or_check_config
from zoo.config import Config, DataConfig, TrainConfig
from zoo.data.pipeline import TextPipeline
from zoo.models import MODELS, build

TINY = {
    "bahdanau": dict(embed_dim=4, hidden_dim=4, attention_dim=4, maxout_dim=4),
    "cho": dict(embed_dim=4, hidden_dim=4, maxout_dim=4),
    "sutskever": dict(embed_dim=4, hidden_dim=4, num_layers=1),
    "luong": dict(embed_dim=4, hidden_dim=4, attention_dim=4, num_layers=1),
    "transformer": dict(d_model=8, num_heads=2, d_ff=8, num_encoder_layers=1, num_decoder_layers=2, max_length=32),
    "convs2s": dict(embed_dim=4, hidden_dim=4, num_encoder_layers=1, num_decoder_layers=2, max_length=32),
}
SENTENCES = ["Ein Mann läuft im Park.", "Ein Hund.", "Eine Katze schläft am Strand und ein Junge singt im Haus."]


def tiny_workdir(workdir: Path, name: str) -> Path:
    """A workdir of model ``name`` (:data:`TINY` sizes) with random parameters at step 3, its
    vocabularies built on the tiny corpus of :mod:`corpus`."""
    src, tgt = zip(*sentence_pairs(48, 0))
    pipeline = TextPipeline.build(DataConfig(min_freq=1), list(src), list(tgt))
    model = MODELS[name].config(src_vocab_size=len(pipeline.src_vocab), tgt_vocab_size=len(pipeline.tgt_vocab),
                                **TINY[name])
    write_or_check_config(workdir, Config(model_name=name, model=model, data=DataConfig(min_freq=1), train=TrainConfig()))
    pipeline.save(workdir)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.normal(0.0, 1.0, x.shape).astype(x.dtype),
                          nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build(name, model)))))
    store = CheckpointStore(workdir)
    with jax.numpy_dtype_promotion("standard"):
        store.save(3, {"params": params, "step": np.int32(3)}, {}, val_loss=3.0)
    store.close()
    return workdir


def export_file(translator, path, platforms=("cpu",), beam_sizes=(1,)) -> Path:
    """:func:`zoo.export.export_translator` with jaxtyping's run-time checks off while it traces:
    the suite's hook (``--jaxtyping-packages``) checks ``int`` sizes with beartype, and a
    ``jax.export`` symbolic dimension is a size but not an ``int``."""
    with contextlib.ExitStack() as stack:
        stack.callback(jaxtyping.config.update, "jaxtyping_disable", jaxtyping.config.jaxtyping_disable)
        jaxtyping.config.update("jaxtyping_disable", True)
        return export.export_translator(translator, path, platforms, beam_sizes)
