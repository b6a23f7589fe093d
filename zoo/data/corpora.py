"""Where corpora live, and how to get them.

The data directory is ``--data-dir``, else ``$ZOO_DATA_DIR``, else ``~/.cache/zoo/data``.

* ``multi30k`` (Elliott et al. 2016; de, en; splits train, val, test2016) is read from
  ``<data_dir>/multi30k/<split>.<lang>.gz``, the files of github.com/multi30k/dataset
  ``data/task1/raw``.
* ``tatoeba`` (English–French; en, fr; splits train, val, test made by a hash of the English side,
  see :mod:`zoo.data.tatoeba`) is read from ``<data_dir>/tatoeba-eng-fra/fra.txt.gz``, d2l.ai's
  ``fra-eng.zip`` ``fra.txt`` gzipped.

Where a file is missing and the machine has a network, it is downloaded from those sources.
"""

import gzip
import os
import urllib.request
import zipfile
from pathlib import Path

from zoo.data import tatoeba
from zoo.data.text import read_parallel
from zoo.errors import ZooError

MULTI30K_COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/{commit}/data/task1/raw/{name}.{lang}.gz"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}
MULTI30K_LANGS = ("de", "en")
TATOEBA_URL = "http://d2l-data.s3-accelerate.amazonaws.com/fra-eng.zip"  # holds fra-eng/fra.txt
# dataset -> (folder under the data directory, split names, languages)
DATASETS = {"multi30k": ("multi30k", tuple(MULTI30K_SPLITS), MULTI30K_LANGS),
            "tatoeba": ("tatoeba-eng-fra", tatoeba.SPLITS, tatoeba.LANGS)}


def resolve_data_dir(data_dir=None) -> Path:
    """``data_dir`` if given, else ``$ZOO_DATA_DIR``, else ``~/.cache/zoo/data``."""
    return Path(data_dir or os.environ.get("ZOO_DATA_DIR") or Path.home() / ".cache" / "zoo" / "data")


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(dest.suffix + ".partial")
    try:
        urllib.request.urlretrieve(url, partial)
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise ZooError(f"{dest}: missing, and downloading {url} failed ({e})") from None
    partial.rename(dest)


def _check(dataset: str, split: str, src_lang: str, tgt_lang: str) -> None:
    if dataset not in DATASETS:
        raise ZooError(f"--data.dataset {dataset!r}: choose from {', '.join(DATASETS)}")
    _, splits, langs = DATASETS[dataset]
    if split not in splits:
        raise ZooError(f"--split {split!r}: {dataset} has {', '.join(splits)}")
    for lang in (src_lang, tgt_lang):
        if lang not in langs:
            raise ZooError(f"language {lang!r}: {dataset} has {', '.join(langs)}")
    if src_lang == tgt_lang:
        raise ZooError(f"--data.src-lang and --data.tgt-lang are both {src_lang!r}: choose two languages of {dataset}")


def _multi30k_paths(root: Path, split: str, src_lang: str, tgt_lang: str) -> tuple[Path, Path]:
    """The split's source and target files, downloaded if missing."""
    name = MULTI30K_SPLITS[split]
    paths = []
    for lang in (src_lang, tgt_lang):
        path = root / f"{name}.{lang}.gz"
        if not path.exists():
            _download(MULTI30K_URL.format(commit=MULTI30K_COMMIT, name=name, lang=lang), path)
        paths.append(path)
    return paths[0], paths[1]


def _tatoeba_path(root: Path) -> Path:
    """``fra.txt.gz``, made from d2l.ai's ``fra-eng.zip`` if missing."""
    path = root / "fra.txt.gz"
    if not path.exists():
        archive = root / "fra-eng.zip"
        _download(TATOEBA_URL, archive)
        try:
            with zipfile.ZipFile(archive) as z:
                text = z.read("fra-eng/fra.txt")
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise ZooError(f"{archive}: cannot read fra-eng/fra.txt from it ({e})") from None
        path.write_bytes(gzip.compress(text))
    return path


def split_paths(dataset: str, split: str, src_lang: str, tgt_lang: str, data_dir=None) -> tuple[Path, ...]:
    """The files a named split is read from (downloaded if missing): multi30k's source and
    target files, or tatoeba's one file.

    Raises:
      ZooError: as :func:`load_split`, before reading the files.
    """
    _check(dataset, split, src_lang, tgt_lang)
    root = resolve_data_dir(data_dir) / DATASETS[dataset][0]
    if dataset == "tatoeba":
        return (_tatoeba_path(root),)
    return _multi30k_paths(root, split, src_lang, tgt_lang)


def load_split(dataset: str, split: str, src_lang: str, tgt_lang: str, data_dir=None) -> tuple[list[str], list[str]]:
    """Raw (untokenized) source and target sentences of a named split, line-aligned.

    Args:
      dataset: a key of :data:`DATASETS`. split: one of its splits (multi30k: train, val,
        test2016; tatoeba: train, val, test). src_lang, tgt_lang: two of its languages.
      data_dir: the data directory (None: :func:`resolve_data_dir`).

    Raises:
      ZooError: unknown dataset, split or language, one language twice, a missing file that
        cannot be downloaded, or a bad file (naming the file and line: see
        :func:`zoo.data.text.read_lines` and :func:`zoo.data.tatoeba.read_pairs`).
    """
    paths = split_paths(dataset, split, src_lang, tgt_lang, data_dir)
    if dataset == "tatoeba":
        return tatoeba.load_split(paths[0], split, src_lang, tgt_lang)
    return read_parallel(*paths)
