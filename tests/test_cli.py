"""train.py and evaluate.py end to end on a tiny corpus: results, files, and bad input."""

import dataclasses
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from corpus import write_tiny_multi30k

from zoo.cli import evaluate, train
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--set", "embed_dim=8", "--set", "hidden_dim=8", "--set", "attention_dim=8", "--set", "maxout_dim=8",
        "--min-freq", "1", "--batch-size", "8", "--no-progress"]


pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = write_tiny_multi30k(tmp_path_factory.mktemp("data"))
    workdir = tmp_path_factory.mktemp("runs") / "tiny"
    with jax.numpy_dtype_promotion("standard"):
        assert train.main(["--workdir", str(workdir), "--data-dir", str(data), "--max-steps", "3", *TINY]) == 0
    return data, workdir


def test_train_writes_a_complete_workdir(trained):
    _, workdir = trained
    names = {p.name for p in workdir.iterdir()}
    assert {"config.json", "src_vocab.json", "tgt_vocab.json", "metrics.jsonl", "checkpoints"} <= names
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert steps == [1, 2, 3]
    assert json.loads((workdir / "config.json").read_text())["model"]["hidden_dim"] == 8


def test_evaluate_files_writes_results_and_plot_not_into_workdir(trained, tmp_path, capsys):
    data, workdir = trained
    before = snapshot(workdir)
    src, ref = tmp_path / "s.de", tmp_path / "r.en"
    src.write_text("Ein Hund läuft im Park.\nEine Katze singt am Strand.\n")
    ref.write_text("A dog runs in the park.\nA cat sings on the beach.\n")
    out, png = tmp_path / "results.json", tmp_path / "attention.png"
    code = evaluate.main(["--workdir", str(workdir), "--src", str(src), "--ref", str(ref), "--output", str(out),
                          "--plot-attention", str(png), "--plot-sentences", "2"])
    assert code == 0
    results = json.loads(out.read_text())
    assert {"bleu", "bleu_lc_tok", "ppl_teacher_forced", "ppl_free_running", "sacrebleu_signature"} <= set(results)
    assert 0.0 <= results["bleu"] <= 100.0 and results["ppl_teacher_forced"] > 1.0
    assert results["sacrebleu_signature"].startswith("nrefs:1|case:mixed")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "BLEU" in capsys.readouterr().out.splitlines()[0]
    assert snapshot(workdir) == before


