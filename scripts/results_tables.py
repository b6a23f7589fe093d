"""The results tables of ``docs/results.md``, regenerated from evaluated JSON.

    python scripts/results_tables.py --data-dir ../shared/data   # re-evaluate every workdir present, then the tables
    python scripts/results_tables.py --tables-only               # only rewrite the tables between the markers

``results/runs.yaml`` (the manifest) lists one entry per table row::

    - id: bahdanau                   # results/bahdanau.json holds the row's numbers
      table: bahdanau                # the table, between <!-- results:bahdanau --> and <!-- /results:bahdanau -->
      label: "`bahdanau` (teacher forcing 1.0)"
      workdir: /work/runs/bahdanau
      command: python train.py --model bahdanau --data.dataset multi30k --workdir /work/runs/bahdanau
      hardware: 2 CPU cores (AMD EPYC), JAX 0.10.2
      split: test2016                # optional: default the dataset's test split
      beam_size: 5                   # optional: default 1 (greedy)
      step: 454                      # optional: a checkpoint step instead of the best-validation one
      wall_s: 1850                   # optional: for runs whose metrics.jsonl has no "end" lines
      group: transformer-sinusoidal  # optional: entries sharing it (seeds) get a mean ± s.d. row
      note: ...                      # optional, free text
      reference:                     # optional: published rows printed before this one, cells as written
        - {label: "tutorial 1 (reference)", source: "https://...", params: "13.9 M", bleu_lc_tok: "13.76"}

An entry with ``same_as: ID`` instead of workdir/command/hardware shows entry ID's results
again under its own label (the same run in a second table).

For an entry whose workdir exists, :func:`evaluate_entry` computes the row's JSON: the output of
:func:`zoo.evaluation.evaluate` plus training facts from ``metrics.jsonl`` and the config. An
entry whose workdir is gone, or holds another run than ``command`` trains, keeps its JSON.
"""

import argparse
import datetime
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from zoo.checkpoint import config_difference, read_config
from zoo.cli.train import parse_args
from zoo.errors import ZooError
from zoo.io import read_json, write_text

MANIFEST = "runs.yaml"
REQUIRED = {"id", "table", "label", "workdir", "command", "hardware"}
REQUIRED_SAME_AS = {"id", "table", "label", "same_as"}
OPTIONAL = {"split", "beam_size", "step", "wall_s", "group", "note", "reference"}
HEADERS = {  # column key -> header
    "label": "model", "params": "params", "epochs": "epochs", "bleu_lc_tok": "{split} BLEU lc-tok",
    "bleu": "BLEU cased detok", "ppl_free_running": "PPL free-running", "ppl_teacher_forced": "PPL teacher-forced",
    "val_ppl_epoch2": "val PPL ep. 2", "val_ppl_last": "val PPL last epoch", "val_ppl_trend": "its change over that epoch",
    "seed": "seed", "wall": "training wall time", "tokens_per_s": "median tok/s",
    "target_tokens_per_s": "median target tok/s", "hardware": "hardware",
}
_EQUAL_TRAINING = ("label", "seed", "params", "epochs", "bleu_lc_tok", "bleu", "ppl_teacher_forced", "val_ppl_last",
                   "val_ppl_trend", "wall", "tokens_per_s")  # the columns of a comparison at equal training
TABLES = {  # results table -> (columns, split named in the BLEU header)
    "bahdanau": (("label", "params", "bleu_lc_tok", "bleu", "ppl_free_running", "ppl_teacher_forced", "wall",
                  "hardware"), "test2016"),
    "recurrent": (("label", "params", "epochs", "bleu_lc_tok", "bleu", "ppl_free_running", "ppl_teacher_forced", "wall",
                   "tokens_per_s"), "test2016"),
    "self-attention": (("label", "epochs", "params", "bleu_lc_tok", "bleu", "ppl_free_running", "ppl_teacher_forced",
                        "val_ppl_epoch2", "wall", "target_tokens_per_s"), "test2016"),
    "tatoeba": (("label", "params", "epochs", "bleu_lc_tok", "bleu", "ppl_free_running", "ppl_teacher_forced", "wall",
                 "tokens_per_s", "hardware"), "test"),
    "comparison": (_EQUAL_TRAINING, "test2016"),  # scores, windows and hard attention on one small luong
    "positional": (_EQUAL_TRAINING, "test2016"),  # positional encodings on one small transformer
    "subwords": (("label", "params", "epochs", "bleu_lc_tok", "bleu", "ppl_teacher_forced", "wall", "hardware"),
                 "test2016"),  # word and SentencePiece vocabularies, one recipe
}
RIGHT = {"params", "epochs", "bleu_lc_tok", "bleu", "ppl_free_running", "ppl_teacher_forced", "val_ppl_epoch2",
         "val_ppl_last", "val_ppl_trend", "seed", "wall", "tokens_per_s", "target_tokens_per_s"}  # right-aligned (numbers)
