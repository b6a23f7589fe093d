"""Prepare once, stream always: the training split tokenized into on-disk shards of token ids.

``python -m zoo.data.prepare --data.dataset multi30k --data.tokenizer sentencepiece`` (also run by
``train.py`` when the prepared data are missing, stale or damaged) reads the training split,
builds the tokenizers and vocabularies (:class:`~zoo.data.pipeline.TextPipeline`), and encodes the
pairs in worker processes, one shard each, into a folder of the prepared-data cache
(``--prepared-dir``, else ``$ZOO_PREPARED_DIR``, else ``~/.cache/zoo/prepared``) named by its key::

    key = SHA-256(format version, the DataConfig fields that change the ids, SHA-256 of each corpus file)

so a changed corpus file or data config is a new key (the old folder is stale, not reused), and
runs with the same data share one preparation. The folder holds::

    train-00000-of-00002.arrayrecord ...  one record a pair: its source ids then its target ids
                                          (the manifest's dtype; no <bos>/<eos>)
    lengths.npy                           (N, 2) int32: each pair's source and target tokens,
                                          all the batch planner reads (8 bytes a pair)
    src_vocab.json, tgt_vocab.json        the pipeline that made the ids (moses),
      or spm.model                        or (sentencepiece)
    manifest.json                         the key, the data config, N, and every file's size

**ArrayRecord** (the ``array-record`` package): Grain reads it natively
(``grain.sources.ArrayRecordDataSource``, several shards as one source) with random access to any
record by its index, which a shuffled batch plan needs and which each process of a multi-process
run uses to read only its own rows; files are written sequentially by one writer a shard, so the
shards are made in parallel with no coordination. (A flat ``.npy`` of tokens plus offsets would
also give random access, but Grain would need a hand-written source for it.)

Atomicity: everything is written into ``.<key>.tmp-<pid>/`` beside the final folder, the manifest
last, then the folder is renamed into place. A preparation killed at any point leaves a temporary
folder that no run reads (it is removed by the next preparation of that key); a final folder
whose manifest is missing or whose files' sizes differ from it (truncated) is prepared again.
"""

import concurrent.futures
import copy
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from zoo.config import DataConfig
from zoo.data.corpora import load_split, split_paths
from zoo.data.pipeline import TextPipeline
from zoo.data.tokenize import Tokenizer
from zoo.data.vocab import Vocab
from zoo.errors import ZooError
from zoo.io import read_json, write_text

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LENGTHS = "lengths.npy"
# DataConfig fields that do not change the ids: they act when batches are planned, from lengths.npy
PLANNING_FIELDS = ("length_multiple", "max_length")
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"  # one record a chunk: random access reads one record
# Pairs a worker process takes at least: below, starting a process (about 1.5 s with its imports)
# costs more than it saves; a small corpus is prepared in this process.
MIN_PAIRS_PER_WORKER = 10_000


def prepared_root(prepared_dir=None) -> Path:
    """``prepared_dir`` if given, else ``$ZOO_PREPARED_DIR``, else ``~/.cache/zoo/prepared``."""
    return Path(prepared_dir or os.environ.get("ZOO_PREPARED_DIR") or Path.home() / ".cache" / "zoo" / "prepared")


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_key(data: DataConfig, paths) -> str:
    """The prepared data's key (see the module docstring): a SHA-256 hex digest."""
    fields = {k: v for k, v in dataclasses.asdict(data).items() if k not in PLANNING_FIELDS}
    h = hashlib.sha256(json.dumps({"version": FORMAT_VERSION, "data": fields}, sort_keys=True).encode())
    for path in paths:
        h.update(_file_digest(Path(path)).encode())
    return h.hexdigest()


class PreparedData:
    """A prepared training split (see the module docstring), opened for reading.

    ``lengths`` (N, 2) int32 is in memory; the ids stay on disk and are read a batch at a time
    by :meth:`read` through Grain's ``ArrayRecordDataSource``.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.manifest = read_json(self.directory / MANIFEST)
        self.lengths = np.load(self.directory / LENGTHS)
        self.dtype = np.dtype(self.manifest["dtype"])
        self.rows = np.arange(len(self.lengths))  # the records this view reads: example i is record rows[i]
        self._source = None

    def __len__(self) -> int:
        return len(self.lengths)

    def within_max_length(self, max_length: int) -> tuple["PreparedData", int]:
        """A view of the pairs whose source and target, each with <eos>, have at most
        ``max_length`` tokens (as :func:`zoo.data.dataset.within_max_length`), and how many were left out."""
        kept = np.flatnonzero(self.lengths.max(axis=1) + 1 <= max_length)
        view = copy.copy(self)
        view.rows, view.lengths = self.rows[kept], self.lengths[kept]
        return view, len(self.lengths) - len(kept)

    @property
    def source(self):
        """The shards as one ``grain.sources.ArrayRecordDataSource`` (opened on first use)."""
        if self._source is None:
            import grain

            self._source = grain.sources.ArrayRecordDataSource([str(self.directory / s) for s in self.manifest["shards"]])
        return self._source

    def read(self, indices) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Source and target ids (int32 arrays, no <eos>) of the pairs ``indices``, read from the shards."""
        indices = np.asarray(indices, np.int64)
        records = self.source.__getitems__(self.rows[indices].tolist()) if len(indices) else []
        srcs, tgts = [], []
        for n, record in zip(self.lengths[indices, 0], records):
            ids = np.frombuffer(record, self.dtype).astype(np.int32)
            srcs.append(ids[:n])
            tgts.append(ids[n:])
        return srcs, tgts

    def pipeline(self, data: DataConfig) -> TextPipeline:
        """The tokenizers and vocabularies that made the ids."""
        return TextPipeline.load(data, self.directory)


