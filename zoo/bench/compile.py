"""The compile-only planner study: ``python benchmark.py compile``.

For every model × {float32, bfloat16} × {its default size, a large size} × {TPU v5e-8, TPU v5p-8}
(:data:`TOPOLOGIES`), the training step ``train.py`` would run on Multi30k is compiled for the
topology on this machine (:func:`zoo.aot.compile_train_step`: XLA:TPU from libtpu, compile-only
devices) and XLA says whether it fits a chip's HBM, how much it takes, its FLOPs a step and the
roofline step time and tokens/s they bound. Then the largest ``--train.batch-tokens`` that fits
is searched for with a handful of compiles (:func:`largest_batch_tokens`).

Sizes: the default is each model's recipe (``zoo.models.recipe``: its README results row, with
its batch); the large size is each paper's (:data:`LARGE`), at :data:`LARGE_BATCH_TOKENS` tokens
a batch. The vocabularies are Multi30k's (as ``train.py`` builds them), whatever the size.
"""

import dataclasses
import importlib.metadata
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

from zoo.aot import TOPOLOGIES, DoesNotFit, compile_train_step, largest_batch_shape, read_corpus
from zoo.config import Config
from zoo.errors import ZooError
from zoo.io import read_json
from zoo.models import list_models, recipe

DTYPES = ("float32", "bfloat16")
DEFAULT_TOPOLOGIES = ("tpu:v5e-8", "tpu:v5p-8")
LARGE_BATCH_TOKENS = 8192
# Each paper's size (the config docstrings in zoo/config.py name the papers' figures).
LARGE = {
    "transformer": {"d_model": 512, "num_heads": 8, "num_encoder_layers": 6, "num_decoder_layers": 6, "d_ff": 2048},  # base
    "bahdanau": {"embed_dim": 620, "hidden_dim": 1000, "attention_dim": 1000, "maxout_dim": 500},  # RNNsearch
    "sutskever": {"embed_dim": 1000, "hidden_dim": 1000, "num_layers": 4},
    "cho": {"embed_dim": 100, "hidden_dim": 1000, "maxout_dim": 500},
    "luong": {"embed_dim": 1000, "hidden_dim": 1000, "num_layers": 4, "attention_dim": 1000},
    "convs2s": {"embed_dim": 512, "hidden_dim": 512, "num_encoder_layers": 15, "num_decoder_layers": 15},  # WMT'14 En-Fr
}
SEARCH_COMPILES = 5  # compiles of the batch search beyond the row's own
NEAR_HBM = 0.9  # a fitting size whose peak is this close to the limit ends the search
AIM = 0.97  # the search aims its line a little under the limit, so that a near-straight peak still fits
# where the search runs by default: the chip with the least HBM, where the limit bites (on a v5p's
# 95 GiB it lies ~6x further and costs compiles of batches that large)
SEARCH_TOPOLOGIES = ("tpu:v5e-8",)


def study_config(model: str, dtype: str, size: str) -> Config:
    """The run config of one row: ``model``'s recipe in ``dtype``, at its default or :data:`LARGE` size."""
    config = recipe(model)
    overrides = {"dtype": dtype, **(LARGE[model] if size == "large" else {})}
    train = dataclasses.replace(config.train, batch_tokens=LARGE_BATCH_TOKENS) if size == "large" else config.train
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **overrides), train=train)


def with_batch_tokens(config: Config, batch_tokens: int) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, batch_tokens=batch_tokens))


class Corpus:
    """Multi30k's training lengths and vocabulary sizes, read once; compiles a config's largest batch."""

    def __init__(self, data_dir=None):
        self.config, self.src_lengths, self.tgt_lengths = read_corpus(recipe("transformer"), None, data_dir)
        self.vocab = {"src_vocab_size": self.config.model.src_vocab_size, "tgt_vocab_size": self.config.model.tgt_vocab_size}

    def compile(self, config: Config, topology: str) -> dict:
        """One compile: the :class:`~zoo.aot.CompileReport` fields and figures as a dict, or
        ``{"fits": False, "error": XLA's line}`` when the step does not fit."""
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, **self.vocab))
        topo = TOPOLOGIES[topology]
        try:
            shape = largest_batch_shape(config, self.src_lengths, self.tgt_lengths, topo.num_chips)
        except ZooError as e:  # a budget below the longest sentence's rows: no batch at all
            return {"fits": False, "batch_shape": None, "error": str(e)}
        try:
            with jax.numpy_dtype_promotion("standard"):
                report, _ = compile_train_step(config, topo, shape)
        except DoesNotFit as e:  # with XLA's requirement and what a chip offers, where it said
            return {"fits": False, "batch_shape": shape, "error": str(e), "peak_bytes": e.required_bytes,
                    "available_bytes": e.available_bytes}
        record = dataclasses.asdict(report)
        record.update({name: getattr(report, name) for name in ("peak_bytes", "fits", "roofline_s", "tokens_per_step",
                                                                "tokens_per_s", "mfu")})
        return record


