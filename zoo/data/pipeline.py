"""Sentences <-> padded id batches for one language pair: tokenizers plus vocabularies.

Two kinds (``DataConfig.tokenizer``):

* ``moses``: words (:class:`~zoo.data.tokenize.Tokenizer`), one vocabulary a side built from the
  training split with ``min_freq``; stored as ``src_vocab.json`` and ``tgt_vocab.json``.
* ``sentencepiece``: subwords of one joint SentencePiece model trained on both sides of the
  training split (:mod:`zoo.data.subword`); both vocabularies are its pieces; stored as ``spm.model``.
"""

import itertools
from dataclasses import dataclass
from pathlib import Path

from zoo.config import DataConfig
from zoo.data.subword import SubwordTokenizer
from zoo.data.tokenize import Tokenizer
from zoo.data.vocab import Vocab
from zoo.errors import ZooError


@dataclass
class TextPipeline:
    src_tokenizer: Tokenizer | SubwordTokenizer
    tgt_tokenizer: Tokenizer | SubwordTokenizer
    src_vocab: Vocab
    tgt_vocab: Vocab

    FILES = ("src_vocab.json", "tgt_vocab.json")  # moses: the two vocabularies
    SUBWORD_FILE = "spm.model"  # sentencepiece: the joint model (its pieces are both vocabularies)

    @classmethod
    def files(cls, data: DataConfig) -> tuple[str, ...]:
        """The files :meth:`save` writes for ``data.tokenizer``."""
        return (cls.SUBWORD_FILE,) if data.tokenizer == "sentencepiece" else cls.FILES

    @classmethod
    def saved_in(cls, data: DataConfig, directory) -> bool:
        """Whether ``directory`` holds a pipeline saved by :meth:`save` (a workdir started before)."""
        return (Path(directory) / cls.files(data)[0]).exists()

    @classmethod
    def build(cls, data: DataConfig, train_src: list[str], train_tgt: list[str],
              origin: str = "the training split") -> "TextPipeline":
        """Tokenizers for the pair and vocabularies from the *training* sentences only.

        Args:
          data: the data config (tokenizer, languages, lowercasing, ``min_freq`` or ``vocab_size``
            and ``subword_model``).
          train_src, train_tgt: the training split's raw sentences.
          origin: the files they come from, for error messages.

        Raises:
          ZooError: sentencepiece cannot train on the sentences (see
            :meth:`zoo.data.subword.SubwordTokenizer.train`), naming ``origin``.
        """
        if data.tokenizer == "sentencepiece":
            tokenizer = SubwordTokenizer.train(itertools.chain(train_src, train_tgt), data.vocab_size, data.subword_model,
                                               data.lowercase, origin)
            vocab = Vocab(tokenizer.pieces())
            return cls(tokenizer, tokenizer, vocab, vocab)
        src_tok, tgt_tok = Tokenizer(data.src_lang, data.lowercase), Tokenizer(data.tgt_lang, data.lowercase)
        src_vocab = Vocab.build([src_tok.tokenize(s) for s in train_src], data.min_freq)
        tgt_vocab = Vocab.build([tgt_tok.tokenize(s) for s in train_tgt], data.min_freq)
        return cls(src_tok, tgt_tok, src_vocab, tgt_vocab)

    @classmethod
    def load(cls, data: DataConfig, directory, vocab_sizes: tuple[int, int] | None = None) -> "TextPipeline":
        """The pipeline saved in ``directory`` by :meth:`save`.

        Args:
          data: the data config (tokenizer, languages, lowercasing) the pipeline was built with.
          directory: the folder holding :meth:`files`.
          vocab_sizes: ``(src_vocab_size, tgt_vocab_size)`` of the model the vocabularies must
            fit (from the workdir's ``config.json``), or None for no check.

        Raises:
          ZooError: a file is missing or damaged, or a vocabulary's size differs from ``vocab_sizes``
            (an edited or foreign file would shift every token id), naming the file.
        """
        directory = Path(directory)
        if data.tokenizer == "sentencepiece":
            tokenizer = SubwordTokenizer.load(directory / cls.SUBWORD_FILE, data.lowercase)
            vocab = Vocab(tokenizer.pieces())
            pipeline, names = cls(tokenizer, tokenizer, vocab, vocab), (cls.SUBWORD_FILE,) * 2
        else:
            vocabs = [Vocab.load(directory / name) for name in cls.FILES]
            pipeline = cls(Tokenizer(data.src_lang, data.lowercase), Tokenizer(data.tgt_lang, data.lowercase), *vocabs)
            names = cls.FILES
        vocabs = (pipeline.src_vocab, pipeline.tgt_vocab)
        for name, vocab, size, side in zip(names, vocabs, vocab_sizes or (None, None), ("src", "tgt")):
            if size is not None and len(vocab) != size:
                raise ZooError(f"{directory / name}: {len(vocab)} tokens, but the model was built for "
                               f"{side}_vocab_size={size}; the file was edited or belongs to another workdir")
        return pipeline

    def save(self, directory) -> None:
        """Write :meth:`files` into ``directory`` (atomically; ZooError naming a file that cannot be written)."""
        directory = Path(directory)
        if isinstance(self.src_tokenizer, SubwordTokenizer):
            self.src_tokenizer.save(directory / self.SUBWORD_FILE)
            return
        self.src_vocab.save(directory / self.FILES[0])
        self.tgt_vocab.save(directory / self.FILES[1])

    def encode_source(self, sentences: list[str]) -> list[list[int]]:
        """Token ids of each source sentence (without <eos>)."""
        return _encode(self.src_tokenizer, self.src_vocab, sentences)

    def encode_target(self, sentences: list[str]) -> list[list[int]]:
        """Token ids of each target sentence (without <bos>/<eos>)."""
        return _encode(self.tgt_tokenizer, self.tgt_vocab, sentences)


def _encode(tokenizer, vocab: Vocab, sentences: list[str]) -> list[list[int]]:
    if isinstance(tokenizer, SubwordTokenizer):
        return tokenizer.encode(sentences)  # SentencePiece's ids are the vocabulary's (zoo.data.subword)
    return [vocab.encode(tokenizer.tokenize(s)) for s in sentences]
