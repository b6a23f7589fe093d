"""Train a zoo model: ``python train.py --model bahdanau --workdir runs/bahdanau``.

Running it again on the same workdir resumes from the latest checkpoint. Every field of the
model's config, of ``DataConfig`` and of ``TrainConfig`` (zoo/config.py) is a flag, derived by
tyro from the dataclasses with their defaults and comments: ``--model.hidden-dim 256``,
``--data.min-freq 1``, ``--train.batch-tokens 4096``; ``--help`` lists them for the chosen
``--model``, whose defaults are the recipe of its README results row (``zoo.config.RECIPES``).
``--config FILE`` (JSON, e.g. a workdir's config.json, or YAML) sets every field at once; flags
override it. Older spellings (``--epochs 3``, ``--set hidden_dim=256``,
``--no-lowercase``) are rewritten to the new ones.
"""

import contextlib
import dataclasses
import io
import json
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import tyro
import yaml

from zoo.config import MODEL_CONFIGS, Config, DataConfig, TrainConfig, recipe
from zoo.errors import ZooError


@dataclass(frozen=True)
class RunOptions:
    """Where a run reads and writes; not part of the stored config."""

    workdir: str  # checkpoints, config, vocabularies and metrics go here
    data_dir: str | None = None  # corpora root (default: $ZOO_DATA_DIR, else ~/.cache/zoo/data)
    progress: bool = True  # show the progress bar
    compilation_cache: str | None = None  # JAX's compilation cache (default: $ZOO_COMPILATION_CACHE, else ~/.cache/zoo/jax; off)
    distributed: bool = False  # one process of a multi-process run: jax.distributed.initialize(), cluster auto-detected
    coordinator_address: str | None = None  # multi-process run: HOST:PORT of process 0 (any free port)
    num_processes: int | None = None  # multi-process run: how many processes
    process_id: int | None = None  # multi-process run: this process's index, from 0


def _pop(argv: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` or ``flag=VALUE`` from ``argv``; its VALUE, or None if absent."""
    for i, arg in enumerate(argv):
        if arg == flag:
            if i + 1 == len(argv):
                raise ZooError(f"{flag}: expected a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(flag + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def read_config_file(path: str) -> Config:
    """A whole :class:`Config` from JSON or YAML (the layout of a workdir's ``config.json``).

    Raises:
      ZooError: missing, unreadable or invalid file, naming it.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
        return Config.from_json(json.dumps(raw))
    except (OSError, yaml.YAMLError, ValueError, TypeError, KeyError) as e:
        raise ZooError(f"--config {path}: {type(e).__name__}: {e}".splitlines()[0]) from None


def _rewrite_old_flags(argv: list[str], sections: dict) -> list[str]:
    """``--set F=V`` -> ``--model.F V``; ``--NAME`` / ``--no-NAME`` of a field of exactly one section
    (and not a run option) -> ``--SECTION.NAME``."""
    options = {f.name for f in dataclasses.fields(RunOptions)}
    out, args = [], iter(argv)
    for arg in args:
        if arg == "--set" or arg.startswith("--set="):
            pair = arg[len("--set=") :] if "=" in arg else next(args, "")
            name, sep, value = pair.partition("=")
            if not sep:
                raise ZooError(f"--set {pair!r}: expected FIELD=VALUE (now spelled --model.{name.replace('_', '-')} VALUE)")
            flag = f"--model.{name.replace('_', '-')}"
            if {f.name: f.type for f in dataclasses.fields(sections["model"])}.get(name) is bool:  # a flag of its own
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ZooError(f"--set {pair!r}: {value!r} is not a bool (true or false)")
                flag = flag if value.lower() in ("true", "1", "yes") else f"--model.no-{name.replace('_', '-')}"
                out.append(flag)
            else:
                out += [flag, value]
            continue
        flag, eq, value = arg.partition("=")
        negated = flag.startswith("--no-")
        name = (flag[5:] if negated else flag[2:]).replace("-", "_")
        owners = [s for s, cls in sections.items() if name in {f.name for f in dataclasses.fields(cls)}]
        if flag.startswith("--") and "." not in flag and name not in options and len(owners) == 1:
            arg = f"--{owners[0]}.{'no-' if negated else ''}{name.replace('_', '-')}{eq}{value}"
        out.append(arg)
    return out


def _tyro_cli(args_class, argv: list[str], description: str):
    """``tyro.cli``, with its framed error message turned into one :class:`ZooError` line."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return tyro.cli(args_class, args=argv, prog="train.py", description=description)
    except SystemExit as e:
        if not e.code:
            raise  # --help
        lines = [line.strip(" │|╭╮╰╯") for line in re.sub(r"\x1b\[[0-9;]*m", "", errors.getvalue()).splitlines()]
        rule = [not line.strip("─-") for line in lines]  # separators (and blank lines)
        first = next((i for i in range(1, len(lines)) if not rule[i]), len(lines))  # after the title
        message = lines[first : next((i for i in range(first, len(lines)) if rule[i]), len(lines))]
        raise ZooError(" ".join(message) or "bad arguments (see train.py --help)") from None
    except ValueError as e:  # a __post_init__ check that tyro passed on
        raise ZooError(str(e)) from None


def parse_args(argv=None) -> tuple[Config, RunOptions]:
    """The config and run options of a command line (see the module docstring).

    Raises:
      ZooError: an unknown model, a bad ``--config`` file, or a value a config refuses.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    name, config_file = _pop(argv, "--model"), _pop(argv, "--config")
    base = read_config_file(config_file) if config_file else None
    name = name or (base.model_name if base else "bahdanau")
    if name not in MODEL_CONFIGS:
        raise ZooError(f"--model {name!r}: choose from {', '.join(sorted(MODEL_CONFIGS))}")
    if base is None:
        base = recipe(name)
    elif base.model_name != name:
        base = Config(name, recipe(name).model, base.data, base.train)
    sections = {"model": MODEL_CONFIGS[name], "data": DataConfig, "train": TrainConfig}
    args_class = dataclasses.make_dataclass(
        "TrainArgs", [("run", Annotated[RunOptions, tyro.conf.OmitArgPrefixes])]
        + [(s, cls, field(default=getattr(base, s))) for s, cls in sections.items()], frozen=True)
    description = f"{__doc__}\nModel: --model {name} (choose from {', '.join(sorted(MODEL_CONFIGS))})."
    args = _tyro_cli(args_class, _rewrite_old_flags(argv, sections), description)
    return Config(name, args.model, args.data, args.train), args.run


def main(argv=None) -> int:
    try:
        config, options = parse_args(argv)
        explicit = (options.coordinator_address, options.num_processes, options.process_id)
        if options.distributed or explicit != (None, None, None):  # before any other JAX call
            from zoo.distributed import initialize

            initialize(*explicit)
        from zoo.compilation import default_cache_dir, enable_compilation_cache
        from zoo.training import train

        cache = options.compilation_cache
        enable_compilation_cache(default_cache_dir() if cache is None else None if cache == "off" else cache)
        result = train(config, options.workdir, options.data_dir, progress=options.progress)
    except ZooError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    from zoo.distributed import is_main

    if is_main():
        print(f"trained to step {result['step']} (epoch {result['epoch']}); best val loss {result['best_val_loss']:.4f}; "
              f"{result['wall_s']:.0f} s; XLA: {result['compiled']} programs compiled, {result['cached']} from the cache; "
              f"workdir {options.workdir}")
    return 128 + signal.Signals[result["stopped_by"]] if result["stopped_by"] else 0