def largest_batch_tokens(compile_at: Callable[[int], dict], start: int, first: dict, hbm: float,
                         budget: int = SEARCH_COMPILES) -> dict:
    """The largest ``batch_tokens`` that fits, from at most ``budget`` compiles after ``first`` (the
    compile at ``start``): a secant search on the peak HBM a chip, which is close to a straight line
    in the batch (HBM ≈ a + b·N: the state, plus activations ∝ the batch). While nothing failed, grow
    ×4 until two sizes fit, then try where the line through the last two peaks meets
    :data:`AIM` × the limit (rounded down to a multiple of 256); once a size failed, the line runs
    through the largest size that fitted and the smallest that did not, whose peak XLA states in
    its out-of-memory line (bisect where it did not say, or where the last two sizes both failed:
    near the limit the peak can jump, as XLA changes strategy, and the line overshoots). The limit is the HBM, or XLA's smaller
    "available HBM" once a failure stated it. The search ends when a size fits within
    :data:`NEAR_HBM` of the limit, or when the next size is one already tried. The answer is a
    lower bound of the true limit.

    Args:
      compile_at: N -> a dict with ``fits`` and ``peak_bytes`` (bytes a chip: XLA's requirement
        where it does not fit, or None) and, where it does not fit, ``available_bytes`` (or None).
      start: the N of ``first``. hbm: a chip's HBM in bytes.

    Returns:
      a dict: ``batch_tokens``, the largest fitting N compiled (None if none); ``predicted``, the
      last line's N at the limit (None without a line); ``tried``, ``[N, peak bytes or None, fits]``
      of every compile in order.

    Examples:
      >>> memory = lambda n: {"fits": 2e9 + 1e5 * n <= 16e9, "peak_bytes": 2e9 + 1e5 * n}
      >>> found = largest_batch_tokens(memory, 8192, memory(8192), hbm=16e9)
      >>> found["batch_tokens"], found["predicted"], [n for n, _, _ in found["tried"]]
      (135168, 140000, [8192, 32768, 135168])
    """
    tried = {start: first}
    predicted = None
    for _ in range(budget):
        limit = min([hbm] + [r["available_bytes"] for r in tried.values() if r.get("available_bytes")])
        fits = sorted(n for n, r in tried.items() if r["fits"])
        fails = sorted(n for n, r in tried.items() if not r["fits"])
        fit, fail = (fits[-1] if fits else None), (fails[0] if fails else None)
        if fit is None:
            n = max(256, fail // 4 // 256 * 256)
        elif tried[fit]["peak_bytes"] >= NEAR_HBM * limit:
            break  # close enough: the limit lies within a few per cent
        else:
            overshot = not any(r["fits"] for r in list(tried.values())[-2:])  # twice: no line, bisect
            n0, n1 = ((fit, fail) if fail is not None and tried[fail].get("peak_bytes") and not overshot
                      else fits[-2:] if fail is None and len(fits) >= 2 else (None, None))
            p0, p1 = (tried[n0]["peak_bytes"], tried[n1]["peak_bytes"]) if n0 is not None else (0, 0)
            if p1 > p0:  # the line through (n0, p0) and (n1, p1), read at a peak
                at = lambda peak: int(n0 + (peak - p0) * (n1 - n0) / (p1 - p0))
                predicted, n = at(limit), at(AIM * limit) // 256 * 256
            else:
                n = 4 * fit if fail is None else (fit + fail) // 2 // 256 * 256
            n = max(n, fit + 256) if fail is None else min(max(n, fit + 256), fail - 256)
        if n in tried or (fit is not None and fail is not None and not fit < n < fail):
            break
        tried[n] = compile_at(n)
    fits = [n for n, r in tried.items() if r["fits"]]
    return {"batch_tokens": max(fits) if fits else None, "predicted": predicted,
            "tried": [[n, r.get("peak_bytes"), r["fits"]] for n, r in tried.items()]}


def run_compile_study(out: Path, models=None, topologies=DEFAULT_TOPOLOGIES, sizes=("default", "large"),
                      search_on=SEARCH_TOPOLOGIES, data_dir=None, log=print) -> dict:
    """Compile every row and write ``out/compile.json``, ``out/compile.md`` and ``out/compile.png``
    (rewritten after every row, so that a run cut short leaves the rows it finished). Rows that an
    earlier run left in ``out/compile.json`` with the same libtpu, vocabularies and batch (and
    their batch search, if they have one) are kept, not compiled again: a run cut short resumes
    (delete the file to compile everything again). The searches run after every row, the large
    size's bfloat16 rows first (where HBM binds soonest, in the dtype a TPU run uses).

    Args:
      out: output folder (created). models: a subset of :func:`zoo.models.list_models` (None: all).
      topologies: names from :data:`zoo.aot.TOPOLOGIES` (gpu:h100 needs JAX's CUDA plugin).
      sizes: "default" and/or "large".
      search_on: the topologies whose rows also get the largest-batch search (:func:`largest_batch_tokens`).
      data_dir: where Multi30k is.

    Returns:
      the results dict written to ``compile.json``.

    Raises:
      ValueError: an unknown model, topology or size.
      zoo.errors.ZooError: no libtpu, no corpus.
    """
    from zoo.bench.measure import run_setting
    from zoo.bench.report import write_json
    from zoo.plotting import compile_plot

    models = list(models or list_models())
    bad = ([m for m in models if m not in list_models()] + [t for t in topologies if t not in TOPOLOGIES]
           + [s for s in sizes if s not in ("default", "large")])
    if bad:
        raise ValueError(f"unknown model, topology or size {bad[0]!r}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    corpus = Corpus(data_dir)
    setting = {**run_setting(jax.devices("cpu")[0], "float32"), "libtpu": importlib.metadata.version("libtpu"),
               "load_average_at_start": os.getloadavg(), "command": shlex.join(sys.argv),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    results = {"setting": setting,
               "vocab": corpus.vocab, "large": LARGE, "large_batch_tokens": LARGE_BATCH_TOKENS, "rows": []}
    previous = earlier_run(out / "compile.json", results)
    earlier = {row_key(r): r for r in previous["rows"]} if previous else {}
    if previous:
        results["earlier_runs"] = [*previous.get("earlier_runs", []), previous["setting"]]
    def save():  # with the earlier rows this run has not reached yet, so that a cut never loses one
        results.update(seconds=time.perf_counter() - start, load_average=os.getloadavg())
        reached = {row_key(r) for r in results["rows"]}
        write_json({**results, "rows": results["rows"] + [r for k, r in earlier.items() if k not in reached]},
                   out / "compile.json")
        (out / "compile.md").write_text(f"{model_table(results)}\n\n{compile_table(results)}\n")
        compile_plot(results, out / "compile.png")

    configs = {}
    for model in models:  # every row first, then the searches (the longer part)
        for size in sizes:
            for dtype in DTYPES:
                config = configs[model, size, dtype] = study_config(model, dtype, size)
                for topology in topologies:
                    key = {"model": model, "size": size, "dtype": dtype, "topology": topology,
                           "batch_tokens": config.train.batch_tokens, "batch_size": config.train.batch_size}
                    row = earlier.get(row_key(key))
                    log(f"[compile] {model} {size} {dtype} on {topology}" + (" (kept from compile.json)" if row else ""))
                    row = row or {**key, **corpus.compile(config, topology)}
                    results["rows"].append(row)
                    log("  " + row_line(row))
                    save()
    # the large size's first (where HBM binds soonest), bfloat16 before float32 (what a TPU run uses)
    for row in sorted(results["rows"], key=lambda r: (r["size"] != "large", r["dtype"] != "bfloat16")):
        if row["topology"] in search_on and "largest" not in row:
            config, topology = configs[row["model"], row["size"], row["dtype"]], row["topology"]
            log(f"[compile] largest batch: {row['model']} {row['size']} {row['dtype']} on {topology}")
            first = row if config.train.batch_tokens else corpus.compile(with_batch_tokens(config, 4096), topology)

            def compile_at(n, config=config, topology=topology):
                tic = time.perf_counter()
                found = corpus.compile(with_batch_tokens(config, n), topology)
                log(f"  {n:,} tokens: {row_line(found)} ({time.perf_counter() - tic:.0f} s)")
                return found

            row["largest"] = largest_batch_tokens(compile_at, config.train.batch_tokens or 4096, first,
                                                  TOPOLOGIES[topology].chip.hbm_bytes)
            log(f"  {row['largest']}")
            save()
    log(compile_table(results))
    return results


def row_key(row: dict) -> tuple:
    return tuple(row[k] for k in ("model", "size", "dtype", "topology", "batch_tokens", "batch_size"))


def earlier_run(path: Path, results: dict) -> dict | None:
    """The earlier ``compile.json`` at ``path`` if ``results`` may keep its rows (same libtpu,
    vocabularies and large sizes; each row's batch is in :func:`row_key`), else None."""
    if not path.exists():
        return None
    previous = read_json(path)
    same = all(previous.get(k) == results[k] for k in ("vocab", "large", "large_batch_tokens"))
    return previous if same and previous["setting"].get("libtpu") == results["setting"]["libtpu"] else None


def _batch(row: dict) -> str:
    return f"{row['batch_tokens']} tokens" if row["batch_tokens"] else f"{row['batch_size']} sentences"


def row_line(row: dict) -> str:
    """One row in words, for the log."""
    if not row["fits"]:  # XLA refused it (its line), or compiled it over the chip's HBM (no line)
        if row.get("error"):
            return f"does not fit: {row['error']}"
        return f"does not fit: {row['peak_bytes'] / 1e9:.2f} GB a chip, over the {row['hbm_bytes'] / 1e9:.2f} GB HBM"
    return (f"{row['peak_bytes'] / 1e9:.2f} GB a chip, {(row['xla_flops'] or 0) / 1e9:.1f} GFLOP, "
            f"{row['roofline_s'] * 1e3:.2f} ms, {row['tokens_per_s']:,.0f} tokens/s, compiled in {row['compile_s']:.0f} s")


def model_table(results: dict, dtype: str = "bfloat16") -> str:
    """The Markdown summary: one line a model, in ``dtype``, at its default and its paper size
    ("default / paper"): parameters, HBM a chip and the roofline step time on each topology, and
    the search's bracket of the largest ``batch_tokens`` that fits (≥ a size that fit, < one that
    did not). "–": a row not compiled, not fitting or not searched."""
    rows = {(r["model"], r["size"], r["topology"]): r for r in results["rows"] if r["dtype"] == dtype}
    models = list(dict.fromkeys(r["model"] for r in results["rows"]))
    topologies = list(dict.fromkeys(r["topology"] for r in results["rows"]))

    def pair(model, topology, figure):
        cells = []
        for size in ("default", "large"):
            r = rows.get((model, size, topology))
            cells.append(figure(r) if r and r["fits"] else "–")
        return " / ".join(cells)

    head = ["model", "params"] + [f"{t} {what}" for t in topologies for what in ("HBM a chip (GB)", "roofline step (ms)")]
    searched = [t for t in topologies if any(r.get("largest") for r in results["rows"] if r["topology"] == t)]
    head += [f"largest batch_tokens on {t}" for t in searched]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        cells = [model, pair(model, topologies[0], lambda r: f"{r['num_params'] / 1e6:.1f} M")]
        for t in topologies:
            cells += [pair(model, t, lambda r: f"{r['peak_bytes'] / 1e9:.2f}"),
                      pair(model, t, lambda r: f"{r['roofline_s'] * 1e3:.2f}")]
        for t in searched:
            cells.append(pair(model, t, _bracket))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bracket(row: dict) -> str:
    """The search's answer as "≥ the largest size that fit, < the smallest that did not"."""
    found = row.get("largest")
    if not found or not found["batch_tokens"]:
        return "–"
    fails = [n for n, _, fits in found["tried"] if not fits]
    return f"≥ {found['batch_tokens']:,}" + (f", < {min(fails):,}" if fails else "")


def compile_table(results: dict) -> str:
    """The Markdown table: one line a row."""
    lines = ["| model | size | dtype | topology | batch (B×S×T) | params | fits | HBM a chip (GB) | GFLOP a step a chip "
             "| roofline step (ms) | tokens/s | MFU bound | largest batch_tokens that fits | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        largest = r.get("largest")
        found = "" if largest is None else ((_bracket(r) if largest["batch_tokens"] else "none tried fits")
                                            + (f" (line: {largest['predicted']:,})" if largest["predicted"] else ""))
        shape = "×".join(map(str, r["batch_shape"] or ()))
        if not r["fits"]:
            lines.append(f"| {r['model']} | {r['size']} | {r['dtype']} | {r['topology']} | {_batch(r)}: {shape} | | no | "
                         f"| | | | | {found} | |")
            continue
        lines.append(f"| {r['model']} | {r['size']} | {r['dtype']} | {r['topology']} | {_batch(r)}: {shape} "
                     f"| {r['num_params'] / 1e6:.1f} M | yes | {r['peak_bytes'] / 1e9:.2f} of {r['hbm_bytes'] / 1e9:.1f} "
                     f"| {(r['xla_flops'] or 0) / 1e9:.1f} | {r['roofline_s'] * 1e3:.2f} | {r['tokens_per_s']:,.0f} "
                     f"| {r['mfu']:.0%} | {found} | {r['compile_s']:.0f} |")
    return "\n".join(lines)
