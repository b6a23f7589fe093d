"""Reading files, tokenization, vocabularies and batches."""

import gzip
import html
import re
from pathlib import Path

import numpy as np
import pytest

from zoo.data import tatoeba
from zoo.data.batching import (
    TOKEN_BUCKETS,
    BatchSpec,
    batch_order,
    bucket_length,
    chunk_lengths,
    collate,
    group_by_shape,
    token_batches,
)
from zoo.data.corpora import load_split
from zoo.data.loader import process_rows, real_token_share
from zoo.data.text import read_lines, read_parallel
from zoo.data.tokenize import Tokenizer
from zoo.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocab
from zoo.errors import ZooError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def test_read_lines_plain_gzip_and_crlf(tmp_path):
    (tmp_path / "a.txt").write_bytes("eins\r\nzwei\n".encode())
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress("eins\nzwei".encode()))
    assert read_lines(tmp_path / "a.txt") == ["eins", "zwei"]
    assert read_lines(tmp_path / "a.txt.gz") == ["eins", "zwei"]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ZooError, match=r"nope\.de: no such file"):
        read_lines(tmp_path / "nope.de")


@pytest.mark.parametrize("name, content", [("e.txt", b""), ("e.txt.gz", gzip.compress(b"", mtime=0)), ("blank.txt", b"\n\n")],
                         ids=["empty", "empty-gzip", "blank-lines"])
def test_empty_file_is_named(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ZooError, match=re.escape(name) + ": file is empty"):
        read_lines(tmp_path / name)


def test_invalid_utf8_names_file_and_line(tmp_path):
    (tmp_path / "bad.de.gz").write_bytes(gzip.compress(b"gut\nauch gut\nschl\xe4cht\n"))
    with pytest.raises(ZooError, match=r"bad\.de\.gz:3: invalid UTF-8 at byte 4"):
        read_lines(tmp_path / "bad.de.gz")


