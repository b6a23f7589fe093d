"""Token <-> id vocabularies, built on training data only."""

import json
from collections import Counter
from pathlib import Path

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
        counts = Counter(t for s in sentences for t in s)
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
        Path(path).write_text(json.dumps(self.itos, ensure_ascii=False))

    @classmethod
    def load(cls, path) -> "Vocab":
        return cls(json.loads(Path(path).read_text()))
