"""Subword units: a SentencePiece model (Kudo & Richardson 2018) trained on the training split.

One **joint** model serves both languages: it is trained on the source and the target sides of
the training split together, and the source and target vocabularies are its pieces. Joint is
what Vaswani et al. (2017, section 5.1: "a shared source-target vocabulary of about 37000
tokens" for English–German) and fairseq's WMT recipes use for related languages written in one
script: a name or a number copied from source to target is the same piece on both sides, and the
two embedding tables may be shared. ``--data.vocab-size`` is therefore the size of that one
vocabulary (both ``src_vocab_size`` and ``tgt_vocab_size`` of the model).

The pieces' ids line up with :mod:`zoo.data.vocab`: the trainer is told ``pad_id=0, unk_id=1,
bos_id=2, eos_id=3`` with the pieces ``<pad> <unk> <bos> <eos>``, so a SentencePiece id *is* the
zoo's token id and :class:`~zoo.data.vocab.Vocab` over the model's pieces encodes as the model does.

Normalisation is SentencePiece's ``nmt_nfkc`` (Unicode NFKC, whitespace runs collapsed, no
leading or trailing space), after lowercasing when ``lowercase`` is set; decoding a sentence's
pieces gives that normalised sentence back (:meth:`SubwordTokenizer.detokenize`), which is what
sacreBLEU scores.
"""

import io
import os
import re
import typing
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from zoo.config import SubwordModel
from zoo.data.vocab import BOS, BOS_ID, EOS, EOS_ID, PAD, PAD_ID, UNK, UNK_ID
from zoo.errors import ZooError
from zoo.io import write_bytes

# Sentences SentencePiece reads to train (sampled when the corpus has more, as its README
# advises for large corpora): 1 M sentences learn an 8-32 k vocabulary; Multi30k has 58 k.
INPUT_SENTENCE_SIZE = 1_000_000


class SubwordTokenizer:
    """Sentence <-> pieces and ids with a trained SentencePiece model (see the module docstring)."""

    def __init__(self, model_proto: bytes, lowercase: bool = True):
        self.model_proto, self.lowercase = model_proto, lowercase
        self.processor = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int, model_type: str = "unigram", lowercase: bool = True,
              origin: str = "the training sentences") -> "SubwordTokenizer":
        """Train a SentencePiece model of ``vocab_size`` pieces (the 4 specials included) on ``sentences``.

        Args:
          sentences: the training text, one sentence a string (both sides, for a joint model).
          vocab_size: pieces in the model, as ``--data.vocab-size``.
          model_type: "unigram" (Kudo 2018) or "bpe" (Sennrich et al. 2016).
          lowercase: lowercase the sentences first (and every sentence encoded later).
          origin: what the sentences are, for error messages (the corpus files).

        Raises:
          ZooError: no text in ``sentences``, more pieces asked for than the text gives, or fewer
            than its characters need (naming ``origin``, the flag and the size that works).
          ValueError: an unknown ``model_type``.

        Examples:
          >>> tok = SubwordTokenizer.train(["a cat sat", "a dog sat"] * 4, vocab_size=14)
          >>> tok.tokenize("A dog sat")
          ['▁', 'a', '▁', 'd', 'o', 'g', '▁sat']
          >>> tok.detokenize(tok.tokenize("A dog sat"))
          'a dog sat'
        """
        if model_type not in typing.get_args(SubwordModel):
            raise ValueError(f"model_type={model_type!r}: choose from {', '.join(typing.get_args(SubwordModel))}")
        text = (s.lower() if lowercase else s for s in sentences)
        proto = io.BytesIO()
        spm.set_random_generator_seed(0)  # which sentences are sampled past INPUT_SENTENCE_SIZE
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=text, model_writer=proto, vocab_size=vocab_size, model_type=model_type,
                character_coverage=1.0,  # SentencePiece's advice for small (e.g. Latin) character sets
                input_sentence_size=INPUT_SENTENCE_SIZE, shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, minloglevel=2)
        except RuntimeError as e:
            raise ZooError(_training_error(str(e), origin, vocab_size)) from None
        return cls(proto.getvalue(), lowercase)

    @classmethod
    def load(cls, path, lowercase: bool = True) -> "SubwordTokenizer":
        """The model saved by :meth:`save`.

        Raises:
          ZooError: the file is missing, unreadable or not a SentencePiece model (e.g. truncated), naming it.
        """
        try:
            return cls(Path(path).read_bytes(), lowercase)
        except OSError as e:
            raise ZooError(f"{path}: cannot read ({e.strerror or e})") from None
        except RuntimeError:
            raise ZooError(f"{path}: not a SentencePiece model (truncated, or another file?)") from None

    def save(self, path) -> None:
        """Write the model (atomically; ZooError naming ``path`` if it cannot)."""
        write_bytes(path, self.model_proto)

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def pieces(self) -> list[str]:
        """Every piece, by id (ids 0-3 are ``<pad> <unk> <bos> <eos>``)."""
        return [self.processor.id_to_piece(i) for i in range(len(self))]

    def _prepare(self, sentence: str) -> str:
        return sentence.lower() if self.lowercase else sentence

    def tokenize(self, sentence: str) -> list[str]:
        """The sentence's pieces (``▁`` marks a word start)."""
        return self.processor.encode(self._prepare(sentence), out_type=str)

    def encode(self, sentences: list[str]) -> list[list[int]]:
        """Token ids of each sentence (without <bos>/<eos>), in one call into SentencePiece."""
        return self.processor.encode([self._prepare(s) for s in sentences])

    def detokenize(self, pieces: list[str]) -> str:
        """The text of ``pieces``: the normalised sentence they were made from."""
        return self.processor.decode_pieces(pieces)


def _training_error(message: str, origin: str, vocab_size: int) -> str:
    """One line for a failed SentencePiece training (its messages start with a C++ source location)."""
    if "sentences_.empty()" in message or "all_chars_count" in message:
        return f"{origin}: no text to train SentencePiece on (every sentence is empty or blank)"
    most = re.search(r"value <= (\d+)", message)
    if most:
        return (f"{origin}: gives at most {most.group(1)} SentencePiece pieces, fewer than --data.vocab-size "
                f"{vocab_size} (too little or too repetitive text); use at most {most.group(1)}")
    least = re.search(r"required_chars\. \d+ vs (\d+)", message)
    if least:
        return (f"{origin}: has {least.group(1)} distinct characters and special tokens, more than --data.vocab-size "
                f"{vocab_size} can hold; use more than {least.group(1)}")
    return f"{origin}: SentencePiece cannot train on it with --data.vocab-size {vocab_size}: {message.split('] ')[-1].strip()}"
