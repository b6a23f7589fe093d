"""Sentences <-> padded id batches for one language pair: tokenizers plus vocabularies."""

from dataclasses import dataclass
from pathlib import Path

from zoo.config import DataConfig
from zoo.data.tokenize import Tokenizer
from zoo.data.vocab import Vocab


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
    def load(cls, data: DataConfig, directory) -> "TextPipeline":
        directory = Path(directory)
        return cls(
            Tokenizer(data.src_lang, data.lowercase),
            Tokenizer(data.tgt_lang, data.lowercase),
            Vocab.load(directory / cls.FILES[0]),
            Vocab.load(directory / cls.FILES[1]),
        )

    def save(self, directory) -> None:
        self.src_vocab.save(Path(directory) / self.FILES[0])
        self.tgt_vocab.save(Path(directory) / self.FILES[1])

    def encode_source(self, sentences: list[str]) -> list[list[int]]:
        return [self.src_vocab.encode(self.src_tokenizer.tokenize(s)) for s in sentences]

    def encode_target(self, sentences: list[str]) -> list[list[int]]:
        return [self.tgt_vocab.encode(self.tgt_tokenizer.tokenize(s)) for s in sentences]
