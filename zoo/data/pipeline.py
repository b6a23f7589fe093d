"""Sentences <-> padded id batches for one language pair: tokenizers plus vocabularies."""

from dataclasses import dataclass
from pathlib import Path

from zoo.config import DataConfig
from zoo.data.tokenize import Tokenizer
from zoo.data.vocab import Vocab
from zoo.errors import ZooError


@dataclass
class TextPipeline:
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    src_vocab: Vocab
    tgt_vocab: Vocab

    FILES = ("src_vocab.json", "tgt_vocab.json")

    @classmethod
    def build(cls, data: DataConfig, train_src: list[str], train_tgt: list[str]) -> "TextPipeline":
        """Tokenizers for the pair and vocabularies from the *training* sentences only."""
        src_tok, tgt_tok = Tokenizer(data.src_lang, data.lowercase), Tokenizer(data.tgt_lang, data.lowercase)
        src_vocab = Vocab.build([src_tok.tokenize(s) for s in train_src], data.min_freq)
        tgt_vocab = Vocab.build([tgt_tok.tokenize(s) for s in train_tgt], data.min_freq)
        return cls(src_tok, tgt_tok, src_vocab, tgt_vocab)

    @classmethod
    def load(cls, data: DataConfig, directory, vocab_sizes: tuple[int, int] | None = None) -> "TextPipeline":
        """The pipeline saved in ``directory`` by :meth:`save`.

        Args:
          data: the data config (languages, lowercasing) the vocabularies were built with.
          directory: the folder holding ``src_vocab.json`` and ``tgt_vocab.json``.
          vocab_sizes: ``(src_vocab_size, tgt_vocab_size)`` of the model the vocabularies must
            fit (from the workdir's ``config.json``), or None for no check.

        Raises:
          ZooError: a vocabulary file is missing or damaged, or its size differs from ``vocab_sizes``
            (an edited or foreign file would shift every token id), naming the file.
        """
        directory = Path(directory)
        vocabs = [Vocab.load(directory / name) for name in cls.FILES]
        for name, vocab, size, side in zip(cls.FILES, vocabs, vocab_sizes or (None, None), ("src", "tgt")):
            if size is not None and len(vocab) != size:
                raise ZooError(f"{directory / name}: {len(vocab)} tokens, but the model was built for "
                               f"{side}_vocab_size={size}; the file was edited or belongs to another workdir")
        return cls(Tokenizer(data.src_lang, data.lowercase), Tokenizer(data.tgt_lang, data.lowercase), *vocabs)

    def save(self, directory) -> None:
        self.src_vocab.save(Path(directory) / self.FILES[0])
        self.tgt_vocab.save(Path(directory) / self.FILES[1])

    def encode_source(self, sentences: list[str]) -> list[list[int]]:
        return [self.src_vocab.encode(self.src_tokenizer.tokenize(s)) for s in sentences]

    def encode_target(self, sentences: list[str]) -> list[list[int]]:
        return [self.tgt_vocab.encode(self.tgt_tokenizer.tokenize(s)) for s in sentences]
