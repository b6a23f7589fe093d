"""Train a zoo model: ``python train.py --model bahdanau --workdir runs/bahdanau``.

Running it again on the same workdir resumes from the latest checkpoint. Every field of the
model's config, of ``DataConfig`` and of ``TrainConfig`` (zoo/config.py) is a flag, derived by
tyro from the dataclasses with their defaults and comments: ``--model.hidden-dim 256``,
``--data.min-freq 1``, ``--train.batch-tokens 4096``; ``--help`` lists them for the chosen
``--model``, whose defaults are the recipe of its README results row (``zoo.models.RECIPES``).
``--config FILE`` (JSON, e.g. a workdir's config.json, or YAML) sets every field at once; flags
override it.

The command line is read in two stages: argparse first reads ``--model`` and ``--config``, which
decide the dataclasses and their defaults; tyro then reads every flag (those two included, so
that ``--help`` lists them). Whatever tyro refuses comes back as one line (a hook on tyro's
parse errors); a flag of an older spelling is refused naming today's (``--epochs`` ->
``--train.epochs``, ``--set hidden_dim=256`` -> ``--model.hidden-dim 256``).
"""

import argparse
import dataclasses
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro
import yaml
from tyro import _errors as tyro_errors  # tyro's parse-error hook: private, hence tyro pinned in pyproject.toml

from zoo.checkpoint import config_from_dict
from zoo.config import Config, DataConfig, TrainConfig
from zoo.errors import ZooError
from zoo.models import MODELS, recipe


@dataclass(frozen=True)
class Selection:
    """What a run trains; read before the other flags, whose defaults it decides."""

    model: Literal[tuple(sorted(MODELS))] = "bahdanau"  # the architecture; its flags default to its README recipe
    config: str | None = None  # a whole config, JSON (a workdir's config.json) or YAML; flags override it


@dataclass(frozen=True)
class RunOptions:
    """Where a run reads and writes; not part of the stored config."""

    workdir: str  # checkpoints, config, vocabularies and metrics go here
    data_dir: str | None = None  # corpora root (default: $ZOO_DATA_DIR, else ~/.cache/zoo/data)
    progress: bool = True  # show the progress bar
    accept_new_data: bool = False  # resume on training data other than the workdir was trained on (on purpose)
    compilation_cache: str | None = None  # JAX's compilation cache (default: $ZOO_COMPILATION_CACHE, else ~/.cache/zoo/jax; off)
    # prepared training data (python -m zoo.data.prepare; made here when missing or stale): this cache
    # (default: $ZOO_PREPARED_DIR, else ~/.cache/zoo/prepared); off: tokenize the training split into memory
    prepared_dir: str | None = None
    distributed: bool = False  # one process of a multi-process run: jax.distributed.initialize(), cluster auto-detected
    coordinator_address: str | None = None  # multi-process run: HOST:PORT of process 0 (any free port)
    num_processes: int | None = None  # multi-process run: how many processes
    process_id: int | None = None  # multi-process run: this process's index, from 0
    compile_only: str | None = None  # a topology (tpu:v5e-8, ...: zoo.aot.TOPOLOGIES): compile the step, print HBM and roofline
    output: str | None = None  # with --compile-only: also write the report as JSON to this file


def read_config_file(path: str) -> Config:
    """A whole :class:`~zoo.config.Config` from JSON or YAML (the layout of a workdir's ``config.json``).

    Raises:
      ZooError: missing, unreadable or invalid file, one over :data:`CONFIG_FILE_LIMIT` bytes or
        with YAML aliases; naming it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_FILE_LIMIT + 1)
        if len(data) > CONFIG_FILE_LIMIT:
            raise ZooError(f"--config {path}: larger than {CONFIG_FILE_LIMIT} bytes; a config file has a few hundred")
        raw = yaml.load(data.decode("utf-8"), Loader=_NoAliasLoader)  # YAML is a superset of JSON
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ZooError(f"--config {path}: {type(e).__name__}: {e}".splitlines()[0]) from None
    return config_from_dict(raw, f"--config {path}")


CONFIG_FILE_LIMIT = 1 << 20  # bytes of a --config file


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (``*name``): a config needs none, and aliases of
    aliases grow a file of a few hundred bytes into gigabytes (a "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError(f"aliases (*{self.peek_event().anchor}) are not allowed in a config file")
        return super().compose_node(parent, index)


def _select(argv: list[str]) -> tuple[str | None, str | None]:
    """The first stage: ``--model`` and ``--config``, leaving ``argv`` to tyro."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("--model")
    parser.add_argument("--config")
    try:
        selected, _ = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise ZooError(str(e)) from None
    return selected.model, selected.config


def _renamed(token: str, sections: dict) -> str:
    """The line for a flag tyro does not know: today's spelling when it names a field of a section."""
    flag = token.split("=", 1)[0]
    if flag == "--set":
        return "--set: set a model field as --model.FIELD VALUE (e.g. --model.hidden-dim 256)"
    negated = flag.startswith("--no-")
    name = flag.removeprefix("--no-" if negated else "--")
    spellings = [f"--{section}.{'no-' if negated else ''}{name}" for section, cls in sections.items()
                 if flag.startswith("--") and name.replace("-", "_") in {f.name for f in dataclasses.fields(cls)}]
    if spellings:
        return f"{flag}: now spelled {' or '.join(spellings)}"
    if not token.startswith("-"):
        return f"unexpected value {token!r} (see train.py --help)"
    return f"{token}: unrecognized (see train.py --help)"