SPREAD = {"bleu_lc_tok", "bleu", "ppl_free_running", "ppl_teacher_forced", "val_ppl_epoch2",
          "val_ppl_last"}  # mean ± s.d. in group rows
EMPTY = "–"


def read_manifest(folder) -> list[dict]:
    """The entries of ``<folder>/runs.yaml``, checked.

    Args:
      folder: the results folder (holding ``runs.yaml`` and one ``<id>.json`` per entry).

    Returns:
      the entries in file order, as dicts with the defaults filled in (``split`` None: the
      dataset's test split; ``beam_size`` 1; ``step`` None: the best-validation checkpoint).

    Raises:
      ZooError: the file is missing or not YAML; an entry misses a key, has an unknown key or
        table, repeats an id, or names an unknown ``same_as``; naming the file and the entry.
    """
    path = Path(folder) / MANIFEST
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ZooError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ZooError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, list):
        raise ZooError(f"{path}: must be a list of entries, not {type(raw).__name__}")
    entries, ids = [], set()
    for i, entry in enumerate(raw):
        name = f"{path}: entry {i + 1}" + (f" ({entry['id']})" if isinstance(entry, dict) and "id" in entry else "")
        if not isinstance(entry, dict):
            raise ZooError(f"{name}: must be a mapping of keys, not {type(entry).__name__}")
        required = REQUIRED_SAME_AS if "same_as" in entry else REQUIRED
        missing, unknown = sorted(required - set(entry)), sorted(set(entry) - required - OPTIONAL)
        if missing:
            raise ZooError(f"{name}: missing key {missing[0]!r}")
        if unknown:
            raise ZooError(f"{name}: unknown key {unknown[0]!r}")
        if entry["table"] not in TABLES:
            raise ZooError(f"{name}: table {entry['table']!r} is not one of {', '.join(TABLES)}")
        if entry["id"] in ids:
            raise ZooError(f"{name}: id {entry['id']!r} appears twice")
        if "same_as" in entry and entry["same_as"] not in ids:
            raise ZooError(f"{name}: same_as {entry['same_as']!r} is not an earlier entry's id")
        for ref in entry.get("reference", []):
            if not isinstance(ref, dict) or "label" not in ref or "source" not in ref:
                raise ZooError(f"{name}: each reference needs a label and a source")
            extra = sorted(set(ref) - set(TABLES[entry["table"]][0]) - {"source"})
            if extra:
                raise ZooError(f"{name}: reference column {extra[0]!r} is not in table {entry['table']!r}")
        ids.add(entry["id"])
        entries.append({"split": None, "beam_size": 1, "step": None, **entry})
    return entries


def train_command_config(command: str):
    """The :class:`~zoo.config.Config` that a ``python train.py ...`` command line trains.

    Raises:
      ZooError: not a train.py command, or flags train.py refuses.
    """
    words = shlex.split(command, comments=True)
    starts = [i for i, word in enumerate(words) if word.endswith("train.py")]
    if not starts:
        raise ZooError(f"command {command!r} is not a train.py command")
    return parse_args(words[starts[0] + 1:])[0]


