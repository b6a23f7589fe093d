"""The Tatoeba English–French corpus: manythings.org's release of 2019-04-07 (d2l.ai's ``fra-eng``,
167,130 pairs from tatoeba.org, CC BY 2.0; attribution: www.manythings.org/anki and tatoeba.org).

File: ``<data_dir>/tatoeba-eng-fra/fra.txt.gz``, one pair a line, ``English<TAB>French``
(later releases add a third, attribution column, which is ignored), untokenized, original case.

Split. The corpus has no official split, and many English sentences repeat with different French
translations (116,830 distinct English sides), so the split is made here, deterministically, on
the English side alone:

    bucket = int(sha256(normalise(english))[:8 bytes], big-endian) mod 100
    train if bucket < 90, val if bucket < 95, test otherwise

with ``normalise`` = Unicode NFKC, case folding, whitespace runs collapsed to one space. Every
pair whose English sides normalise alike lands in the same split, whichever language is the
source, so no English sentence of val or test was seen in training (about 90/5/5 of the pairs).

Tokenization: Moses (sacremoses, :class:`zoo.data.tokenize.Tokenizer`) with ``-l en`` and
``-l fr``; its French punctuation normalisation turns the narrow no-break spaces of ``Cours !``
into plain ones, and its French tokenizer keeps elisions on the left (``m' écoutez``).
"""

import hashlib
import unicodedata

from zoo.data.text import read_lines
from zoo.errors import ZooError

LANGS = ("en", "fr")
SPLITS = ("train", "val", "test")
BOUNDS = (90, 95)  # bucket < 90: train, < 95: val, else test


def normalise(english: str) -> str:
    """The form of an English sentence that decides its split: NFKC, case-folded, single spaces."""
    return " ".join(unicodedata.normalize("NFKC", english).casefold().split())


def split_of(english: str) -> str:
    """"train", "val" or "test" for a pair with this English side (see the module docstring)."""
    digest = hashlib.sha256(normalise(english).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return "train" if bucket < BOUNDS[0] else "val" if bucket < BOUNDS[1] else "test"


def read_pairs(path) -> list[tuple[str, str]]:
    """``(english, french)`` of every line of a Tatoeba file (plain or .gz).

    Raises:
      ZooError: as :func:`zoo.data.text.read_lines` (missing, unreadable, empty, invalid UTF-8),
        or a line that is not ``English<TAB>French[<TAB>attribution]`` or has an empty side
        (naming the file and line).
    """
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split("\t")
        if len(columns) not in (2, 3):
            raise ZooError(f"{path}:{number}: expected English<TAB>French (2 or 3 tab-separated columns), "
                           f"got {len(columns)}")
        english, french = columns[0].strip(), columns[1].strip()
        if not english or not french:
            raise ZooError(f"{path}:{number}: empty {'English' if not english else 'French'} side")
        pairs.append((english, french))
    return pairs


def load_split(path, split: str, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    """Source and target sentences of one split, in file order.

    Args:
      path: the Tatoeba file. split: one of :data:`SPLITS`. src_lang, tgt_lang: "en" and "fr"
        in either order (checked by the caller, :func:`zoo.data.corpora.load_split`).

    Raises:
      ZooError: as :func:`read_pairs`.
    """
    pairs = [pair for pair in read_pairs(path) if split_of(pair[0]) == split]
    if src_lang == "fr":
        pairs = [(french, english) for english, french in pairs]
    return [src for src, _ in pairs], [tgt for _, tgt in pairs]