def _parse_error(event: tyro_errors.ParseErrorEvent, sections: dict) -> ZooError:
    """One line for whatever tyro refuses (an unknown flag, a bad value or choice, a missing one)."""
    flag = lambda argument: "/".join(argument.lowered.name_or_flags)
    if isinstance(event, tyro_errors.UnrecognizedArgs):
        return ZooError(_renamed(event.tokens[0], sections))
    if isinstance(event, tyro_errors.InvalidChoice):
        return ZooError(f"{flag(event.argument)} {event.value!r}: choose from {', '.join(event.choices)}")
    if isinstance(event, tyro_errors.InstantiationFailure):  # a value tyro cannot convert, or a config's check
        return ZooError(f"{flag(event.argument)}: {event.message}" if event.argument else event.message)
    if isinstance(event, tyro_errors.MissingArgs):
        return ZooError(f"{', '.join(flag(a.arg) for a in event.missing_arguments)}: required")
    if isinstance(event, tyro_errors.BadValue):
        return ZooError(f"{flag(event.argument)}: expected a value" if event.offending_value is None
                        else f"{flag(event.argument)}: no value expected, got {event.offending_value!r}")
    return ZooError(f"bad arguments ({type(event).__name__}; see train.py --help)")


def parse_args(argv=None) -> tuple[Config, RunOptions]:
    """The config and run options of a command line (see the module docstring).

    Raises:
      ZooError: an unknown model or flag, a bad ``--config`` file, or a value a config refuses;
        one line.

    Examples:
      >>> config, run = parse_args(["--model", "luong", "--workdir", "w", "--model.hidden-dim", "64"])
      >>> config.model.hidden_dim, config.train.epochs, run.workdir
      (64, 12, 'w')
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    name, config_file = _select(argv)
    base = read_config_file(config_file) if config_file else None
    name = name or (base.model_name if base else "bahdanau")
    if name not in MODELS:
        raise ZooError(f"--model {name!r}: choose from {', '.join(sorted(MODELS))}")
    if base is None:
        base = recipe(name)
    elif base.model_name != name:
        base = dataclasses.replace(base, model_name=name, model=recipe(name).model)
    sections = {"model": MODELS[name].config, "data": DataConfig, "train": TrainConfig}
    args_class = dataclasses.make_dataclass(
        "TrainArgs", [("run", Annotated[RunOptions, tyro.conf.OmitArgPrefixes]),
                      ("selection", Annotated[Selection, tyro.conf.OmitArgPrefixes], field(default=Selection(name, config_file)))]
        + [(s, cls, field(default=getattr(base, s))) for s, cls in sections.items()], frozen=True)

    def refuse(event):
        raise _parse_error(event, sections)

    with tyro_errors.on_parse_error(refuse):
        args = tyro.cli(args_class, args=argv, prog="train.py", description=__doc__)
    return Config(model_name=name, model=args.model, data=args.data, train=args.train), args.run


def compile_only(config: Config, options: RunOptions) -> int:
    """``--compile-only TOPOLOGY``: the step this command would train, compiled for the topology
    (:func:`zoo.aot.plan`); prints the report, writes it to ``--output``; nothing into the workdir.

    Raises:
      ZooError: an unknown topology, no libtpu, or a step that does not fit a chip's HBM.
    """
    from zoo import aot

    report = aot.plan(config, aot.topology(options.compile_only), options.workdir, options.data_dir)
    if not report.fits:
        raise aot.DoesNotFit(f"{config.model_name} does not fit {report.topology}: {report.peak_bytes / 1e9:.2f} GB a chip, "
                             f"over the {report.hbm_bytes / 1e9:.2f} GB HBM of a {report.chip}",
                             report.peak_bytes, report.hbm_bytes)
    print(report.summary())
    if options.output:
        try:
            Path(options.output).write_text(report.to_json() + "\n")
        except OSError as e:
            raise ZooError(f"--output {options.output}: {e.strerror}") from None
    return 0


def main(argv=None) -> int:
    try:
        config, options = parse_args(argv)
        if options.compile_only:
            return compile_only(config, options)
        explicit = (options.coordinator_address, options.num_processes, options.process_id)
        if options.distributed or explicit != (None, None, None):  # before any other JAX call
            from zoo.distributed import initialize

            initialize(*explicit)
        from zoo.compilation import default_cache_dir, enable_compilation_cache
        from zoo.training import train

        cache = options.compilation_cache
        enable_compilation_cache(default_cache_dir() if cache is None else None if cache == "off" else cache)
        from zoo.data.prepare import prepared_root

        prepared = None if options.prepared_dir == "off" else prepared_root(options.prepared_dir)
        result = train(config, options.workdir, options.data_dir, progress=options.progress, prepared_dir=prepared,
                       accept_new_data=options.accept_new_data)
    except ZooError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    from zoo.distributed import is_main

    if is_main():
        print(f"trained to step {result['step']} (epoch {result['epoch']}); best val loss {result['best_val_loss']:.4f}; "
              f"{result['wall_s']:.0f} s; XLA: {result['compiled']} programs compiled, {result['cached']} from the cache; "
              f"workdir {options.workdir}")
    return 128 + signal.Signals[result["stopped_by"]] if result["stopped_by"] else 0
