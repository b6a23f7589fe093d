"""Evaluate a trained workdir: ``python evaluate.py --workdir runs/bahdanau --split test2016``.

Prints and (with ``--output``) writes corpus BLEU (sacreBLEU, cased detokenized and lowercased
tokenized, with signatures) and teacher-forced and free-running perplexity. ``--src/--ref``
evaluate any pair of line-aligned text files (plain or .gz) instead of a named split.
Nothing is written into the workdir.

``--all`` re-evaluates every workdir of ``results/runs.yaml`` into ``results/<id>.json`` and
regenerates the results tables of ``docs/results.md`` from those files (see :mod:`zoo.results`).
"""

import argparse
import json
import sys
from pathlib import Path

from zoo.errors import ZooError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="the trained workdir (required, except with --all)")
    p.add_argument("--split", default=None, help="a named split of the workdir's dataset (default: its last, the test "
                   "split: multi30k test2016, tatoeba test)")
    p.add_argument("--src", help="source-language text file (with --ref, instead of --split)")
    p.add_argument("--ref", help="reference translations, line-aligned with --src")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: best validation loss)")
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--hypotheses", help="write the translations here, one per line")
    p.add_argument("--plot-attention", metavar="PNG", help="draw attention heatmaps of a few sentences")
    p.add_argument("--plot-sentences", type=int, default=4, help="how many sentences --plot-attention draws")
    p.add_argument("--plot-layer", type=int, default=-1,
                   help="decoder layer whose heads --plot-attention draws, one panel per head (default: the last)")
    p.add_argument("--all", action="store_true", help="re-evaluate every workdir of RESULTS/runs.yaml and regenerate "
                   "the results tables of docs/results.md")
    p.add_argument("--results", help="with --all: the results folder (default: results)")
    p.add_argument("--readme", help="with --all: the Markdown page whose tables are regenerated (default: docs/results.md)")
    p.add_argument("--tables-only", action="store_true", help="with --all: only regenerate the tables from the JSON files")
    return p.parse_args(argv)


SINGLE_RUN_FLAGS = ("workdir", "split", "src", "ref", "step", "output", "hypotheses", "plot_attention")


def check_mode(args) -> None:
    """Refuse flags of one mode given in the other: --workdir (and the flags of one run) without
    --all, --results/--readme/--tables-only without it."""
    if args.all:
        given = [f for f in SINGLE_RUN_FLAGS if getattr(args, f) is not None]
        if given:
            raise ZooError(f"--all evaluates the workdirs of the manifest; leave out --{given[0].replace('_', '-')}")
        return
    if args.results or args.readme or args.tables_only:
        raise ZooError("--results, --readme and --tables-only go with --all")
    if args.workdir is None:
        raise ZooError("--workdir is required (or --all)")


def main_all(args) -> int:
    """``--all``: :func:`zoo.results.regenerate`."""
    from zoo.results import regenerate

    try:
        regenerate(args.results or "results", args.readme or "docs/results.md", args.data_dir, evaluate=not args.tables_only)
    except ZooError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    return 0


def check_outputs(args) -> list[Path]:
    """Output paths, refusing any inside the workdir (evaluation never writes there)."""
    workdir = Path(args.workdir).resolve()
    outputs = [Path(p) for p in (args.output, args.hypotheses, args.plot_attention) if p]
    for path in outputs:
        if workdir in path.resolve().parents:
            raise ZooError(f"{path}: evaluation does not write into the workdir {args.workdir}; choose another path")
        if not path.resolve().parent.is_dir():
            raise ZooError(f"{path}: folder {path.parent} does not exist")
    return outputs


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_mode(args)
    except ZooError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    if args.all:
        return main_all(args)
    try:
        if (args.src is None) != (args.ref is None):
            raise ZooError("--src and --ref go together")
        if args.beam_size < 1:
            raise ZooError(f"--beam-size {args.beam_size}: must be at least 1")
        if args.plot_sentences < 1:
            raise ZooError(f"--plot-sentences {args.plot_sentences}: must be at least 1")
        check_outputs(args)
        from zoo.checkpoint import read_config
        from zoo.data.corpora import DATASETS, load_split
        from zoo.data.text import read_parallel
        from zoo.models import MODELS

        config = read_config(args.workdir)
        if args.plot_attention and not MODELS[config.model_name].has_attention:
            raise ZooError(f"--plot-attention: model {config.model_name!r} has no attention to plot")
        if args.src:
            sources, references = read_parallel(args.src, args.ref)
            name = f"{args.src} -> {args.ref}"
        else:
            d = config.data
            split = args.split or DATASETS[d.dataset][1][-1]
            sources, references = load_split(d.dataset, split, d.src_lang, d.tgt_lang, args.data_dir)
            name = f"{d.dataset} {split}"

        from zoo.evaluation import evaluate
        from zoo.translator import load

        translator = load(args.workdir, args.step)
        results, hypotheses = evaluate(translator, sources, references, args.beam_size)
    except ZooError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    results["data"] = name
    print(
        f"{name}: BLEU {results['bleu']:.2f} (cased, detokenized), {results['bleu_lc_tok']:.2f} (lowercased, tokenized); "
        f"PPL {results['ppl_free_running']:.2f} free-running, {results['ppl_teacher_forced']:.2f} teacher-forced; "
        f"{len(sources)} sentences, step {results['step']}"
    )
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    if args.hypotheses:
        Path(args.hypotheses).write_text("".join(h + "\n" for h in hypotheses))
    if args.plot_attention:
        from zoo.plotting import plot_attention

        try:
            plot_attention(translator.translate_tokens(sources[: args.plot_sentences], args.beam_size),
                           args.plot_attention, args.plot_layer)
        except ValueError as e:
            print(f"evaluate.py: error: --plot-layer: {e}", file=sys.stderr)
            return 2
    return 0