def damage(directory: Path) -> str | None:
    """Why the prepared folder cannot be trusted (one line naming the file), or None if it can:
    no manifest, another format or key, or a file whose size is not the manifest's."""
    if not (directory / MANIFEST).is_file():
        return f"{directory}: no {MANIFEST} (an unfinished preparation)"
    try:
        manifest = read_json(directory / MANIFEST)
    except ZooError as e:
        return str(e)
    if manifest.get("version") != FORMAT_VERSION or manifest.get("key") != directory.name:
        return f"{directory / MANIFEST}: made for another key or format version"
    for name, size in manifest["sizes"].items():
        path = directory / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            return f"{path}: {'missing' if actual is None else f'{actual} bytes'}, the manifest says {size} bytes (truncated?)"
    return None


def ensure_prepared(data: DataConfig, data_dir=None, prepared_dir=None, workers: int | None = None,
                    pipeline_dir=None, log=print) -> PreparedData:
    """The prepared training split of ``data``: the cached one when it is intact, else prepared now.

    Args:
      data: the data config. data_dir: the corpora (:func:`zoo.data.corpora.resolve_data_dir`).
      prepared_dir: the cache (:func:`prepared_root`).
      workers: worker processes (default: every core, at most one per :data:`MIN_PAIRS_PER_WORKER` pairs).
      pipeline_dir: a folder holding the pipeline the ids must be made with (a workdir started
        before); the cached preparation is used only if it was made with identical files, else
        it is prepared again with that pipeline. None: the preparation builds its own.
      log: where the one line saying why data are (re)prepared goes.

    Raises:
      ZooError: bad corpus files, a data config SentencePiece cannot train on, or a cache that
        cannot be written (naming the file).
    """
    paths = split_paths(data.dataset, "train", data.src_lang, data.tgt_lang, data_dir)
    root = prepared_root(prepared_dir)
    directory = root / data_key(data, paths)
    why = damage(directory) if directory.exists() else f"{directory}: not prepared yet"
    if why is None and pipeline_dir is not None and not _same_pipeline(data, pipeline_dir, directory):
        why = f"{directory}: made with another vocabulary than {pipeline_dir}'s"
    if why is None:
        return PreparedData(directory)
    log(f"preparing the training data ({why})")
    prepare(data, paths, directory, workers, pipeline_dir, data_dir)
    return PreparedData(directory)


