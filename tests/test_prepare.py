"""Prepared on-disk data: the same batches as in memory, keyed by corpus and config, never half-trusted."""

import dataclasses
import gzip
import json

import numpy as np
import pytest
from corpus import write_tiny_multi30k

from zoo.config import DataConfig
from zoo.data import prepare as prepare_module
from zoo.data.batching import batch_order, token_batches
from zoo.data.corpora import load_split
from zoo.data.loader import local_batch
from zoo.data.pipeline import TextPipeline
from zoo.data.prepare import MANIFEST, PreparedData, ensure_prepared
from zoo.errors import ZooError

WORDS = DataConfig(min_freq=1)


@pytest.fixture
def data_dir(tmp_path):
    return write_tiny_multi30k(tmp_path / "data")


def in_memory(data: DataConfig, data_dir):
    src, tgt = load_split("multi30k", "train", "de", "en", data_dir)
    pipeline = TextPipeline.build(data, src, tgt)
    return pipeline, (pipeline.encode_source(src), pipeline.encode_target(tgt))


def batches_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [1, 2])
def test_prepared_data_yield_the_in_memory_batches_of_the_same_seed(tmp_path, data_dir, workers):
    pipeline, ids = in_memory(WORDS, data_dir)
    prepared = ensure_prepared(WORDS, data_dir, tmp_path / "prepared", workers=workers, log=lambda line: None)
    assert len(prepared.manifest["shards"]) == workers
    assert prepared.pipeline(WORDS).src_vocab.itos == pipeline.src_vocab.itos  # counts summed over shards: same vocabulary
    assert prepared.pipeline(WORDS).tgt_vocab.itos == pipeline.tgt_vocab.itos
    np.testing.assert_array_equal(prepared.lengths, [[len(s), len(t)] for s, t in zip(*ids)])
    src_lengths, tgt_lengths = prepared.lengths.T
    plans = [batch_order(src_lengths, tgt_lengths, 8, seed=5, epoch=1), token_batches(src_lengths, tgt_lengths, 96, 5, 1)]
    for plan in plans:
        for spec in plan:
            assert batches_equal(local_batch(prepared, spec, 0, 1), local_batch(ids, spec, 0, 1))


def test_two_processes_read_disjoint_rows_that_cover_the_batch(tmp_path, data_dir, monkeypatch):
    prepared = ensure_prepared(WORDS, data_dir, tmp_path / "prepared", workers=1, log=lambda line: None)
    reads = []
    read = prepared.read
    monkeypatch.setattr(prepared, "read", lambda indices: reads.append(list(indices)) or read(indices))
    spec = batch_order(*prepared.lengths.T, 8, seed=0, epoch=0)[0]
    whole = local_batch(prepared, spec, 0, 1)
    reads.clear()
    halves = [local_batch(prepared, spec, p, 2) for p in (0, 1)]
    assert len(reads) == 2 and not set(reads[0]) & set(reads[1])
    assert sorted(reads[0] + reads[1]) == sorted(spec.indices.tolist())
    for name in whole:
        np.testing.assert_array_equal(np.concatenate([h[name] for h in halves]), whole[name])


def test_a_changed_corpus_or_config_is_prepared_again_and_planning_fields_are_not(tmp_path, data_dir):
    cache, logs = tmp_path / "prepared", []
    first = ensure_prepared(WORDS, data_dir, cache, workers=1, log=logs.append)
    again = ensure_prepared(dataclasses.replace(WORDS, max_length=20, length_multiple=4), data_dir, cache, 1, log=logs.append)
    assert again.directory == first.directory and len(logs) == 1  # only batching changed: the cache is used
    (data_dir / "multi30k" / "train.en.gz").write_bytes(gzip.compress(b"One two three.\n" * 48))
    stale = ensure_prepared(WORDS, data_dir, cache, workers=1, log=logs.append)
    assert stale.directory != first.directory and len(logs) == 2
    assert stale.pipeline(WORDS).tgt_vocab.itos[4:] == [".", "one", "three", "two"]  # 48 each: alphabetical
    np.testing.assert_array_equal(stale.lengths[:, 1], 4)
    other = ensure_prepared(dataclasses.replace(WORDS, lowercase=False), data_dir, cache, workers=1, log=logs.append)
    assert other.directory not in (first.directory, stale.directory)


