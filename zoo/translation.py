"""The host side of translation, shared by a loaded checkpoint (:mod:`zoo.translator`) and an
exported artifact (:mod:`zoo.serving`): sentences -> padded id batches -> decoded tokens and
attention weights -> :class:`Translation`. NumPy only: no model code, no flax, no jax.

Subclasses give :meth:`TranslatorBase.decode_batch` (one compiled decode of a padded batch) and
:meth:`TranslatorBase.batch_rows` (the rows a batch is padded to); everything else (argument
checks, truncation, batching in order of length, detokenization) is here once, so both paths
give the same translations.
"""

import logging
from dataclasses import dataclass

import numpy as np

from zoo.config import Config
from zoo.data.batching import collate, round_up
from zoo.data.pipeline import TextPipeline
from zoo.data.vocab import EOS_ID

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


def decode_steps(padded_source_length: int, config: Config) -> int:
    """T, the decoded steps of a batch whose sources are padded to S: 2 S + 8, at most the
    model's ``max_length`` (its positions) where it has one."""
    return min(2 * padded_source_length + 8, getattr(config.model, "max_length", np.inf))


def check_beam_size(beam_size) -> None:
    """Raises ValueError unless ``beam_size`` is an integer ≥ 1 (1 is greedy decoding)."""
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size={beam_size!r}: must be an integer of at least 1 (1 is greedy decoding)")


class TranslatorBase:
    """Raw sentences in, :class:`Translation` out, around a subclass's compiled batch decoder.

    Attributes: ``config`` (:class:`zoo.config.Config`), ``pipeline`` (tokenizers and vocabularies).
    """

    config: Config
    pipeline: TextPipeline

    def check_beam_size(self, beam_size) -> None:
        """Raises ValueError unless this translator decodes with ``beam_size`` (:func:`check_beam_size`)."""
        check_beam_size(beam_size)

    def batch_rows(self, batch_size: int) -> int:
        """Rows of a batch holding ``batch_size`` sentences (≥ ``batch_size``; padding rows are empty)."""
        raise NotImplementedError

    def decode_batch(self, batch: dict, beam_size: int, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode a padded batch (``src`` int32 (B, S), ``src_length`` int32 (B,)) for ``max_length``
        steps T: tokens int32 (B, T) and weights float32 (B, T, S) or (B, T, L, N, S), on the host."""
        raise NotImplementedError

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

    def batch_plan(self, src_ids: list[list[int]], batch_size: int, by_padded_length: bool) -> list[np.ndarray]:
        """The sentences of each batch: in order of length, ``batch_size`` a batch; with
        ``by_padded_length`` also one padded source length a batch, so that a sentence is decoded
        for the same S and T as alone and its translation does not depend on its neighbours."""
        order = np.argsort([len(s) for s in src_ids], kind="stable")
        per_batch = max(1, min(batch_size, len(order)))  # a few sentences are not padded to a full batch
        if not by_padded_length:
            return [order[start : start + per_batch] for start in range(0, len(order), per_batch)]
        padded = np.array([round_up(len(src_ids[i]) + 1, self.config.data.length_multiple) for i in order])
        groups = np.split(order, np.flatnonzero(np.diff(padded)) + 1)
        return [g[start : start + per_batch] for g in groups for start in range(0, len(g), per_batch)]

    def translate_tokens(self, sentences: list[str], beam_size: int = 1, batch_size: int = 64,
                         by_padded_length: bool = False) -> list[Translation]:
        """Translate and keep the tokens and attention matrices (see :class:`Translation`).
        ``batch_size`` sentences a batch, rounded up by :meth:`batch_rows`; ``by_padded_length``:
        see :meth:`batch_plan`.

        Raises:
          ValueError: as :meth:`translate`.
        """
        self.check_beam_size(beam_size)
        p = self.pipeline
        src_ids = self.encode_source(sentences)
        out: list[Translation | None] = [None] * len(sentences)
        full_rows = self.batch_rows(max(1, min(batch_size, len(src_ids))))
        for idx in self.batch_plan(src_ids, batch_size, by_padded_length):
            rows = self.batch_rows(len(idx)) if by_padded_length else full_rows
            batch = collate(src_ids, [[] for _ in src_ids], idx, rows, self.config.data.length_multiple)
            batch = {k: batch[k] for k in ("src", "src_length")}
            max_length = decode_steps(batch["src"].shape[1], self.config)
            tokens, weights = self.decode_batch(batch, beam_size, max_length)
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
