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

import zoo.evaluation
from zoo.cli import evaluate, train
from zoo.errors import ZooError

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--model.embed-dim", "8", "--model.hidden-dim", "8", "--model.attention-dim", "8", "--model.maxout-dim", "8",
        "--data.min-freq", "1", "--train.batch-size", "8", "--no-progress"]


pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = write_tiny_multi30k(tmp_path_factory.mktemp("data"))
    workdir = tmp_path_factory.mktemp("runs") / "tiny"
    with jax.numpy_dtype_promotion("standard"):
        assert train.main(["--workdir", str(workdir), "--data-dir", str(data), "--train.max-steps", "3", *TINY]) == 0
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
    code = train.main(["--workdir", str(workdir), "--data-dir", str(broken), "--train.max-steps", "6", *TINY])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("train.py: error: ") and re.search(message, err), err
    assert snapshot(workdir) == before


def test_train_bad_flag_value(tmp_path, capsys):
    assert train.main(["--workdir", str(tmp_path / "w"), "--model.hidden-dim", "big"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.search(r"--model\.hidden-dim: invalid literal for int\(\).*'big'", err)
    assert not (tmp_path / "w").exists()


def test_train_refused_model_config_writes_nothing(trained, tmp_path, capsys):
    data, _ = trained
    workdir = tmp_path / "w"
    code = train.main(["--workdir", str(workdir), "--data-dir", str(data), "--model", "luong", "--model.score", "cosin",
                       "--train.max-steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err == "train.py: error: --model.score 'cosin': choose from additive, dot, general, scaled_dot, cosine, mlp"
    assert not workdir.exists() or not any(workdir.iterdir())  # no config.json to block a corrected rerun


def test_train_boolean_flags(capsys):
    config, _ = train.parse_args(["--workdir", "w", "--model", "luong", "--model.no-input-feeding", "--model.hard-attention"])
    assert (config.model.input_feeding, config.model.hard_attention) == (False, True)
    config, _ = train.parse_args(["--workdir", "w", "--model", "luong"])
    assert (config.model.input_feeding, config.model.hard_attention) == (True, False)
    assert train.main(["--workdir", "unused", "--model", "luong", "--model.hard-attention", "maybe"]) == 2
    err = capsys.readouterr().err
    assert err == "train.py: error: unexpected value 'maybe' (see train.py --help)\n"


def test_evaluate_plot_attention_refuses_a_model_without_attention(tmp_path, capsys):
    from zoo.checkpoint import write_or_check_config
    from zoo.config import Config, SutskeverConfig

    workdir = tmp_path / "w"
    write_or_check_config(workdir, Config(model_name="sutskever", model=SutskeverConfig()))
    before = snapshot(workdir)
    code = evaluate.main(["--workdir", str(workdir), "--plot-attention", str(tmp_path / "a.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "model 'sutskever' has no attention to plot" in err
    assert snapshot(workdir) == before and not (tmp_path / "a.png").exists()


def test_transformer_trains_and_plots_one_panel_per_head(trained, tmp_path, capsys, monkeypatch):
    """One training step of a 2-decoder-layer Transformer with a schedule and label smoothing, then
    evaluate.py plots layer 0's heads; --plot-layer 2 is refused (with the metrics, checked on the
    first call, stubbed: the refusal comes after them)."""
    data, _ = trained
    workdir, png = tmp_path / "transformer", tmp_path / "heads.png"
    tiny = ["--model.d-model", "8", "--model.num-heads", "2", "--model.d-ff", "8", "--model.num-encoder-layers", "1",
            "--model.num-decoder-layers", "2", "--model.max-length", "40", "--data.min-freq", "1", "--train.batch-size", "8",
            "--no-progress"]
    assert train.main(["--workdir", str(workdir), "--data-dir", str(data), "--model", "transformer", "--train.max-steps", "1",
                       "--train.warmup-steps", "2", "--train.label-smoothing", "0.1", *tiny]) == 0
    config = json.loads((workdir / "config.json").read_text())
    assert config["train"]["label_smoothing"] == 0.1 and config["train"]["warmup_steps"] == 2
    before = snapshot(workdir)
    assert evaluate.main(["--workdir", str(workdir), "--data-dir", str(data), "--split", "val", "--plot-attention",
                          str(png), "--plot-sentences", "1", "--plot-layer", "0"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    metrics = {"bleu": 1.0, "bleu_lc_tok": 1.0, "ppl_free_running": 2.0, "ppl_teacher_forced": 2.0, "step": 1}
    monkeypatch.setattr(zoo.evaluation, "evaluate", lambda *args: (metrics, []))
    assert evaluate.main(["--workdir", str(workdir), "--data-dir", str(data), "--split", "val", "--plot-attention",
                          str(tmp_path / "none.png"), "--plot-sentences", "1", "--plot-layer", "2"]) == 2
    assert "layer 2 out of range: the model has 2 decoder layer(s)" in capsys.readouterr().err
    assert snapshot(workdir) == before


@pytest.mark.parametrize("flag, value, message", [("--train.label-smoothing", "1.0", "must be in \\[0, 1\\)"),
                                                  ("--train.warmup-steps", "-1", "must be at least 0")])
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
                "--train.max-steps", "1", *TINY]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        counts.append(tuple(map(int, re.search(r"XLA: (\d+) programs compiled, (\d+) from the cache", done.stdout).groups())))
    (compiled, cached), (recompiled, loaded) = counts
    assert compiled > 0 and cached == 0
    assert recompiled == 0 and loaded == compiled


def test_help_lists_every_config_field(capsys):
    from zoo.config import DataConfig, TrainConfig
    from zoo.models import MODELS

    for model in ("transformer", "luong"):
        with pytest.raises(SystemExit) as exit_:
            train.main(["--model", model, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        for section, cls in (("model", MODELS[model].config), ("data", DataConfig), ("train", TrainConfig)):
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


@pytest.mark.parametrize("argv, line", [
    (["--epochs", "3"], "--epochs: now spelled --train.epochs"),
    (["--learning-rate=1e-3"], "--learning-rate: now spelled --train.learning-rate"),
    (["--batch-size", "8"], "--batch-size: now spelled --train.batch-size"),
    (["--dataset", "tatoeba"], "--dataset: now spelled --data.dataset"),
    (["--no-lowercase"], "--no-lowercase: now spelled --data.no-lowercase"),
    (["--set", "hidden_dim=64"], "--set: set a model field as --model.FIELD VALUE (e.g. --model.hidden-dim 256)"),
    (["--model", "transformer", "--max-length", "9"], "--max-length: now spelled --model.max-length or --data.max-length"),
    (["--hidden-dim", "8"], "--hidden-dim: now spelled --model.hidden-dim"),
    (["--bogus"], "--bogus: unrecognized (see train.py --help)"),
    (["--model"], "argument --model: expected one argument"),
    (["--model", "rnn"], "--model 'rnn': choose from bahdanau, cho, convs2s, luong, sutskever, transformer"),
    (["--train.epochs"], "--train.epochs: expected a value"),
])
def test_old_spellings_and_bad_flags_are_refused_in_one_line(tmp_path, capsys, argv, line):
    assert train.main(["--workdir", str(tmp_path / "w"), *argv]) == 2
    assert capsys.readouterr().err == f"train.py: error: {line}\n"
    assert not (tmp_path / "w").exists()


def test_workdir_is_required(capsys):
    assert train.main(["--train.epochs", "3"]) == 2
    assert capsys.readouterr().err == "train.py: error: --workdir: required\n"


def test_a_config_file_sets_every_field_and_flags_override_it(tmp_path):
    (tmp_path / "c.yaml").write_text("model_name: luong\nmodel: {hidden_dim: 32}\ndata: {min_freq: 3}\ntrain: {epochs: 2}\n")
    config, _ = train.parse_args(["--config", str(tmp_path / "c.yaml"), "--workdir", "w", "--train.epochs", "5"])
    assert (config.model_name, config.model.hidden_dim, config.data.min_freq, config.train.epochs) == ("luong", 32, 3, 5)
    config, _ = train.parse_args(["--config", str(tmp_path / "c.yaml"), "--model", "cho", "--workdir", "w"])
    assert (config.model_name, config.model.hidden_dim, config.data.min_freq, config.train.epochs) == ("cho", 512, 3, 2)
    (tmp_path / "bad.yaml").write_text("model_name: luong\nmodel: {hiden_dim: 32}\n")
    with pytest.raises(ZooError, match=r"^--config \S+bad.yaml: model.hiden_dim is not a known field"):
        train.parse_args(["--config", str(tmp_path / "bad.yaml"), "--workdir", "w"])
    with pytest.raises(ZooError, match=r"^--config \S+none.yaml: FileNotFoundError"):
        train.parse_args(["--config", str(tmp_path / "none.yaml"), "--workdir", "w"])


def test_model_flag_defaults_to_its_results_recipe_and_flags_override_it():
    from zoo.config import SutskeverConfig, TrainConfig, TransformerConfig
    from zoo.models import RECIPES

    config, _ = train.parse_args(["--model", "transformer", "--workdir", "w"])
    recipe = RECIPES["transformer"]
    assert config.model == TransformerConfig(**recipe["model"])
    assert config.train == TrainConfig(**recipe["train"])
    assert (config.model.dropout, config.train.warmup_steps, config.train.label_smoothing) == (0.3, 400, 0.1)
    config, _ = train.parse_args(["--model", "transformer", "--workdir", "w", "--model.dropout", "0.1", "--train.epochs", "2"])
    assert (config.model.dropout, config.train.epochs, config.train.warmup_steps) == (0.1, 2, 400)
    config, _ = train.parse_args(["--model", "sutskever", "--workdir", "w"])  # no recipe: the dataclass defaults
    assert config.model == SutskeverConfig() and config.train == TrainConfig()
