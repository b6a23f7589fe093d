"""Where corpora live, and how to get them.

The data directory is ``--data-dir``, else ``$ZOO_DATA_DIR``, else ``~/.cache/zoo/data``.
Multi30k (Elliott et al. 2016) is read from ``<data_dir>/multi30k/<split>.<lang>.gz``, the
files of github.com/multi30k/dataset ``data/task1/raw``; where they are missing and the machine
has a network, they are downloaded from that repository.
"""

import os
import urllib.request
from pathlib import Path

from zoo.data.text import read_parallel
from zoo.errors import ZooError

MULTI30K_COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/{commit}/data/task1/raw/{name}.{lang}.gz"
MULTI30K_SPLITS = {"train": "train", "val": "val", "test2016": "test_2016_flickr"}
MULTI30K_LANGS = ("de", "en")
DATASETS = {"multi30k": MULTI30K_SPLITS}


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


def split_paths(dataset: str, split: str, src_lang: str, tgt_lang: str, data_dir=None) -> tuple[Path, Path]:
    """Paths of a named split's source and target files, downloading them if missing.

    Raises:
      ZooError: unknown dataset, split or language, or a missing file that cannot be downloaded.
    """
    if dataset not in DATASETS:
        raise ZooError(f"--dataset {dataset!r}: choose from {', '.join(DATASETS)}")
    splits = DATASETS[dataset]
    if split not in splits:
        raise ZooError(f"--split {split!r}: {dataset} has {', '.join(splits)}")
    for lang in (src_lang, tgt_lang):
        if lang not in MULTI30K_LANGS:
            raise ZooError(f"language {lang!r}: {dataset} has {', '.join(MULTI30K_LANGS)}")
    root = resolve_data_dir(data_dir) / dataset
    paths = []
    for lang in (src_lang, tgt_lang):
        path = root / f"{splits[split]}.{lang}.gz"
        if not path.exists():
            _download(MULTI30K_URL.format(commit=MULTI30K_COMMIT, name=splits[split], lang=lang), path)
        paths.append(path)
    return paths[0], paths[1]


def load_split(dataset: str, split: str, src_lang: str, tgt_lang: str, data_dir=None) -> tuple[list[str], list[str]]:
    """Raw (untokenized) source and target sentences of a named split."""
    return read_parallel(*split_paths(dataset, split, src_lang, tgt_lang, data_dir))
