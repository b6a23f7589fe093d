"""Every command the README, the documentation pages and results/runs.yaml show parses with
today's flags: train.py, evaluate.py and benchmark.py read them as they would (parse only, no
training). A command in inline code, or one written with ``...`` for what it leaves out, is a
fragment: it gets ``--workdir`` if it has none; inline code with a placeholder (``NAME``) is not
a command."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from zoo.bench import cli as benchmark
from zoo.cli import evaluate, train

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"python (train|evaluate|benchmark)\.py\b([^`\n]*)")


def commands() -> list[tuple[str, str, str]]:
    """``(where, script, arguments)`` of every command: in fenced code blocks and inline code of the
    Markdown pages (a trailing backslash continues a line), and in the manifest's ``command`` keys."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        fenced, lines, i = False, path.read_text(encoding="utf-8").splitlines(), 0
        while i < len(lines):
            number, line = i + 1, lines[i]
            fenced ^= line.lstrip().startswith("```")
            while line.endswith("\\") and i + 1 < len(lines):  # a shell line continued on the next
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            i += 1
            spans = [line] if fenced else [span for span in re.findall(r"`([^`]+)`", line)
                                           if not re.search(r"\b[A-Z]{3,}\b", span)]
            for span in spans:
                for m in COMMAND.finditer(span):
                    arguments = re.split(r'\s(?:&&|&|\||;)(?:\s|$)|"', m.group(2))[0]  # the command ends there
                    arguments += "" if fenced else " ..."
                    found.append((f"{path.relative_to(ROOT)}:{number}", m.group(1), arguments))
    for entry in yaml.safe_load((ROOT / "results" / "runs.yaml").read_text(encoding="utf-8")):
        if "command" in entry:
            m = COMMAND.search(entry["command"])
            found.append((f"results/runs.yaml:{entry['id']}", m.group(1), m.group(2)))
    return found


COMMANDS = commands()


def test_the_pages_and_the_manifest_have_commands_of_every_script():
    assert {script for _, script, _ in COMMANDS} == {"train", "evaluate", "benchmark"}
    assert sum(where.startswith("results/") for where, _, _ in COMMANDS) >= 50


@pytest.mark.parametrize("where, script, arguments", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_command_parses_with_todays_flags(where, script, arguments):
    argv = shlex.split(arguments, comments=True)
    if argv == ["--help"] or argv == ["--help", "..."]:
        with pytest.raises(SystemExit) as exit_:
            {"train": train, "evaluate": evaluate, "benchmark": benchmark}[script].parse_args(["--help"])
        assert exit_.value.code == 0
        return
    if "..." in argv:
        argv = [word for word in argv if word != "..."]
        argv += [] if "--workdir" in argv or script == "benchmark" else ["--workdir", "w"]
    if script == "train":
        train.parse_args(argv)  # raises ZooError, one line, on anything train.py refuses
    elif script == "evaluate":
        args = evaluate.parse_args(argv)  # exits on an unknown flag
        assert args.workdir is not None
    else:
        from zoo.bench.runner import STUDIES

        args = benchmark.parse_args(argv)
        assert set(args.studies) <= {*STUDIES, *benchmark.NAMED_ONLY}
