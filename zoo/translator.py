"""A trained model loaded from its workdir: ``zoo.load(workdir).translate(sentences)``."""

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from zoo import decoding
from zoo.checkpoint import CheckpointStore, read_config
from zoo.config import Config
from zoo.data.batching import collate, round_up
from zoo.data.pipeline import TextPipeline
from zoo.data.vocab import EOS_ID
from zoo.distributed import data_parallel
from zoo.models import build
from zoo.training import init_state, make_optimizer


@dataclass
class Translation:
    text: str  # the detokenized hypothesis
    source_tokens: list[str]  # the tokenized source, then "<eos>"
    tokens: list[str]  # the decoded tokens up to and including the first "<eos>" (if any)
    heads: np.ndarray  # (L, N, len(tokens), len(source_tokens)): every decoder layer's and head's attention
    # over the source; (1, 1, ·, ·) for the recurrent models

    @property
    def attention(self) -> np.ndarray:
        """(len(tokens), len(source_tokens)): row i is α_i over the source (the last layer, averaged over heads)."""
        return self.heads[-1].mean(axis=0)


class Translator:
    """A model with its parameters, tokenizers and vocabularies; translates raw sentences.

    Batches are split over the ``"data"`` axis of this process's devices (``batch_sharding``),
    the parameters are replicated on them.
    """

    def __init__(self, config: Config, pipeline: TextPipeline, graphdef, params, step: int):
        self.config, self.pipeline, self.graphdef, self.step = config, pipeline, graphdef, step
        self.batch_sharding, replicated = data_parallel(jax.local_devices())
        self.params = jax.device_put(params, replicated)

    def batch_rows(self, batch_size: int) -> int:
        """``batch_size`` rounded up to a multiple of the local devices, which split each batch."""
        return round_up(batch_size, len(self.batch_sharding.device_set))

    @property
    def model(self) -> nnx.Module:
        """The model as a ``flax.nnx.Module`` holding the loaded parameters (one example at a time)."""
        return nnx.merge(self.graphdef, self.params)

    @partial(jax.jit, static_argnums=(0, 3, 4))
    def _decode(self, params, batch, beam_size: int, max_length: int):
        model = nnx.merge(self.graphdef, params)

        def one(src, src_length):
            memory = model.encode(src, src_length)
            if beam_size == 1:
                tokens, _, weights = decoding.greedy(model, memory, max_length)
                return tokens, weights
            return decoding.beam_search(model, memory, beam_size, max_length)

        return jax.vmap(one)(batch["src"], batch["src_length"])

    def translate_tokens(self, sentences: list[str], beam_size: int = 1, batch_size: int = 64) -> list[Translation]:
        """Translate and keep the tokens and attention matrices (see :class:`Translation`).
        ``batch_size`` sentences a batch, rounded up by :meth:`batch_rows`."""
        p, batch_size = self.pipeline, self.batch_rows(batch_size)
        src_ids = p.encode_source(sentences)
        order = np.argsort([len(s) for s in src_ids], kind="stable")
        out: list[Translation | None] = [None] * len(sentences)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate(src_ids, [[] for _ in src_ids], idx, batch_size, self.config.data.length_multiple)
            max_length = min(2 * batch["src"].shape[1] + 8, getattr(self.config.model, "max_length", np.inf))
            tokens, weights = jax.device_get(self._decode(self.params, jax.device_put(batch, self.batch_sharding), beam_size, max_length))
            for row, i in enumerate(idx):
                ids = tokens[row].tolist()
                rows = ids.index(EOS_ID) + 1 if EOS_ID in ids else max_length
                cols = int(batch["src_length"][row])
                out[i] = Translation(
                    text=p.tgt_tokenizer.detokenize(p.tgt_vocab.decode(ids)),
                    source_tokens=[p.src_vocab.itos[t] for t in batch["src"][row, :cols]],
                    tokens=[p.tgt_vocab.itos[t] for t in ids[:rows]],
                    heads=_heads(weights[row, :rows])[..., :cols],
                )
        return out

    def translate(self, sentences: list[str], beam_size: int = 1) -> tuple[list[str], list[np.ndarray]]:
        """Translate raw sentences.

        Args:
          sentences: source-language text, untokenized.
          beam_size: 1 for greedy decoding, else beam search with this many beams.

        Returns:
          ``(hypotheses, attentions)``: detokenized translations, and per sentence the attention
          matrix (target tokens incl. <eos>) × (source tokens incl. <eos>).
        """
        results = self.translate_tokens(sentences, beam_size)
        return [r.text for r in results], [r.attention for r in results]


def _heads(weights: np.ndarray) -> np.ndarray:
    """Decoded steps' weights (T, S) or (T, L, N, S) -> (L, N, T, S)."""
    if weights.ndim == 2:
        return weights[None, None]
    return weights.transpose(1, 2, 0, 3)


def load(workdir, step: int | None = None) -> Translator:
    """Load a trained model from its workdir, with no knowledge of its structure needed.

    Args:
      workdir: a folder written by ``train.py`` / :func:`zoo.training.train`.
      step: a saved step; default the best-validation checkpoint (else the latest).

    Raises:
      ZooError: not a workdir, no such checkpoint, or parameters that do not fit the config.
    """
    workdir = Path(workdir)
    config = read_config(workdir)
    pipeline = TextPipeline.load(config.data, workdir)
    graphdef, state = init_state(build(config.model_name, config.model), make_optimizer(config.train))
    store = CheckpointStore(workdir, read_only=True)
    try:
        best = store.best.latest_step() is not None and (step is None or step in store.best.all_steps())
        state, _ = store.restore(state, step=step, best=best)
    finally:
        store.close()
    return Translator(config, pipeline, graphdef, state["params"], int(state["step"]))
