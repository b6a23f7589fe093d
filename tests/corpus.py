"""A tiny German-English corpus in the Multi30k file layout, made by the tests themselves."""

import gzip
import random
from pathlib import Path

NOUNS = {"Mann": "man", "Frau": "woman", "Hund": "dog", "Kind": "child", "Junge": "boy", "Katze": "cat"}
VERBS = {"läuft": "runs", "springt": "jumps", "schläft": "sleeps", "isst": "eats", "singt": "sings"}
PLACES = {"im Park": "in the park", "am Strand": "on the beach", "im Haus": "in the house", "auf der Straße": "on the street"}


def sentence_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        noun, verb, place = rng.choice(list(NOUNS)), rng.choice(list(VERBS)), rng.choice(list(PLACES))
        pairs.append((f"Ein {noun} {verb} {place}.", f"A {NOUNS[noun]} {VERBS[verb]} {PLACES[place]}."))
    return pairs


def write_tiny_multi30k(root: Path, sizes=(("train", 48), ("val", 8), ("test_2016_flickr", 8))) -> Path:
    """Write ``root/multi30k/<split>.{de,en}.gz``; returns ``root`` (a data dir)."""
    folder = Path(root) / "multi30k"
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(sizes):
        pairs = sentence_pairs(n, seed)
        for lang, column in (("de", 0), ("en", 1)):
            text = "".join(p[column] + "\n" for p in pairs)
            (folder / f"{split}.{lang}.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    return Path(root)
