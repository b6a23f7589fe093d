"""Moses tokenization (sacremoses), as the Multi30k ``tok/`` files were made:
punctuation normalisation, optional lowercasing, ``tokenizer.perl -l L``."""

from functools import cached_property

from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer


class Tokenizer:
    """Sentence <-> tokens for one language."""

    def __init__(self, lang: str, lowercase: bool = True):
        self.lang = lang
        self.lowercase = lowercase

    @cached_property
    def _normalizer(self):
        return MosesPunctNormalizer(lang=self.lang)

    @cached_property
    def _tokenizer(self):
        return MosesTokenizer(lang=self.lang)

    @cached_property
    def _detokenizer(self):
        return MosesDetokenizer(lang=self.lang)

    def tokenize(self, sentence: str) -> list[str]:
        text = self._normalizer.normalize(sentence)
        if self.lowercase:
            text = text.lower()
        return self._tokenizer.tokenize(text, escape=False)

    def detokenize(self, tokens: list[str]) -> str:
        return self._detokenizer.detokenize(tokens)