def training_facts(workdir, manifest_wall_s: float | None = None) -> dict:
    """Facts of a training run from its workdir's ``config.json`` and ``metrics.jsonl``.

    Args:
      workdir: a workdir written by ``train.py``.
      manifest_wall_s: the wall time to report if ``metrics.jsonl`` has no ``end`` lines (runs
        logged before they existed).

    Returns:
      ``num_params`` (the ``start`` line), ``steps_per_epoch``, ``steps`` (the last step
      logged), ``epochs`` (completed: the last validation's), ``epochs_configured``, ``seed``,
      ``wall_s`` (the sum of the ``end`` lines' ``wall_s``, one per uninterrupted segment; else
      ``manifest_wall_s``), ``median_tokens_per_s`` (median target tokens/s of the ``interval``
      lines, None without any) and ``validations`` (``epoch, step, val_ppl`` of each).

    Raises:
      ZooError: no config or metrics, a damaged line, or no ``start`` line; naming the file.
    """
    config = read_config(workdir)
    path = Path(workdir) / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ZooError(f"{path}: cannot read ({e.strerror or e})") from None
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):  # a last line cut short by a crash is dropped, as training does
                raise ZooError(f"{path}: line {number} is not JSON") from None
    events = lambda name: [r for r in records if r.get("event") == name]
    if not events("start"):
        raise ZooError(f"{path}: no \"start\" line; not written by train.py?")
    start, ends, intervals = events("start")[0], events("end"), events("interval")
    validations = [{"epoch": r["epoch"], "step": r["step"], "val_ppl": r["val_ppl"]} for r in events("validation")]
    return {
        "num_params": start["num_params"],
        "steps_per_epoch": start["steps_per_epoch"],
        "steps": max(r["step"] for r in records),
        "epochs": validations[-1]["epoch"] if validations else 0,
        "epochs_configured": config.train.epochs,
        "seed": config.train.seed,
        "wall_s": sum(r["wall_s"] for r in ends) if ends else manifest_wall_s,
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in intervals) if intervals else None,
        "validations": validations,
    }


