"""The GPU machine's check (``scripts/accelerator_checks.sh``) runs where no package registry can
be reached: everything it imports is in the machine's image (``scripts/device_image_packages.txt``)
or among the wheels it carries (``scripts/device_wheels.txt``), and it never asks a registry.

Imports are read with ``ast`` from every module of the package (``zoo/**``), the Python files the
script runs, and the local modules those import (``tests/attention_paths.py``, ...); import
names map to distributions with ``importlib.metadata.packages_distributions()`` of this
environment, where the project and its extras are installed.
"""

import ast
import importlib.metadata
import importlib.util
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import zoo
import zoo.models

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "accelerator_checks.sh"
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                 "platform_python_implementation": "CPython", "os_name": "posix"}


def listed(path: Path) -> dict[str, str]:
    """``{canonical name: line}`` of a list file: one requirement or name a line, ``#`` comments."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(Requirement(line).name): line for line in lines if line}


IMAGE = listed(ROOT / "scripts" / "device_image_packages.txt")
WHEELS = listed(ROOT / "scripts" / "device_wheels.txt")


def script_commands() -> list[list[str]]:
    """The script's simple commands as words (continuations joined, comments and heredocs
    dropped, lines split at ``||``, ``&&``, ``;`` and ``|``)."""
    text = re.sub(r"<<'EOF'\n.*?\nEOF\n", "\n", SCRIPT.read_text(), flags=re.S).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, words = True, []
        for word in [*lexer, ";"]:
            if word in ("||", "&&", ";", "|"):
                commands, words = commands + [words] * bool(words), []
            else:
                words.append(word)
    return commands


def run_files() -> list[Path]:
    """The Python files the script runs: every ``*.py`` argument of its commands (the test files
    of its pytest run, and their ``conftest.py``)."""
    files = {ROOT / word for words in script_commands() for word in words if word.endswith(".py")}
    files |= {path.parent / "conftest.py" for path in files if path.name.startswith("test_")}
    return sorted(path for path in files if path.is_file())


def imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path`` (at any depth: lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports() -> dict[str, set[Path]]:
    """``{top-level module: files importing it}`` for every module that is neither the standard
    library, ``zoo`` nor a file beside its importer (followed: its imports count too)."""
    todo, seen, found = [*ROOT.glob("zoo/**/*.py"), *run_files()], set(), {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports(path):
            local = path.parent / f"{name}.py"
            if local.is_file():
                todo.append(local)
            elif name != "zoo" and name not in sys.stdlib_module_names:
                found.setdefault(name, set()).add(path.relative_to(ROOT))
    return found


def requirements(distribution: str, extras: set[str]) -> list[Requirement]:
    """What ``distribution`` (installed here) requires on the device's Python, with ``extras``."""
    out = []
    for line in importlib.metadata.requires(distribution) or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({**DEVICE_PYTHON, "extra": e}) for e in extras | {""}):
            out.append(req)
    return out


def test_every_import_of_the_package_and_the_device_scripts_is_in_the_image_or_carried():
    """Every third-party module imported by ``zoo/**`` and by the files the script runs (torch,
    matplotlib and other lazy imports included) belongs to a distribution of the image or of
    the carried wheels; the pytest run's plugins too (pytest-xdist for ``-n``; jaxtyping's hook
    with beartype, from ``addopts``)."""
    files = run_files()
    assert ROOT / "scripts" / "step_time_check.py" in files and ROOT / "benchmark.py" in files
    assert ROOT / "tests" / "conftest.py" in files
    found = third_party_imports()
    assert {"jax", "flax", "optax", "orbax", "grain", "tyro", "sacremoses", "torch"} <= set(found)
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    hooked = re.search(r"--jaxtyping-packages=(\S+)", addopts).group(1).split(",")
    plugins = {"pytest", "xdist", "jaxtyping", *(m.split(".")[0] for m in hooked)} - {"zoo"}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(set(found) | plugins):
        names = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert names, f"{module} (imported by {sorted(map(str, found.get(module, ['pytest'])))}) is not installed here"
        if not names & (IMAGE.keys() | WHEELS.keys()):
            missing[module] = names
    assert missing == {}, "add to scripts/device_wheels.txt: " + ", ".join(n for v in missing.values() for n in v)


def test_the_wheels_and_the_image_cover_the_projects_dependencies_and_each_others():
    """The project's dependencies, and what every carried wheel requires on Python 3.12 Linux
    (with the extras asked for, e.g. grain's ``etils[epath,epy]``), are in the image or carried:
    ``pip install --no-index`` there resolves. The carried ones are not already in the image."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [(Requirement(line), "pyproject.toml") for line in project]
    todo += [(Requirement(line), "scripts/device_wheels.txt") for line in WHEELS.values()]
    available, missing, seen = IMAGE.keys() | WHEELS.keys(), set(), set()
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if name not in available:
            missing.add(f"{name} (required by {by})")
        if (name, frozenset(req.extras)) in seen or name in IMAGE and not req.extras:
            continue
        seen.add((name, frozenset(req.extras)))
        if name in WHEELS or req.extras:
            todo += [(r, name) for r in requirements(name, set(req.extras))]
    assert missing == set()
    assert WHEELS.keys() & IMAGE.keys() == set()
    assert all("==" in line for line in WHEELS.values()), "pin each carried wheel: one version travels"


def test_the_script_never_asks_a_registry_and_keeps_to_eight_files():
    """Every ``pip install`` of the script has ``--no-index``; the files it writes under $OUT
    are at most 8 (the device tool returns no more)."""
    commands = script_commands()
    installs = [words for words in commands if words[1:4] == ["-m", "pip", "install"]]
    assert installs and all("--no-index" in words for words in installs)
    assert not any("download" in words for words in commands)
    outputs = set(re.findall(r'"\$OUT/([\w.-]+)"', SCRIPT.read_text()))
    assert 5 <= len(outputs) <= 8, outputs


def test_the_step_time_check_builds_every_configuration_it_measures(tmp_path):
    """``scripts/step_time_check.py`` imports with today's package, and without a corpus gives each
    model's recipe in the asked dtype (the quick sizes' overrides applied) on the synthetic batch;
    a bad ``--batch`` is refused in one line. (Compiling and timing are the GPU run's.)"""
    spec = importlib.util.spec_from_file_location("step_time_check", ROOT / "scripts" / "step_time_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    for name in zoo.list_models():
        overrides = check.QUICK.overrides.get(name, {})
        config, shape, source = check.configuration(name, "bfloat16", overrides, tmp_path, (2, 3, 4))
        assert (config.model_name, config.model.dtype, shape, source) == (name, "bfloat16", (2, 3, 4), "synthetic")
        assert config.train == zoo.models.recipe(name).train
        assert all(getattr(config.model, field) == value for field, value in overrides.items())
    with pytest.raises(SystemExit):
        check.main(["--batch", "2,3"])