def test_evaluate_named_split(trained, tmp_path):
    data, workdir = trained
    out = tmp_path / "r.json"
    assert evaluate.main(["--workdir", str(workdir), "--data-dir", str(data), "--split", "test2016", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["num_sentences"] == 8


def test_evaluate_refuses_to_write_into_the_workdir(trained, capsys):
    data, workdir = trained
    before = snapshot(workdir)
    code = evaluate.main(["--workdir", str(workdir), "--data-dir", str(data), "--output", str(workdir / "best" / "r.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not write into the workdir" in err
    assert snapshot(workdir) == before


def test_evaluate_mismatched_files(trained, tmp_path, capsys):
    _, workdir = trained
    (tmp_path / "s.de").write_text("a\nb\n")
    (tmp_path / "r.en").write_text("a\n")
    assert evaluate.main(["--workdir", str(workdir), "--src", str(tmp_path / "s.de"), "--ref", str(tmp_path / "r.en")]) == 2
    assert "s.de has 2 lines but" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "multi30k" / "train.de.gz").unlink(), r"train\.de\.gz: (no such file|missing, and downloading)"),
        (lambda d: (d / "multi30k" / "val.en.gz").write_bytes(gzip.compress(b"one line\n")),
         r"val\.de\.gz has 8 lines but \S+val\.en\.gz has 1"),
        (lambda d: (d / "multi30k" / "train.en.gz").write_bytes(gzip.compress(b"ok\n\xff\xfe\n")),
         r"train\.en\.gz:2: invalid UTF-8"),
        (lambda d: (d / "multi30k" / "train.en.gz").write_bytes(gzip.compress(b"")), r"train\.en\.gz: file is empty"),
    ],
)
def test_train_bad_data_fails_in_one_line_and_keeps_the_workdir(trained, tmp_path, capsys, damage, message, monkeypatch):
    import shutil

    data, workdir = trained
    monkeypatch.setattr("urllib.request.urlretrieve", lambda *a: (_ for _ in ()).throw(OSError("no network")))
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    damage(broken)
    before = snapshot(workdir)
    code = train.main(["--workdir", str(workdir), "--data-dir", str(broken), "--max-steps", "6", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("train.py: error: ") and re.search(message, err), err
    assert snapshot(workdir) == before


def test_train_bad_flag_value(tmp_path, capsys):
    assert train.main(["--workdir", str(tmp_path / "w"), "--set", "hidden_dim=big"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.search(r"--model\.hidden-dim: invalid literal for int\(\).*'big'", err)
    assert not (tmp_path / "w").exists()


def test_train_refused_model_config_writes_nothing(trained, tmp_path, capsys):
    data, _ = trained
    workdir = tmp_path / "w"
    code = train.main(["--workdir", str(workdir), "--data-dir", str(data), "--model", "luong", "--set", "score=cosin",
                       "--max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "unknown attention score 'cosin'" in err and "cosine" in err
    assert not workdir.exists() or not any(workdir.iterdir())  # no config.json to block a corrected rerun


def test_train_set_parses_booleans(capsys):
    config, _ = train.parse_args(["--workdir", "w", "--model", "luong", "--set", "input_feeding=False",
                                  "--set", "hard_attention=yes"])
    assert (config.model.input_feeding, config.model.hard_attention) == (False, True)
    assert train.main(["--workdir", "unused", "--model", "luong", "--set", "hard_attention=maybe"]) == 2
    assert "'maybe' is not a bool" in capsys.readouterr().err


def test_evaluate_plot_attention_refuses_a_model_without_attention(tmp_path, capsys):
    from zoo.checkpoint import write_or_check_config
    from zoo.config import Config, SutskeverConfig

    workdir = tmp_path / "w"
    write_or_check_config(workdir, Config("sutskever", SutskeverConfig()))
    before = snapshot(workdir)
    code = evaluate.main(["--workdir", str(workdir), "--plot-attention", str(tmp_path / "a.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model 'sutskever' has no attention to plot" in err
    assert snapshot(workdir) == before and not (tmp_path / "a.png").exists()


def test_transformer_trains_and_plots_one_panel_per_head(trained, tmp_path, capsys):
    data, _ = trained
    workdir, png = tmp_path / "transformer", tmp_path / "heads.png"
    tiny = ["--set", "d_model=8", "--set", "num_heads=2", "--set", "d_ff=8", "--set", "num_encoder_layers=1",
            "--set", "num_decoder_layers=2", "--set", "max_length=40", "--min-freq", "1", "--batch-size", "8",
            "--no-progress"]
    assert train.main(["--workdir", str(workdir), "--data-dir", str(data), "--model", "transformer", "--max-steps", "2",
                       "--warmup-steps", "2", "--label-smoothing", "0.1", *tiny]) == 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["label_smoothing"] == 0.1 and config["train"]["warmup_steps"] == 2
    before = snapshot(workdir)
    assert evaluate.main(["--workdir", str(workdir), "--data-dir", str(data), "--split", "val", "--plot-attention",
                          str(png), "--plot-sentences", "1", "--plot-layer", "0"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert evaluate.main(["--workdir", str(workdir), "--data-dir", str(data), "--split", "val", "--plot-attention",
                          str(tmp_path / "none.png"), "--plot-layer", "2"]) == 2
    assert "layer 2 out of range: the model has 2 decoder layer(s)" in capsys.readouterr().err
    assert snapshot(workdir) == before


@pytest.mark.parametrize("flag, value, message", [("--label-smoothing", "1.0", "must be in \\[0, 1\\)"),
                                                  ("--warmup-steps", "-1", "must be at least 0")])
def test_train_refuses_bad_schedule_and_smoothing(tmp_path, capsys, flag, value, message):
    assert train.main(["--workdir", str(tmp_path / "w"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err)
    assert not (tmp_path / "w").exists()


def test_a_second_identical_run_compiles_nothing(tmp_path):
    """Two fresh processes, one persistent compilation cache: the second loads every program."""
    data = write_tiny_multi30k(tmp_path / "data")
    env = {**os.environ, "ZOO_COMPILATION_CACHE": str(tmp_path / "cache")}
    counts = []
    for name in ("first", "second"):
        args = [sys.executable, str(ROOT / "train.py"), "--workdir", str(tmp_path / name), "--data-dir", str(data),
                "--max-steps", "2", *TINY]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        counts.append(tuple(map(int, re.search(r"XLA: (\d+) programs compiled, (\d+) from the cache", done.stdout).groups())))
    (compiled, cached), (recompiled, loaded) = counts
    assert compiled > 0 and cached == 0
    assert recompiled == 0 and loaded == compiled


def test_help_lists_every_config_field(capsys):
    from zoo.config import MODEL_CONFIGS, DataConfig, TrainConfig

    for model in ("transformer", "luong"):
        with pytest.raises(SystemExit) as exit_:
            train.main(["--model", model, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for section, cls in (("model", MODEL_CONFIGS[model]), ("data", DataConfig), ("train", TrainConfig)):
            for f in dataclasses.fields(cls):
                assert f"--{section}.{f.name.replace('_', '-')}" in text or f"--{section}.no-{f.name.replace('_', '-')}" in text


def test_a_bad_value_is_refused_alike_by_the_cli_the_api_and_config_json(tmp_path, capsys):
    from zoo.checkpoint import read_config
    from zoo.config import TrainConfig

    message = "TrainConfig.label_smoothing=1.5: must be in [0, 1)"
    assert train.main(["--workdir", str(tmp_path / "w"), "--train.label-smoothing", "1.5"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError) as api:
        TrainConfig(label_smoothing=1.5)
    assert str(api.value) == message
    config = {"model_name": "bahdanau", "model": {}, "data": {}, "train": {"label_smoothing": 1.5}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ZooError, match=re.escape(message)):
        read_config(tmp_path)


def test_old_flags_keep_working_and_a_config_file_sets_every_field(tmp_path):
    config, run = train.parse_args(["--workdir", "w", "--epochs", "3", "--set", "hidden_dim=64", "--no-lowercase",
                                    "--min-freq", "1", "--no-progress"])
    assert (config.train.epochs, config.model.hidden_dim, config.data.lowercase, config.data.min_freq) == (3, 64, False, 1)
    assert run.workdir == "w" and run.progress is False
    (tmp_path / "c.yaml").write_text("model_name: luong\nmodel: {hidden_dim: 32}\ndata: {min_freq: 3}\ntrain: {epochs: 2}\n")
    config, _ = train.parse_args(["--config", str(tmp_path / "c.yaml"), "--workdir", "w", "--train.epochs", "5"])
    assert (config.model_name, config.model.hidden_dim, config.data.min_freq, config.train.epochs) == ("luong", 32, 3, 5)


def test_model_flag_defaults_to_its_results_recipe_and_flags_override_it():
    from zoo.config import MODEL_CONFIGS, RECIPES, TrainConfig

    config, _ = train.parse_args(["--model", "transformer", "--workdir", "w"])
    recipe = RECIPES["transformer"]
    assert config.model == MODEL_CONFIGS["transformer"](**recipe["model"])
    assert config.train == TrainConfig(**recipe["train"])
    assert (config.model.dropout, config.train.warmup_steps, config.train.label_smoothing) == (0.3, 400, 0.1)
    config, _ = train.parse_args(["--model", "transformer", "--workdir", "w", "--model.dropout", "0.1", "--train.epochs", "2"])
    assert (config.model.dropout, config.train.epochs, config.train.warmup_steps) == (0.1, 2, 400)
    config, _ = train.parse_args(["--model", "sutskever", "--workdir", "w"])  # no recipe: the dataclass defaults
    assert config.model == MODEL_CONFIGS["sutskever"]() and config.train == TrainConfig()
