"""scripts/results_tables.py: the results manifest, the JSON per row, and the README tables made from them."""

import json
import shlex
from pathlib import Path

import jax
import pytest
import results_tables
import yaml
from corpus import write_tiny_multi30k
from results_tables import format_params, format_wall, regenerate, training_facts

from zoo.cli import evaluate, train

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")

TINY = ["--model.embed-dim", "8", "--model.hidden-dim", "8", "--model.attention-dim", "8", "--model.maxout-dim", "8",
        "--data.min-freq", "1", "--train.batch-size", "8", "--train.log-every", "2", "--no-progress"]
BEFORE = "# Results\n\nProse quoting a marker, <!-- results:recurrent -->, is not one.\n\n"
AFTER = "\n\nProse after, kept as it is.\n"
HEADER = ["| model | params | epochs | test2016 BLEU lc-tok | BLEU cased detok | PPL free-running | PPL teacher-forced "
          "| training wall time | median tok/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]


def write_case(tmp_path, entries, results, readme=None):
    """A results folder (manifest + JSON files) and a README with the recurrent table's markers."""
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "runs.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
    for id_, result in results.items():
        (folder / f"{id_}.json").write_text(json.dumps(result))
    path = tmp_path / "README.md"
    path.write_text(readme if readme is not None else
                    BEFORE + "<!-- results:recurrent -->\nold table\n<!-- /results:recurrent -->" + AFTER)
    return folder, path


def run_all(folder, readme, *flags):
    return results_tables.main(["--results", str(folder), "--readme", str(readme), *flags])


def entry(id_, **keys):
    return {"id": id_, "table": "recurrent", "label": f"`{id_}`", "workdir": f"/nonexistent/{id_}",
            "command": f"python train.py --model bahdanau --workdir /nonexistent/{id_}", "hardware": "2 CPU cores", **keys}


def result(**keys):
    return {"bleu": 31.0, "bleu_lc_tok": 36.0249, "ppl_free_running": 240.4, "ppl_teacher_forced": 5.137,
            "num_params": 14_612_345, "epochs": 10, "steps_per_epoch": 227, "step": 1816, "wall_s": 2586.4,
            "median_tokens_per_s": 2008.6, **keys}


def table_lines(readme):
    text = readme.read_text()
    assert text.startswith(BEFORE) and text.endswith(AFTER)  # outside the markers: byte for byte
    return text[len(BEFORE):-len(AFTER)].split("\n")[1:-1]


def test_formats():
    assert [format_wall(s) for s in (42.4, 2586.4, 3634, 4950, 5742)] == [
        "42 s", "43 min (2,586 s)", "61 min (3,634 s)", "83 min (4,950 s)", "96 min (5,742 s)"]
    assert [format_params(n) for n in (52_345, 7_480_000, 10_040_000, 14_612_345, 139_000_000)] == [
        "52.3 k", "7.48 M", "10.0 M", "14.6 M", "139 M"]


def test_tables_from_two_json_files(tmp_path, capsys):
    ref = {"label": "tutorial (reference)", "source": "a notebook", "params": "20.5 M", "epochs": 10, "bleu_lc_tok": "28.30"}
    entries = [entry("a", reference=[ref]), entry("a-beam", label="same, beam 5", beam_size=5),
               {"id": "a-again", "table": "recurrent", "label": "`a` (above)", "same_as": "a"},
               entry("b", step=454)]
    results = {"a": result(), "a-beam": result(bleu_lc_tok=37.97), "b": result(step=454, bleu=3.1, wall_s=42.0)}
    folder, readme = write_case(tmp_path, entries, results)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert run_all(folder, readme, "--tables-only") == 0
    assert table_lines(readme) == HEADER + [
        "| tutorial (reference) | 20.5 M | 10 | 28.30 | – | – | – | – | – |",
        "| `a` | 14.6 M | 10 | 36.02 | 31.00 | 240.40 | 5.14 | 43 min (2,586 s) | 2,009 |",
        "| same, beam 5 | 14.6 M | 10 | 37.97 | 31.00 | 240.40 | 5.14 | – | – |",
        "| `a` (above) | 14.6 M | 10 | 36.02 | 31.00 | 240.40 | 5.14 | 43 min (2,586 s) | 2,009 |",
        "| `b` | 14.6 M | 2 | 36.02 | 3.10 | 240.40 | 5.14 | – | – |",
    ]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files  # --tables-only rewrites no JSON
    assert capsys.readouterr().out.count("\n") == 1  # one summary line


def test_a_group_of_seeds_gets_a_mean_and_spread_row(tmp_path):
    entries = [entry("s0", group="seeds"), entry("other"), entry("s1", group="seeds")]
    results = {"s0": result(bleu_lc_tok=30.0, bleu=25.1, ppl_free_running=100.0, ppl_teacher_forced=5.0),
               "other": result(),
               "s1": result(bleu_lc_tok=31.0, bleu=25.5, ppl_free_running=110.0, ppl_teacher_forced=5.2, wall_s=3000.0)}
    folder, readme = write_case(tmp_path, entries, results)
    assert run_all(folder, readme, "--tables-only") == 0
    # s.d. (n - 1) of two values a, b is |a - b| / sqrt(2): 0.7071, 0.2828, 7.0711, 0.1414
    assert table_lines(readme)[2:] == [
        "| `s0` | 14.6 M | 10 | 30.00 | 25.10 | 100.00 | 5.00 | 43 min (2,586 s) | 2,009 |",
        "| `other` | 14.6 M | 10 | 36.02 | 31.00 | 240.40 | 5.14 | 43 min (2,586 s) | 2,009 |",
        "| `s1` | 14.6 M | 10 | 31.00 | 25.50 | 110.00 | 5.20 | 50 min (3,000 s) | 2,009 |",
        "| seeds: mean ± s.d. of 2 runs | 14.6 M | 10 | 30.50 ± 0.71 | 25.30 ± 0.28 | 105.00 ± 7.07 | 5.10 ± 0.14 "
        "| – | 2,009 |",
    ]


def test_the_comparison_table_shows_seeds_and_the_last_epochs_validation(tmp_path):
    validations = lambda *ppl: [{"epoch": i + 1, "step": 10 * (i + 1), "val_ppl": p} for i, p in enumerate(ppl)]
    entries = [entry(f"s{seed}", table="comparison", group="general") for seed in (0, 1)]
    results = {"s0": result(seed=0, validations=validations(9.0, 8.0, 7.5)),   # last epoch: 7.5 / 8.0 - 1 = -6.25 %
               "s1": result(seed=1, bleu_lc_tok=35.0, validations=validations(9.0, 8.0, 8.2))}  # +2.5 %
    folder, readme = write_case(tmp_path, entries, results,
                                BEFORE + "<!-- results:comparison -->\n<!-- /results:comparison -->" + AFTER)
    assert run_all(folder, readme, "--tables-only") == 0
    assert table_lines(readme) == [
        "| model | seed | params | epochs | test2016 BLEU lc-tok | BLEU cased detok | PPL teacher-forced "
        "| val PPL last epoch | its change over that epoch | training wall time | median tok/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| `s0` | 0 | 14.6 M | 10 | 36.02 | 31.00 | 5.14 | 7.50 | −6.2 % | 43 min (2,586 s) | 2,009 |",
        "| `s1` | 1 | 14.6 M | 10 | 35.00 | 31.00 | 5.14 | 8.20 | +2.5 % | 43 min (2,586 s) | 2,009 |",
        # s.d. of (36.0249, 35.0) = 1.0249 / sqrt(2) = 0.7247; of (7.5, 8.2) = 0.4950
        "| general: mean ± s.d. of 2 runs | – | 14.6 M | 10 | 35.51 ± 0.72 | 31.00 | 5.14 | 7.85 ± 0.49 | – "
        "| 43 min (2,586 s) | 2,009 |",
    ]


def test_training_facts_add_up_the_segments(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "bahdanau", "model": {}, "data": {},
                                                      "train": {"epochs": 3, "seed": 7}}))
    lines = [{"event": "start", "step": 0, "num_params": 1234, "steps_per_epoch": 5},
             {"step": 5, "epoch": 0, "loss": 2.0}, {"event": "interval", "step": 5, "tokens_per_s": 100.0},
             {"event": "validation", "step": 5, "epoch": 1, "val_loss": 1.0, "val_ppl": 2.72},
             {"event": "end", "step": 5, "epoch": 1, "wall_s": 10.5},
             {"step": 10, "epoch": 1, "loss": 1.5}, {"event": "interval", "step": 10, "tokens_per_s": 300.0},
             {"event": "interval", "step": 10, "tokens_per_s": 200.0},
             {"event": "validation", "step": 10, "epoch": 2, "val_loss": 0.5, "val_ppl": 1.65},
             {"event": "end", "step": 10, "epoch": 2, "wall_s": 20.25}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 1')
    assert training_facts(tmp_path) == {
        "num_params": 1234, "steps_per_epoch": 5, "steps": 10, "epochs": 2, "epochs_configured": 3, "seed": 7,
        "wall_s": 30.75, "median_tokens_per_s": 200.0,
        "validations": [{"epoch": 1, "step": 5, "val_ppl": 2.72}, {"epoch": 2, "step": 10, "val_ppl": 1.65}]}


def test_all_evaluates_a_real_workdir(tmp_path):
    data = write_tiny_multi30k(tmp_path / "data")
    workdir = tmp_path / "runs" / "tiny"
    argv = ["--workdir", str(workdir), "--data-dir", str(data), "--train.epochs", "1", *TINY]
    with jax.numpy_dtype_promotion("standard"):
        assert train.main(argv) == 0
    gone = entry("gone")
    folder, readme = write_case(tmp_path, [entry("tiny", workdir=str(workdir), command="python train.py " + shlex.join(argv)),
                                           gone], {"tiny": {"bleu": 0.0}, "gone": result()})
    kept = (folder / "gone.json").read_bytes()
    assert run_all(folder, readme, "--data-dir", str(data)) == 0

    single = tmp_path / "single.json"
    assert evaluate.main(["--workdir", str(workdir), "--data-dir", str(data), "--output", str(single)]) == 0
    expected, got = json.loads(single.read_text()), json.loads((folder / "tiny.json").read_text())
    for key in ("bleu", "bleu_lc_tok", "ppl_teacher_forced", "ppl_free_running", "step", "sacrebleu_signature"):
        assert got[key] == expected[key], key
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert got["num_params"] == records[0]["num_params"]
    assert got["wall_s"] == sum(r["wall_s"] for r in records if r.get("event") == "end")
    assert (got["epochs"], got["seed"], got["split"]) == (1, 0, "test2016")
    assert (folder / "gone.json").read_bytes() == kept
    tokens = f"{round(got['median_tokens_per_s']):,}"
    assert table_lines(readme)[2] == (
        f"| `tiny` | {format_params(got['num_params'])} | 1 | {got['bleu_lc_tok']:.2f} | {got['bleu']:.2f} | "
        f"{got['ppl_free_running']:.2f} | {got['ppl_teacher_forced']:.2f} | {format_wall(got['wall_s'])} | {tokens} |")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("results_tables.py: error: ")
    return err


@pytest.mark.parametrize("damage, message", [
    ("missing key", "runs.yaml: entry 2 (b): missing key 'command'"),
    ("unknown table", "runs.yaml: entry 1 (a): table 'tables' is not one of"),
    ("no markers", "README.md: table 'recurrent' needs one <!-- results:recurrent --> line"),
    ("no json", "b.json: no such file for entry 'b', whose results are kept: workdir /nonexistent/b is not on this machine"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, damage, message):
    entries, results = [entry("a"), entry("b")], {"a": result(), "b": result()}
    if damage == "missing key":
        del entries[1]["command"]
    if damage == "unknown table":
        entries[0]["table"] = "tables"
    if damage == "no json":
        del results["b"]
    readme_text = "# Results\n\nno markers\n" if damage == "no markers" else None
    folder, readme = write_case(tmp_path, entries, results, readme_text)
    before = {p: p.read_bytes() for p in (readme, *folder.iterdir())}
    assert run_all(folder, readme) == 2
    assert message in one_error_line(capsys)
    assert {p: p.read_bytes() for p in (readme, *folder.iterdir())} == before


def test_evaluate_needs_a_workdir(capsys):
    assert evaluate.main([]) == 2
    assert capsys.readouterr().err == "evaluate.py: error: --workdir is required\n"


def test_the_results_page_tables_are_the_ones_results_generates(tmp_path):
    """No number in the tables of docs/results.md is typed by hand: regenerating them from results/ changes nothing."""
    root = Path(__file__).resolve().parent.parent
    page = tmp_path / "results.md"
    page.write_bytes((root / "docs" / "results.md").read_bytes())
    regenerate(root / "results", page, evaluate=False, log=lambda line: None)
    assert page.read_bytes() == (root / "docs" / "results.md").read_bytes()


def test_a_row_shown_again_keeps_its_runs_hardware(tmp_path):
    entries = [entry("words", table="subwords", hardware="2 cores, shared"),
               entry("pieces", table="subwords", hardware="2 cores alone"),
               {"id": "words-again", "table": "subwords", "label": "`words` (above)", "same_as": "words"}]
    results = {"words": result(), "pieces": result(bleu_lc_tok=38.58, bleu=38.31)}
    folder, readme = write_case(tmp_path, entries, results,
                                BEFORE + "<!-- results:subwords -->\n<!-- /results:subwords -->" + AFTER)
    assert run_all(folder, readme, "--tables-only") == 0
    assert table_lines(readme)[2:] == [
        "| `words` | 14.6 M | 10 | 36.02 | 31.00 | 5.14 | 43 min (2,586 s) | 2 cores, shared |",
        "| `pieces` | 14.6 M | 10 | 38.58 | 38.31 | 5.14 | 43 min (2,586 s) | 2 cores alone |",
        "| `words` (above) | 14.6 M | 10 | 36.02 | 31.00 | 5.14 | 43 min (2,586 s) | 2 cores, shared |",
    ]
