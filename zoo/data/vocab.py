"""Token <-> id vocabularies, built on training data only."""

import json
from collections import Counter

from zoo.errors import ZooError
from zoo.io import read_json, write_text

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)


class Vocab:
    """Ids 0-3 are ``<pad> <unk> <bos> <eos>``; then tokens by descending frequency, ties alphabetical."""

    def __init__(self, tokens: list[str]):
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, sentences: list[list[str]], min_freq: int = 2) -> "Vocab":
        """The vocabulary of tokenized ``sentences``: tokens seen at least ``min_freq`` times."""
        return cls.from_counts(Counter(t for s in sentences for t in s), min_freq)

    @classmethod
    def from_counts(cls, counts: Counter, min_freq: int = 2) -> "Vocab":
        """The vocabulary of tokens counted ``counts`` times (e.g. summed over shards), as :meth:`build`."""
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS), key=lambda t: (-counts[t], t))
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.stoi.get(t, UNK_ID) for t in tokens]

    def decode(self, ids) -> list[str]:
        """Ids up to (not including) the first ``<eos>``, as tokens; ``<pad>``/``<bos>`` are skipped."""
        out = []
        for i in ids:
            if int(i) == EOS_ID:
                break
            if int(i) not in (PAD_ID, BOS_ID):
                out.append(self.itos[int(i)])
        return out

    def save(self, path) -> None:
        """Write the tokens as a JSON list (atomically; ZooError naming ``path`` if it cannot)."""
        write_text(path, json.dumps(self.itos, ensure_ascii=False))

    @classmethod
    def load(cls, path) -> "Vocab":
        """Read a vocabulary written by :meth:`save`.

        Raises:
          ZooError: the file is missing, not JSON (e.g. truncated), not a list of distinct strings,
            or does not start with the special tokens; naming the file.
        """
        tokens = read_json(path)
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ZooError(f"{path}: not a vocabulary (a JSON list of token strings)")
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ZooError(f"{path}: a vocabulary starts with {list(SPECIALS)}, this one with {tokens[: len(SPECIALS)]}")
        if len(set(tokens)) != len(tokens):
            raise ZooError(f"{path}: token {next(t for t, c in Counter(tokens).items() if c > 1)!r} appears twice")
        return cls(tokens)