def test_corrupt_gzip_is_named(tmp_path):
    (tmp_path / "c.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ZooError, match=r"c\.gz: cannot read"):
        read_lines(tmp_path / "c.gz")


def test_parallel_files_must_have_equal_line_counts(tmp_path):
    (tmp_path / "s.de").write_text("a\nb\nc\n")
    (tmp_path / "t.en").write_text("a\nb\n")
    with pytest.raises(ZooError, match=r"s\.de has 3 lines but \S*t\.en has 2"):
        read_parallel(tmp_path / "s.de", tmp_path / "t.en")


def test_tokenizer_lowercases_and_splits_punctuation():
    assert Tokenizer("de").tokenize("Ein Mann fährt Fahrrad.") == ["ein", "mann", "fährt", "fahrrad", "."]
    assert Tokenizer("en", lowercase=False).tokenize("A man's bike, red.") == ["A", "man", "'s", "bike", ",", "red", "."]
    assert Tokenizer("en").detokenize(["a", "man", "'s", "bike", ",", "red", "."]) == "a man's bike, red."


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_tokenizer_reproduces_the_official_multi30k_tok_files():
    """The Multi30k tok/ files (Moses lowercase | normalize-punctuation | tokenizer.perl, which
    XML-escapes): our pipeline gives the same tokens on every English test2016 sentence."""
    raw = read_lines(SHARED / "test_2016_flickr.en.gz")
    official = read_lines(SHARED / "tok" / "test_2016_flickr.lc.norm.tok.en.gz")
    tokenizer = Tokenizer("en")
    mismatches = [i for i, (r, o) in enumerate(zip(raw, official)) if " ".join(tokenizer.tokenize(r)) != html.unescape(o)]
    assert len(raw) == 1000 and mismatches == []


def test_vocab_specials_min_freq_and_order():
    vocab = Vocab.build([["b", "a", "b"], ["c", "a", "b"], ["d"]], min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "<bos>", "<eos>", "b", "a"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert vocab.encode(["a", "zzz", "b"]) == [5, UNK_ID, 4]
    assert vocab.decode([BOS_ID, 4, PAD_ID, 5, EOS_ID, 4]) == ["b", "a"]


def test_vocab_save_load_roundtrip(tmp_path):
    vocab = Vocab.build([["ä", "ß", "ä", "ß"]], min_freq=1)
    vocab.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json").itos == vocab.itos


def test_collate_pads_to_multiple_with_bos_eos_and_empty_rows():
    src, tgt = [[5, 6], [7]], [[8], [9, 10, 11]]
    b = collate(src, tgt, [0, 1], batch_size=3, length_multiple=4)
    np.testing.assert_array_equal(b["src"], [[5, 6, EOS_ID, 0], [7, EOS_ID, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["src_length"], [3, 2, 0])
    np.testing.assert_array_equal(b["tgt_in"], [[BOS_ID, 8, 0, 0], [BOS_ID, 9, 10, 11], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["tgt_out"], [[8, EOS_ID, 0, 0], [9, 10, 11, EOS_ID], [0, 0, 0, 0]])
    np.testing.assert_array_equal(b["tgt_length"], [2, 4, 0])
    assert all(v.dtype == np.int32 for v in b.values())


def test_batch_order_covers_every_example_once_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(1, 40, size=1000)
    order = [spec.indices for spec in batch_order(lengths, lengths, 32, seed=1, epoch=0, pool=4)]
    assert sorted(np.concatenate(order).tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in order)
    indices = lambda epoch: [spec.indices.tolist() for spec in batch_order(lengths, lengths, 32, seed=1, epoch=epoch, pool=4)]
    assert [b.tolist() for b in order] == indices(0)
    assert [b.tolist() for b in order] != indices(1)
    # bucketing: a batch spans far fewer lengths than a random batch would
    random_batches = np.array_split(np.arange(1000), 32)
    assert np.mean([np.ptp(lengths[b]) for b in order]) < 0.5 * np.mean([np.ptp(lengths[b]) for b in random_batches])


def test_sentence_batches_fix_the_padded_lengths_so_process_rows_collate_to_one_shape():
    rng = np.random.default_rng(2)
    src_ids = [[5] * int(n) for n in rng.integers(1, 30, size=40)]
    tgt_ids = [[6] * int(n) for n in rng.integers(1, 30, size=40)]
    plan = batch_order([len(s) for s in src_ids], [len(t) for t in tgt_ids], 8, seed=0, epoch=0, length_multiple=4)
    for spec in plan:
        whole = collate(src_ids, tgt_ids, spec.indices, spec.rows, length_multiple=4)  # padded from all its rows
        assert (spec.src_len, spec.tgt_len) == (whole["src"].shape[1], whole["tgt_in"].shape[1])
        halves = [process_rows(spec, p, 2) for p in (0, 1)]
        parts = [collate(src_ids, tgt_ids, h.indices, h.rows, lengths=(spec.src_len, spec.tgt_len)) for h in halves]
        for name in whole:
            np.testing.assert_array_equal(np.concatenate([part[name] for part in parts]), whole[name])


def test_bucket_length_follows_the_bucket_table():
    assert [bucket_length(n) for n in (1, 8, 9, 11, 17, 33, 64, 65, 97)] == [8, 8, 10, 12, 18, 40, 64, 96, 128]


def test_token_batches_keep_the_budget_cover_every_example_once_and_are_deterministic():
    rng = np.random.default_rng(0)
    src = rng.integers(1, 50, size=3000)
    tgt = np.clip(src + rng.integers(-5, 6, size=3000), 1, 60)
    plan = token_batches(src, tgt, 1024, seed=3, epoch=0)
    assert sorted(np.concatenate([s.indices for s in plan]).tolist()) == list(range(3000))
    for spec in plan:
        assert spec.src_len == spec.tgt_len and spec.rows * spec.tgt_len <= 1024
        assert spec.rows % 8 == 0 and len(spec.indices) <= spec.rows
        assert all(max(src[i], tgt[i]) + 1 <= spec.tgt_len for i in spec.indices)  # nobody is cut
    assert sum(len(s.indices) < s.rows for s in plan) == 1  # remainders move up a bucket: one partial batch
    assert len({(s.rows, s.tgt_len) for s in plan}) <= len(TOKEN_BUCKETS)
    same = token_batches(src, tgt, 1024, seed=3, epoch=0)
    assert [s.indices.tolist() for s in plan] == [s.indices.tolist() for s in same]
    assert [s.indices.tolist() for s in plan] != [s.indices.tolist() for s in token_batches(src, tgt, 1024, seed=3, epoch=1)]
    with pytest.raises(ValueError, match="batch_tokens=256 cannot hold 8 rows of the longest example"):
        token_batches(src, tgt, 256, seed=3, epoch=0)


def test_real_token_share_counts_padded_target_positions():
    tgt_lengths = [3, 5, 6]  # 4, 6 and 7 real positions with <eos>
    plan = [BatchSpec(np.array([0, 1]), 4, 8, 8), BatchSpec(np.array([2]), 2, 4, 8)]
    assert real_token_share(plan, tgt_lengths) == pytest.approx(17 / (4 * 8 + 2 * 8))


def test_collate_pads_token_batches_to_the_given_length():
    b = collate([[5, 6]], [[8]], [0], batch_size=2, lengths=(5, 5))
    np.testing.assert_array_equal(b["src"], [[5, 6, EOS_ID, 0, 0], [0] * 5])
    np.testing.assert_array_equal(b["tgt_out"], [[8, EOS_ID, 0, 0, 0], [0] * 5])


# ---------------------------------------------------------------- Tatoeba English–French

TATOEBA = SHARED.parent / "tatoeba-eng-fra" / "fra.txt.gz"


def _tatoeba_dir(tmp_path, lines: list[str]) -> Path:
    """A data directory holding a hand-made Tatoeba file of ``lines``."""
    (tmp_path / "tatoeba-eng-fra").mkdir()
    (tmp_path / "tatoeba-eng-fra" / "fra.txt.gz").write_bytes(gzip.compress("".join(f"{line}\n" for line in lines).encode()))
    return tmp_path


def test_tatoeba_split_is_a_fixed_hash_of_the_normalised_english_side():
    # sha256 of the normalised English side mod 100: < 90 train, < 95 val, else test (pinned values)
    assert [tatoeba.split_of(e) for e in ("Go.", "Stop!", "I won!", "Sentence 7.", "Sentence 8.")] == \
        ["train", "val", "test", "val", "test"]
    assert tatoeba.normalise("  I\u00a0WON!\t") == "i won!"
    assert tatoeba.split_of("  I\u00a0WON!\t") == tatoeba.split_of("i won!") == "test"


def test_tatoeba_splits_are_deterministic_disjoint_on_english_and_cover_every_line(tmp_path):
    # 40 English sentences (7 and 15 fall in val and test), each twice with different case and spacing
    pairs = [(f"Sentence {i}.", f"Phrase {i}.") for i in range(40)] + [(f"SENTENCE  {i}.", f"La phrase {i} !") for i in range(40)]
    data_dir = _tatoeba_dir(tmp_path, [f"{en}\t{fr}" for en, fr in pairs] + ["Go.\tVa !\tCC-BY 2.0 (France)"])
    splits = {split: load_split("tatoeba", split, "en", "fr", data_dir) for split in tatoeba.SPLITS}
    assert splits == {split: load_split("tatoeba", split, "en", "fr", data_dir) for split in tatoeba.SPLITS}
    assert [len(splits[s][0]) for s in tatoeba.SPLITS] == [73, 2, 6]  # 36 + 1 + 3 English sentences, twice, and "Go."
    english = {s: {tatoeba.normalise(e) for e in splits[s][0]} for s in tatoeba.SPLITS}
    assert not (english["train"] & english["val"] or english["train"] & english["test"] or english["val"] & english["test"])
    covered = sorted(pair for s in tatoeba.SPLITS for pair in zip(*splits[s]))
    assert covered == sorted(pairs + [("Go.", "Va !")])  # every line once; the attribution column dropped
    # the other direction: the same pairs, French first
    src, tgt = load_split("tatoeba", "val", "fr", "en", data_dir)
    assert (src, tgt) == (splits["val"][1], splits["val"][0]) and set(tgt) == {"Sentence 7.", "SENTENCE  7."}


@pytest.mark.skipif(not TATOEBA.is_file(), reason="needs ../shared/data")
def test_tatoeba_split_sizes_on_the_real_corpus():
    splits = [tatoeba.split_of(english) for english, _ in tatoeba.read_pairs(TATOEBA)]
    assert [splits.count(s) for s in tatoeba.SPLITS] == [150378, 8367, 8385]  # 90.0 / 5.0 / 5.0 % of 167,130


@pytest.mark.parametrize("content, message", [
    (b"", r"fra\.txt\.gz: file is empty"),
    (b"Go.\tVa !\nHi.\tSalut \xe9!\n", r"fra\.txt\.gz:2: invalid UTF-8 at byte 10"),
    (b"Go.\tVa !\nHi. Salut !\n", r"fra\.txt\.gz:2: expected English<TAB>French \(2 or 3 tab-separated columns\), got 1"),
    (b"Go.\tVa !\tx\ty\n", r"fra\.txt\.gz:1: expected English<TAB>French .*got 4"),
    (b"Go.\tVa !\nHi.\t \n", r"fra\.txt\.gz:2: empty French side"),
])
def test_tatoeba_reader_names_file_and_line(tmp_path, content, message):
    (tmp_path / "tatoeba-eng-fra").mkdir()
    (tmp_path / "tatoeba-eng-fra" / "fra.txt.gz").write_bytes(gzip.compress(content))
    with pytest.raises(ZooError, match=message):
        load_split("tatoeba", "train", "en", "fr", tmp_path)


def test_tatoeba_reader_names_a_missing_file(tmp_path):
    with pytest.raises(ZooError, match=r"fra\.txt: no such file"):
        tatoeba.read_pairs(tmp_path / "fra.txt")


@pytest.mark.parametrize("args, message", [
    (("tatoeba", "test2016", "en", "fr"), r"--split 'test2016': tatoeba has train, val, test"),
    (("tatoeba", "train", "de", "en"), r"language 'de': tatoeba has en, fr"),
    (("tatoeba", "train", "fr", "fr"), r"--data\.src-lang and --data\.tgt-lang are both 'fr'"),
    (("wmt", "train", "en", "fr"), r"--data\.dataset 'wmt': choose from multi30k, tatoeba"),
])
def test_load_split_refuses_unknown_names_before_reading(tmp_path, args, message):
    with pytest.raises(ZooError, match=message):
        load_split(*args, tmp_path)


def test_french_tokenizer_on_tatoeba_text():
    fr = Tokenizer("fr")
    assert fr.tokenize("Cours\u202f!") == ["cours", "!"]  # narrow no-break space before "!"
    assert fr.tokenize("Vous ne m'écoutez pas.") == ["vous", "ne", "m'", "écoutez", "pas", "."]
    assert fr.detokenize(["vous", "ne", "m'", "écoutez", "pas", "."]) == "vous ne m'écoutez pas."


def test_group_by_shape_keeps_plan_order_in_runs_of_one_shape():
    """Shapes a a b a a a b with runs of 2: a-runs start at batches 0 and 3, the a-remainder at
    5 (after a's full runs), the b-run at 2; ordered by first position: [0 1] [2 6] [3 4] [5]."""
    shapes = "aabaaab"
    plan = [BatchSpec(np.array([i]), 8, *((16, 16) if c == "a" else (24, 24))) for i, c in enumerate(shapes)]
    grouped = group_by_shape(plan, 2)
    assert [int(spec.indices[0]) for spec in grouped] == [0, 1, 2, 6, 3, 4, 5]
    assert chunk_lengths(grouped, 2) == [2, 2, 2, 1]
    assert chunk_lengths(grouped[4:], 2) == [2, 1]  # from a run's first batch (a resumed run)
    assert group_by_shape(plan, 1) is plan and chunk_lengths(plan, 1) == [1] * 7
    assert chunk_lengths(grouped, 8) == [2, 2, 3]  # the greedy rule alone merges adjacent runs of one shape