def _same_pipeline(data: DataConfig, a, b) -> bool:
    return all(_file_digest(Path(a) / f) == _file_digest(Path(b) / f) for f in TextPipeline.files(data))


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def prepare(data: DataConfig, paths, directory: Path, workers: int | None = None, pipeline_dir=None, data_dir=None) -> None:
    """Prepare the training split into ``directory`` atomically (see the module docstring).

    The pairs are cut into ``workers`` contiguous shards, encoded in ``workers`` processes. Word
    level: the workers tokenize their shards (Moses) and count the tokens; the vocabularies are
    built from the summed counts, exactly as :meth:`TextPipeline.build` builds them; then the workers
    encode the tokenized text they kept. SentencePiece: the model is trained here (on up to
    :data:`zoo.data.subword.INPUT_SENTENCE_SIZE` sentences), then the workers encode.

    Raises:
      ZooError: as :func:`ensure_prepared`.
    """
    src, tgt = load_split(data.dataset, "train", data.src_lang, data.tgt_lang, data_dir)
    workers = workers or min(os.cpu_count() or 1, max(1, len(src) // MIN_PAIRS_PER_WORKER))
    root = directory.parent
    tmp = root / f".{directory.name}.tmp-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".{directory.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise ZooError(f"{tmp}: cannot write ({e.strerror or e})") from None
    try:
        _prepare_into(data, src, tgt, paths, tmp, directory.name, workers, pipeline_dir)
        if directory.exists():
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except OSError as e:
        raise ZooError(f"{getattr(e, 'filename', None) or tmp}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare_into(data, src, tgt, paths, tmp: Path, key: str, workers: int, pipeline_dir) -> None:
    chunks = [c for c in _chunks(len(src), workers) if c[1] > c[0]] or [(0, 0)]
    names = [f"train-{i:05d}-of-{len(chunks):05d}.arrayrecord" for i in range(len(chunks))]
    if workers > 1:  # spawn: no fork of a process that may hold JAX's threads
        pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(chunks)), mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(1)  # one worker: this process, no start-up
    with pool:
        if pipeline_dir is not None:
            pipeline = TextPipeline.load(data, pipeline_dir)
            tokenized = None
        elif data.tokenizer == "sentencepiece":
            origin = " and ".join(map(str, paths))
            pipeline, tokenized = TextPipeline.build(data, src, tgt, origin), None
        else:
            tokenized = [str(tmp / f"tokens-{i:05d}.json") for i in range(len(chunks))]
            jobs = [pool.submit(_tokenize_shard, data, src[a:b], tgt[a:b], path) for (a, b), path in zip(chunks, tokenized)]
            counts = [Counter(), Counter()]
            for job in jobs:
                for total, part in zip(counts, job.result()):
                    total.update(part)
            src_tok, tgt_tok = Tokenizer(data.src_lang, data.lowercase), Tokenizer(data.tgt_lang, data.lowercase)
            pipeline = TextPipeline(src_tok, tgt_tok, Vocab.from_counts(counts[0], data.min_freq),
                                    Vocab.from_counts(counts[1], data.min_freq))
        pipeline.save(tmp)
        dtype = np.uint16 if max(len(pipeline.src_vocab), len(pipeline.tgt_vocab)) <= 1 << 16 else np.int32
        jobs = []
        for i, ((a, b), name) in enumerate(zip(chunks, names)):
            text = (tokenized[i],) if tokenized else (src[a:b], tgt[a:b])
            jobs.append(pool.submit(_encode_shard, data, str(tmp), text, str(tmp / name), np.dtype(dtype).name))
        lengths = np.concatenate([job.result() for job in jobs]).reshape(-1, 2).astype(np.int32)
    for path in tokenized or []:
        os.unlink(path)
    np.save(tmp / LENGTHS, lengths)
    files = [*names, LENGTHS, *TextPipeline.files(data)]
    manifest = {"version": FORMAT_VERSION, "key": key, "num_pairs": len(lengths),
                "dtype": np.dtype(dtype).name, "shards": names, "data": dataclasses.asdict(data),
                "corpus": [str(p) for p in paths], "sizes": {f: (tmp / f).stat().st_size for f in files}}
    write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))


def _tokenize_shard(data: DataConfig, src: list[str], tgt: list[str], path: str) -> tuple[Counter, Counter]:
    """Worker: Moses-tokenize a shard, keep the tokens in ``path``, return each side's token counts."""
    src_tok, tgt_tok = Tokenizer(data.src_lang, data.lowercase), Tokenizer(data.tgt_lang, data.lowercase)
    tokens = [[src_tok.tokenize(s) for s in src], [tgt_tok.tokenize(t) for t in tgt]]
    Path(path).write_text(json.dumps(tokens, ensure_ascii=False))
    return Counter(t for s in tokens[0] for t in s), Counter(t for s in tokens[1] for t in s)


def _encode_shard(data: DataConfig, pipeline_dir: str, text: tuple, path: str, dtype: str) -> np.ndarray:
    """Worker: encode a shard (raw sentences, or a tokenized shard's file) into an ArrayRecord file
    at ``path``; returns its pairs' source and target lengths, flattened."""
    from array_record.python.array_record_module import ArrayRecordWriter

    pipeline = TextPipeline.load(data, pipeline_dir)
    if len(text) == 1:
        src_tokens, tgt_tokens = json.loads(Path(text[0]).read_text())
        src_ids = [pipeline.src_vocab.encode(s) for s in src_tokens]
        tgt_ids = [pipeline.tgt_vocab.encode(t) for t in tgt_tokens]
    else:
        src_ids, tgt_ids = pipeline.encode_source(text[0]), pipeline.encode_target(text[1])
    lengths = np.empty((len(src_ids), 2), np.int32)
    try:
        writer = ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)
        for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
            writer.write(np.array(s + t, dtype).tobytes())
            lengths[i] = len(s), len(t)
        writer.close()
    except RuntimeError as e:  # array_record's I/O errors, e.g. "write() failed: No space left on device; ..."
        raise OSError(0, str(e).split(";")[0], path) from None
    return lengths.ravel()


def main(argv=None) -> int:
    """``python -m zoo.data.prepare``: prepare a dataset's training split (see the module docstring)."""
    import tyro

    @dataclasses.dataclass(frozen=True)
    class Args:
        data: DataConfig = DataConfig()
        data_dir: str | None = None  # corpora root (default: $ZOO_DATA_DIR, else ~/.cache/zoo/data)
        prepared_dir: str | None = None  # the cache (default: $ZOO_PREPARED_DIR, else ~/.cache/zoo/prepared)
        workers: int | None = None  # worker processes (default: every core)

    args = tyro.cli(Args, args=argv, prog="python -m zoo.data.prepare", description=__doc__)
    try:
        prepared = ensure_prepared(args.data, args.data_dir, args.prepared_dir, args.workers)
    except ZooError as e:
        print(f"prepare: error: {e}", file=sys.stderr)
        return 2
    print(f"{prepared.directory}: {len(prepared)} pairs in {len(prepared.manifest['shards'])} shards")
    return 0


if __name__ == "__main__":
    sys.exit(main())
