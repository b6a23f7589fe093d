"""A trained model loaded from its workdir: ``zoo.load(workdir).translate(sentences)``."""

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo import decoding
from zoo.checkpoint import CONFIG_FILE, CheckpointStore, read_config
from zoo.config import Config
from zoo.data.batching import collate, round_up
from zoo.data.pipeline import TextPipeline
from zoo.data.vocab import EOS_ID
from zoo.distributed import data_parallel
from zoo.errors import ZooError
from zoo.models import build

MAX_SOURCE_LENGTH = 255  # source tokens kept by translate for models without a max_length (recurrent)
log = logging.getLogger("zoo")


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

    @property
    def max_source_length(self) -> int:
        """Source tokens that :meth:`translate` keeps (longer sentences are truncated): with <eos>
        and padding to ``length_multiple`` they fit the model's ``max_length`` (positions), else
        :data:`MAX_SOURCE_LENGTH`, which keeps decoding a sentence to seconds."""
        limit = getattr(self.config.model, "max_length", None)
        if limit is None:
            return MAX_SOURCE_LENGTH
        return limit // self.config.data.length_multiple * self.config.data.length_multiple - 1

    def encode_source(self, sentences: list[str]) -> list[list[int]]:
        """Token ids of each sentence, truncated to :attr:`max_source_length` (one log line if any is).

        Raises:
          ValueError: ``sentences`` is a string or not a list of strings.
        """
        if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)):
            raise ValueError(f"sentences must be a list of strings, not {type(sentences).__name__}; "
                             f"wrap one sentence as [sentence]")
        bad = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
        if bad is not None:
            raise ValueError(f"sentences[{bad}] is a {type(sentences[bad]).__name__}, not a string")
        limit = self.max_source_length
        src_ids = self.pipeline.encode_source(sentences)
        long = [i for i, s in enumerate(src_ids) if len(s) > limit]
        if long:
            log.warning(f"{len(long)} source sentence(s) longer than {limit} tokens truncated to {limit} "
                        f"(the first: sentence {long[0]}, {len(src_ids[long[0]])} tokens)")
        return [s[:limit] for s in src_ids]

    def translate_tokens(self, sentences: list[str], beam_size: int = 1, batch_size: int = 64) -> list[Translation]:
        """Translate and keep the tokens and attention matrices (see :class:`Translation`).
        ``batch_size`` sentences a batch, rounded up by :meth:`batch_rows`.

        Raises:
          ValueError: as :meth:`translate`.
        """
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size={beam_size!r}: must be an integer of at least 1 (1 is greedy decoding)")
        p = self.pipeline
        src_ids = self.encode_source(sentences)
        order = np.argsort([len(s) for s in src_ids], kind="stable")
        out: list[Translation | None] = [None] * len(sentences)
        per_batch = max(1, min(batch_size, len(order)))  # a few sentences are not padded to a full batch
        rows = self.batch_rows(per_batch)
        for start in range(0, len(order), per_batch):
            idx = order[start : start + per_batch]
            batch = collate(src_ids, [[] for _ in src_ids], idx, rows, self.config.data.length_multiple)
            max_length = min(2 * batch["src"].shape[1] + 8, getattr(self.config.model, "max_length", np.inf))
            batch = jax.device_put(batch, self.batch_sharding)
            tokens, weights = jax.device_get(self._decode(self.params, batch, beam_size, max_length))
            for row, i in enumerate(idx):
                ids = tokens[row].tolist()
                steps = ids.index(EOS_ID) + 1 if EOS_ID in ids else max_length
                cols = int(batch["src_length"][row])
                out[i] = Translation(
                    text=p.tgt_tokenizer.detokenize(p.tgt_vocab.decode(ids)),
                    source_tokens=[p.src_vocab.itos[t] for t in batch["src"][row, :cols]],
                    tokens=[p.tgt_vocab.itos[t] for t in ids[:steps]],
                    heads=_heads(weights[row, :steps])[..., :cols],
                )
        return out

    def translate(self, sentences: list[str], beam_size: int = 1) -> tuple[list[str], list[np.ndarray]]:
        """Translate raw sentences.

        Args:
          sentences: a list of source-language sentences, untokenized. A sentence longer than
            :attr:`max_source_length` tokens is truncated to it, with one log line (``zoo``).
          beam_size: 1 for greedy decoding, else beam search with this many beams.

        Returns:
          ``(hypotheses, attentions)``: detokenized translations, and per sentence the attention
          matrix (target tokens incl. <eos>) × (source tokens incl. <eos>).

        Raises:
          ValueError: ``sentences`` is a bare string or holds a non-string; ``beam_size`` < 1.

        Examples:
          ``workdir`` holds a tiny, untrained Bahdanau model (see :func:`zoo.load`):

          >>> import numpy as np, zoo
          >>> hypotheses, attention = zoo.load(workdir).translate(["Ein Mann läuft.", "Ein Hund."])
          >>> len(hypotheses), [a.shape[1] for a in attention]  # columns: the source tokens and <eos>
          (2, [5, 4])
          >>> all(np.allclose(a.sum(axis=1), 1.0, atol=1e-5) for a in attention)  # a row: one output token's weights
          True
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

    The model is built abstractly (``nnx.eval_shape``: shapes only, no initialisation) and only
    its parameters and step are read from the checkpoint, never the optimizer state. A damaged
    step is skipped for the next intact one (one log line; see :mod:`zoo.checkpoint`). Nothing
    in the workdir is written or locked, so loading may run beside training.

    Args:
      workdir: a folder written by ``train.py`` / :func:`zoo.training.train`.
      step: a saved step; default the best-validation checkpoint (else the latest intact one).

    Raises:
      ZooError: not a workdir, a damaged ``config.json`` or vocabulary (naming the file), a
        vocabulary that does not fit the config, no (intact) checkpoint, or parameters that do
        not fit the config.
    """
    workdir = Path(workdir)
    config = read_config(workdir)
    sizes = (config.model.src_vocab_size, config.model.tgt_vocab_size)
    pipeline = TextPipeline.load(config.data, workdir, vocab_sizes=sizes)
    try:
        model = nnx.eval_shape(lambda: build(config.model_name, config.model))
    except ValueError as e:
        raise ZooError(f"{workdir / CONFIG_FILE}: model {config.model_name!r}: {e}") from None
    graphdef, params = nnx.split(model)
    target = {"params": nnx.to_pure_dict(params), "step": jax.ShapeDtypeStruct((), jnp.int32)}
    state, _ = CheckpointStore(workdir, read_only=True).restore(target, step=step, best=True)
    return Translator(config, pipeline, graphdef, jax.device_put(state["params"]), int(state["step"]))