def test_a_killed_preparation_leaves_nothing_a_later_run_trusts(tmp_path, data_dir, monkeypatch):
    cache = tmp_path / "prepared"

    def killed(*args):
        raise KeyboardInterrupt  # the process dies while the shards are written

    monkeypatch.setattr(prepare_module, "_encode_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(WORDS, data_dir, cache, workers=1)
    assert list(cache.iterdir()) == []  # the temporary folder is removed
    monkeypatch.undo()
    prepared = ensure_prepared(WORDS, data_dir, cache, workers=1, log=lambda line: None)
    key, good = prepared.directory.name, dict(prepared.manifest)
    # a SIGKILL runs no cleanup: its temporary folder stays, and is never read as the prepared data
    (cache / f".{key}.tmp-12345").mkdir()
    (cache / f".{key}.tmp-12345" / "train-00000-of-00001.arrayrecord").write_bytes(b"half")
    (prepared.directory / MANIFEST).unlink()  # a folder without its manifest is unfinished
    logs = []
    rebuilt = ensure_prepared(WORDS, data_dir, cache, workers=1, log=logs.append)
    assert "no manifest.json" in logs[0] and rebuilt.manifest == good
    assert sorted(p.name for p in cache.iterdir()) == [key]  # the killed run's leftovers are gone
    shard = rebuilt.directory / good["shards"][0]
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    logs.clear()
    ensure_prepared(WORDS, data_dir, cache, workers=1, log=logs.append)
    assert f"{shard}: 1000 bytes, the manifest says {good['sizes'][shard.name]} bytes" in logs[0]
    assert PreparedData(rebuilt.directory).read([0])[0][0].tolist() == in_memory(WORDS, data_dir)[1][0][0]


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, data_dir):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ZooError, match=r"file/\.[0-9a-f]{64}\.tmp-\d+: cannot write"):
        ensure_prepared(WORDS, data_dir, tmp_path / "file", workers=1, log=lambda line: None)


def test_the_manifest_names_the_corpus_and_config(tmp_path, data_dir):
    prepared = ensure_prepared(WORDS, data_dir, tmp_path / "prepared", workers=1, log=lambda line: None)
    manifest = json.loads((prepared.directory / MANIFEST).read_text())
    assert manifest["num_pairs"] == 48 and manifest["data"]["min_freq"] == 1 and manifest["dtype"] == "uint16"
    assert [p.rsplit("/", 1)[1] for p in manifest["corpus"]] == ["train.de.gz", "train.en.gz"]


def test_the_data_study_corpus_resamples_train_and_keeps_val_and_test(tmp_path, data_dir):
    from zoo.bench.datascale import synthetic_corpus, table

    out = synthetic_corpus(data_dir, tmp_path / "x3", 3)
    real_src, real_tgt = load_split("multi30k", "train", "de", "en", data_dir)
    src, tgt = load_split("multi30k", "train", "de", "en", out)
    assert len(src) == 3 * len(real_src) and set(zip(src, tgt)) <= set(zip(real_src, real_tgt))  # pairs kept whole
    assert load_split("multi30k", "val", "de", "en", out) == load_split("multi30k", "val", "de", "en", data_dir)
    row = {"pipeline": "subword", "scale": 3, "pairs": 144, "prep_all_cores_sentences_per_s": 12345.6,
           "peak_rss_bytes": 3 * 2**20, "first_step_s": 1.25, "loop_tokens_per_s": 999.5}
    assert table([row]).splitlines()[-1] == "| subword | 3× Multi30k (synthetic) | 144 | — | 12,346 | 3 | 1.2 | 1,000 |"


def test_a_full_disk_is_one_line_naming_the_shard_and_leaves_nothing(tmp_path, data_dir, monkeypatch):
    from array_record.python import array_record_module

    class FullDisk:
        def __init__(self, path, options):
            self.path = path

        def write(self, record):
            raise RuntimeError(f"write() failed: No space left on device; writing {self.path}; at byte 0")

    monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FullDisk)
    with pytest.raises(ZooError, match=r"train-00000-of-00001\.arrayrecord: cannot write \(write\(\) failed: No space left"):
        ensure_prepared(WORDS, data_dir, tmp_path / "prepared", workers=1, log=lambda line: None)
    assert list((tmp_path / "prepared").iterdir()) == []