def code_version() -> str | None:
    """``git describe --always --dirty`` of the checkout holding ``zoo``; None outside git."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def evaluate_entry(entry: dict, data_dir=None) -> dict:
    """Evaluate one manifest entry's workdir: the row's JSON.

    Args:
      entry: a manifest entry (see :func:`read_manifest`) whose workdir exists.
      data_dir: where the corpora are (see :func:`zoo.data.corpora.resolve_data_dir`).

    Returns:
      the output of :func:`zoo.evaluation.evaluate` (``bleu``, ``bleu_lc_tok``, both
      perplexities, ``step``, the sacreBLEU signatures, ...), the entry's ``id``, ``workdir``,
      ``command`` and ``split``, the :func:`training_facts`, and ``evaluated`` (UTC date and
      ``git describe`` of the code).

    Raises:
      ZooError: an unreadable workdir or step, or missing data files.
    """
    from zoo.data.corpora import DATASETS, load_split
    from zoo.evaluation import evaluate
    from zoo.translator import load

    d = read_config(entry["workdir"]).data
    split = entry["split"] or DATASETS[d.dataset][1][-1]
    sources, references = load_split(d.dataset, split, d.src_lang, d.tgt_lang, data_dir)
    results, _ = evaluate(load(entry["workdir"], entry["step"]), sources, references, entry["beam_size"])
    return {"id": entry["id"], "workdir": str(entry["workdir"]), "command": entry["command"], "split": split, **results,
            **training_facts(entry["workdir"], entry.get("wall_s")),
            "evaluated": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          "code": code_version()}}


def format_params(n: float) -> str:
    """A parameter count to three significant figures: ``14.6 M``, ``7.48 M``, ``52.3 k``."""
    scale, unit = (1e6, "M") if n >= 1e6 else (1e3, "k")
    value = n / scale
    decimals = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:.{decimals}f} {unit}"


def format_wall(seconds: float) -> str:
    """A wall time as ``43 min (2,586 s)`` (minutes rounded half up), under a minute ``42 s``."""
    if seconds < 60:
        return f"{round(seconds)} s"
    return f"{math.floor(seconds / 60 + 0.5)} min ({round(seconds):,} s)"


def metrics(result: dict) -> dict:
    """The numbers of one JSON ``result`` that a group row averages (:data:`SPREAD`); None where absent."""
    validations = result.get("validations", [])
    val2 = [v["val_ppl"] for v in validations if v["epoch"] == 2]
    return {**{k: result[k] for k in SPREAD - {"val_ppl_epoch2", "val_ppl_last"}},
            "val_ppl_epoch2": val2[0] if val2 else None,
            "val_ppl_last": validations[-1]["val_ppl"] if validations else None}


def cells(entry: dict, result: dict) -> dict:
    """The table cells (column key -> text) of one entry's row, from its JSON ``result``; a
    column without a value is left out (shown as a dash)."""
    own_run = entry["beam_size"] == 1 and entry["step"] is None
    per_epoch = result.get("steps_per_epoch")
    if entry["step"] is not None:
        epochs = result["step"] / per_epoch if per_epoch else None
    else:
        epochs = result.get("epochs")
    tokens = result.get("median_tokens_per_s")
    validations = result.get("validations", [])
    trend = validations[-1]["val_ppl"] / validations[-2]["val_ppl"] - 1 if len(validations) > 1 else None
    values = {
        **{k: f"{v:.2f}" for k, v in metrics(result).items() if v is not None},
        "params": format_params(result["num_params"]) if result.get("num_params") else None,
        "epochs": None if epochs is None else f"{epochs:g}" if epochs == int(epochs) else f"{epochs:.1f}",
        "wall": format_wall(result["wall_s"]) if own_run and result.get("wall_s") is not None else None,
        "tokens_per_s": f"{round(tokens):,}" if own_run and tokens is not None else None,
        "target_tokens_per_s": f"{round(tokens):,}" if own_run and tokens is not None else None,
        "hardware": entry.get("hardware") if own_run else None,
        "seed": str(result["seed"]) if result.get("seed") is not None else None,
        "val_ppl_trend": None if trend is None else f"{100 * trend:+.1f} %".replace("-", "−"),
    }
    return {"label": entry["label"], **{k: v for k, v in values.items() if v is not None}}


def group_cells(group: str, rows: list[dict], numbers: list[dict]) -> dict:
    """The mean ± spread row of a group of runs (the same config, other seeds).

    Args:
      group: the group's name (the row is labelled with it).
      rows: the members' :func:`cells`.
      numbers: the members' :func:`metrics`.

    Returns:
      cells: a column on which all rows agree shows that text; a metric column (BLEU,
      perplexities) shows mean ± sample standard deviation (n − 1) of the members' values;
      the other columns stay empty.
    """
    out = {"label": f"{group}: mean ± s.d. of {len(rows)} runs"}
    for key in HEADERS.keys() - {"label"}:
        texts = [row.get(key) for row in rows]
        if None in texts:
            continue
        if len(set(texts)) == 1:
            out[key] = texts[0]
        elif key in SPREAD:
            values = [n[key] for n in numbers]
            out[key] = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    return out


def render_table(table: str, entries: list[dict], results: dict) -> list[str]:
    """The markdown lines of one results table.

    Args:
      table: a key of :data:`TABLES`.
      entries: the manifest entries (all tables; this one's are picked in order).
      results: entry id -> its JSON.

    Returns:
      the header, the alignment line, then per entry its reference rows and its row, and after
      the last entry of each ``group`` of two or more the group's mean ± spread row.
    """
    columns, split = TABLES[table]
    mine = [e for e in entries if e["table"] == table]
    groups = {}
    for e in mine:
        groups.setdefault(e.get("group"), []).append(e)
    line = lambda row: "| " + " | ".join(str(row.get(c, EMPTY)) for c in columns) + " |"
    lines = ["| " + " | ".join(HEADERS[c].format(split=split) for c in columns) + " |",
             "|" + "|".join("---:" if c in RIGHT else "---" for c in columns) + "|"]
    rows = {}
    result = lambda e: results[e.get("same_as", e["id"])]
    by_id = {e["id"]: e for e in entries}
    for e in mine:
        lines += [line({k: v for k, v in ref.items() if k != "source"}) for ref in e.get("reference", [])]
        shown = {**e, "hardware": by_id[e["same_as"]].get("hardware")} if "same_as" in e else e  # the run's own
        rows[e["id"]] = cells(shown, result(e))
        lines.append(line(rows[e["id"]]))
        members = groups[e.get("group")]
        if e.get("group") is not None and len(members) > 1 and e is members[-1]:
            lines.append(line(group_cells(e["group"], [rows[m["id"]] for m in members],
                                          [metrics(result(m)) for m in members])))
    return lines


def replace_tables(readme: str, tables: dict, path) -> str:
    """``readme`` with the lines between the marker lines ``<!-- results:NAME -->`` and
    ``<!-- /results:NAME -->`` replaced by table NAME's lines; the rest byte for byte as it was.
    A marker counts only as a line of its own (prose may quote one).

    Raises:
      ZooError: a table's markers are missing, repeated or out of order, or markers name an
        unknown table; naming ``path`` and the table.
    """
    for name in re.findall(r"^<!-- /?results:(\S+) -->$", readme, re.M):
        if name not in tables:
            raise ZooError(f"{path}: markers for table {name!r}, which no manifest entry fills")
    for name, lines in tables.items():
        begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        found = [[m.start() for m in re.finditer(f"^{re.escape(marker)}$", readme, re.M)] for marker in (begin, end)]
        if [len(f) for f in found] != [1, 1] or found[0][0] > found[1][0]:
            raise ZooError(f"{path}: table {name!r} needs one {begin} line and one {end} line after it")
        readme = readme[:found[0][0]] + "\n".join([begin, *lines, end]) + readme[found[1][0] + len(end):]
    return readme


def regenerate(folder, readme_path, data_dir=None, evaluate: bool = True, log=print) -> None:
    """Re-evaluate the manifest's workdirs and rewrite their JSON and the README's tables.

    Everything is computed first and written last, so a bad input writes nothing.

    Args:
      folder: the results folder (``runs.yaml`` and the ``<id>.json`` files).
      readme_path: the Markdown page whose marked tables are regenerated (``docs/results.md``).
      data_dir: where the corpora are.
      evaluate: False: only regenerate the tables from the JSON files (``--tables-only``).
      log: called with one line per entry kept or evaluated (none with ``evaluate`` False), then
        one line for the README.

    Raises:
      ZooError: a bad manifest (see :func:`read_manifest`), a missing JSON file for an entry
        whose workdir is gone (or not evaluated), a workdir that cannot be evaluated, or a README
        without an entry's table markers; one line naming the file and the entry.
    """
    folder, readme_path = Path(folder), Path(readme_path)
    entries = read_manifest(folder)
    try:
        readme = readme_path.read_text(encoding="utf-8")
    except OSError as e:
        raise ZooError(f"{readme_path}: cannot read ({e.strerror or e})") from None
    runs = [e for e in entries if "same_as" not in e]
    replace_tables(readme, {e["table"]: [] for e in entries}, readme_path)  # the markers, before any evaluation
    todo = []
    for e in runs:
        json_path = folder / f"{e['id']}.json"
        if not evaluate:
            if not json_path.is_file():
                raise ZooError(f"{json_path}: no such file for entry {e['id']!r}; run evaluate.py --all without --tables-only")
            continue
        why = None if Path(e["workdir"]).is_dir() else f"workdir {e['workdir']} is not on this machine"
        if why is None:
            difference = config_difference(read_config(e["workdir"]), train_command_config(e["command"]),
                                           ignore={"model.src_vocab_size", "model.tgt_vocab_size"})  # set by training
            if difference:
                name, saved, wanted = difference
                why = f"workdir {e['workdir']} holds another run ({name}={saved!r}, the command gives {wanted!r})"
        if why is None:
            todo.append(e)
        elif not json_path.is_file():
            raise ZooError(f"{json_path}: no such file for entry {e['id']!r}, whose results are kept: {why}")
        else:
            log(f"{json_path}: kept; {why}")
    results = {e["id"]: read_json(folder / f"{e['id']}.json") for e in runs if e not in todo}
    for e in todo:
        results[e["id"]] = evaluate_entry(e, data_dir)
        r = results[e["id"]]
        log(f"{folder / (e['id'] + '.json')}: evaluated {e['workdir']} step {r['step']}: BLEU {r['bleu_lc_tok']:.2f} "
            f"lc-tok, {r['bleu']:.2f} cased; PPL {r['ppl_free_running']:.2f} free-running, "
            f"{r['ppl_teacher_forced']:.2f} teacher-forced")
    for e in runs:
        missing = sorted({"bleu", "bleu_lc_tok", "ppl_free_running", "ppl_teacher_forced"} - set(results[e["id"]]))
        if missing:
            raise ZooError(f"{folder / (e['id'] + '.json')}: missing key {missing[0]!r}")
    tables = {table: render_table(table, entries, results) for table in dict.fromkeys(e["table"] for e in entries)}
    text = replace_tables(readme, tables, readme_path)
    for e in todo:
        write_text(folder / f"{e['id']}.json", json.dumps(results[e["id"]], indent=2) + "\n")
    write_text(readme_path, text)
    log(f"{readme_path}: regenerated {', '.join(tables)} from {len(runs)} results in {folder} ({len(todo)} evaluated now)")


def main(argv=None) -> int:
    """The command line (see the module docstring): exit status 0, or 2 after one error line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="the results folder: runs.yaml and one JSON per row (default: results)")
    p.add_argument("--readme", default="docs/results.md",
                   help="the Markdown page whose marked tables are regenerated (default: docs/results.md)")
    p.add_argument("--data-dir", default=None, help="where the corpora are (default: $ZOO_DATA_DIR, else ~/.cache/zoo/data)")
    p.add_argument("--tables-only", action="store_true", help="only regenerate the tables from the JSON files")
    args = p.parse_args(argv)
    try:
        regenerate(args.results, args.readme, args.data_dir, evaluate=not args.tables_only)
    except ZooError as e:
        print(f"results_tables.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
