"""The planner study's bookkeeping (``benchmark.py compile``) without compiling: a run cut short
resumes from its compile.json, the batch searches run in their order, and the summary table reads
the rows. XLA is replaced by a fake memory model, so this needs neither libtpu nor Multi30k."""

import importlib.metadata
import json

import pytest

from zoo import plotting
from zoo.bench import compile as study

GIB = 2**30


class FakeCorpus:
    """Multi30k's vocabularies and a memory model in place of XLA: peak = 1 GB + 100 kB a token;
    records every compile as (model, size, dtype, topology, batch_tokens)."""

    compiles: list = []

    def __init__(self, data_dir=None):
        self.vocab = {"src_vocab_size": 7859, "tgt_vocab_size": 5921}

    def compile(self, config, topology):
        tokens = config.train.batch_tokens or 4096
        FakeCorpus.compiles.append((config.model_name, config.model.dtype, topology, tokens))
        peak = 1e9 + 1e5 * tokens
        return {"fits": peak <= 16 * GIB, "peak_bytes": peak, "batch_shape": [tokens // 64, 32, 32],
                "num_params": 1e6, "roofline_s": tokens * 1e-7, "hbm_bytes": 16 * GIB, "xla_flops": 1e9,
                "tokens_per_s": 1e7, "mfu": 0.1, "compile_s": 1.0}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(study, "Corpus", FakeCorpus)
    monkeypatch.setattr(plotting, "compile_plot", lambda results, path: None)  # a second a plot, after every row
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.0.42.1")  # libtpu's, installed or not
    FakeCorpus.compiles = []
    return FakeCorpus


def run(out, **kwargs):
    return study.run_compile_study(out, ["transformer"], ("tpu:v5e-8",), log=lambda line: None, **kwargs)


def test_a_second_run_keeps_every_row_and_search_and_compiles_nothing(tmp_path, fake):
    first = run(tmp_path)
    # 4 rows (2 sizes x 2 dtypes), then the searches: the large size's bfloat16 row first, then its float32
    rows = [(s, d) for s in ("default", "large") for d in ("float32", "bfloat16")]
    assert [(r["size"], r["dtype"]) for r in first["rows"]] == rows
    searched_first = fake.compiles[4]
    assert searched_first[1:] == ("bfloat16", "tpu:v5e-8", 4 * study.LARGE_BATCH_TOKENS)  # grow x4 from 8,192
    # peak = 1e9 + 1e5 N meets 16 GiB at N = 161,796: the search's answer is at most that, within NEAR_HBM
    largest = [r["largest"]["batch_tokens"] for r in first["rows"]]
    assert all(0.9 * 161_796 <= n <= 161_796 for n in largest)
    count = len(fake.compiles)
    second = run(tmp_path)
    assert len(fake.compiles) == count  # nothing compiled again
    assert second["rows"] == json.loads(json.dumps(first["rows"]))
    assert second["earlier_runs"] == [json.loads(json.dumps(first["setting"]))]


def test_rows_of_another_libtpu_or_vocabulary_are_compiled_again(tmp_path, fake):
    run(tmp_path, sizes=("default",), search_on=())
    saved = json.loads((tmp_path / "compile.json").read_text())
    saved["setting"]["libtpu"] = "0.0.1"
    (tmp_path / "compile.json").write_text(json.dumps(saved))
    run(tmp_path, sizes=("default",), search_on=())
    assert len(fake.compiles) == 4 and "earlier_runs" not in json.loads((tmp_path / "compile.json").read_text())
    saved = json.loads((tmp_path / "compile.json").read_text())
    saved["vocab"]["src_vocab_size"] = 8000
    (tmp_path / "compile.json").write_text(json.dumps(saved))
    run(tmp_path, sizes=("default",), search_on=())
    assert len(fake.compiles) == 6


def test_the_model_table_pairs_the_default_and_paper_size(tmp_path, fake):
    results = run(tmp_path, search_on=())
    results["rows"][3]["largest"] = {"batch_tokens": 140_000, "predicted": None,  # large bfloat16
                                     "tried": [[8192, 1.8e9, True], [280_000, 29e9, False], [140_000, 15e9, True]]}
    lines = study.model_table(results).splitlines()
    assert lines[0] == ("| model | params | tpu:v5e-8 HBM a chip (GB) | tpu:v5e-8 roofline step (ms) "
                        "| largest batch_tokens on tpu:v5e-8 |")
    # bfloat16: default 2,048 tokens (1.2048 GB, 0.2048 ms), large 8,192 tokens (1.8192 GB, 0.8192 ms)
    assert lines[2] == "| transformer | 1.0 M / 1.0 M | 1.20 / 1.82 | 0.20 / 0.82 | – / ≥ 140,000, < 280,000 |"
    # the full table gives the same bracket on that row only
    found = [line.split(" | ")[-2] for line in study.compile_table(results).splitlines()[2:]]
    assert found == ["", "", "", "≥ 140,000, < 280,000"]


def test_a_run_cut_short_while_resuming_keeps_the_rows_it_had_not_reached(tmp_path, fake, monkeypatch):
    both = ("tpu:v5e-8", "tpu:v5p-8")
    study.run_compile_study(tmp_path, ["transformer"], both, ("default",), (), log=lambda line: None)
    saved = json.loads((tmp_path / "compile.json").read_text())
    del saved["rows"][1]  # float32 on v5p-8: the second row, compiled again after the kept first
    (tmp_path / "compile.json").write_text(json.dumps(saved))

    def cut(self, config, topology):
        raise KeyboardInterrupt

    monkeypatch.setattr(FakeCorpus, "compile", cut)
    with pytest.raises(KeyboardInterrupt):  # after the first row, kept and saved, the second is cut
        study.run_compile_study(tmp_path, ["transformer"], both, ("default",), (), log=lambda line: None)
    assert json.loads((tmp_path / "compile.json").read_text())["rows"] == saved["rows"]


def test_the_log_line_of_a_step_compiled_over_the_hbm():
    # XLA compiled it (no error line) but its peak is over the chip's HBM: the search's log said why
    over = {"fits": False, "peak_bytes": 18.2e9, "hbm_bytes": 17.18e9}
    assert study.row_line(over) == "does not fit: 18.20 GB a chip, over the 17.18 GB HBM"
    refused = {"fits": False, "error": "XLA: RESOURCE_EXHAUSTED: ...", "peak_bytes": 25e9}
    assert study.row_line(refused) == "does not fit: XLA: RESOURCE_EXHAUSTED: ..."
