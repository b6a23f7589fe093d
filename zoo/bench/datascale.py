"""The data study: ``python benchmark.py data``, today's word pipeline against subwords read from
prepared shards, on corpora of 1×, 10× and 100× Multi30k train.

Corpora (for this measurement only, **synthetic**): k × 29,000 pairs drawn with replacement from
Multi30k train (de–en; seed k), written in Multi30k's layout with the real val and test files
beside them; 1× is Multi30k train itself. (Only Multi30k pairs are resampled: the runs are de→en,
and Tatoeba is en–fr.)

Pipelines:
  ``word``     ``--data.tokenizer moses --prepared-dir off``: Moses tokenization of the training
               split into Python lists at every start (the zoo before zoo.data.prepare).
  ``subword``  ``--data.tokenizer sentencepiece --data.vocab-size 8000``, prepared once by
               ``python -m zoo.data.prepare`` into ArrayRecord shards, read a batch at a time.

Measured, each in its own child process (wall clock of the process, its start-up included):
  preparation sentences/s (both sides counted) on one core (``taskset -c 0``, on 1× only; word:
  tokenizing and encoding into memory as train.py did, subword: ``zoo.data.prepare --workers 1``)
  and on all cores (``zoo.data.prepare``; word: with ``--data.tokenizer moses``, on 1× only);
  the training process's peak resident memory (``ru_maxrss`` of a 100-step run of a small
  Bahdanau model, batches of 64 padded to 64 tokens);
  its loop's target tokens/s (median of the 20-step intervals after the first, which compiles);
  time to first step on a second run: process start to exit of a one-step run in a fresh workdir,
  with the data prepared and the compilation cache warm (a checkpoint save included).
"""

import gzip
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from zoo.data.corpora import MULTI30K_SPLITS, resolve_data_dir
from zoo.data.text import read_parallel
from zoo.errors import ZooError

SCALES = (1, 10, 100)
MULTI30K_TRAIN_PAIRS = 29_000
ROOT = Path(__file__).resolve().parents[2]
MODEL = ["--model", "bahdanau", "--model.embed-dim", "64", "--model.hidden-dim", "64", "--model.attention-dim", "64",
         "--model.maxout-dim", "64", "--train.batch-size", "64", "--data.length-multiple", "64",
         "--train.checkpoint-every", "100000", "--train.log-every", "20", "--no-progress"]
LOOP_STEPS = 100
PIPELINES = {"word": ["--data.tokenizer", "moses"],
             "subword": ["--data.tokenizer", "sentencepiece", "--data.vocab-size", "8000"]}
# the word pipeline tokenizes every start at a few thousand sentences/s: its runs stop at this scale (default)
WORD_MAX_SCALE = 10


def synthetic_corpus(data_dir: Path, out: Path, scale: int) -> Path:
    """A data dir holding ``scale`` × Multi30k train (see the module docstring); returns it."""
    folder = out / "multi30k"
    if (folder / "train.en.gz").exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    real = resolve_data_dir(data_dir) / "multi30k"
    for split in MULTI30K_SPLITS.values():
        for lang in ("de", "en"):
            if split != "train" or scale == 1:
                shutil.copy(real / f"{split}.{lang}.gz", folder / f"{split}.{lang}.gz")
    if scale > 1:
        src, tgt = read_parallel(real / "train.de.gz", real / "train.en.gz")
        picks = np.random.default_rng(scale).integers(0, len(src), scale * len(src))
        for lang, lines in (("de", src), ("en", tgt)):
            with gzip.open(folder / f"train.{lang}.gz.partial", "wt", encoding="utf-8", compresslevel=1) as f:
                for start in range(0, len(picks), 100_000):
                    f.write("".join(lines[i] + "\n" for i in picks[start : start + 100_000]))
            os.replace(folder / f"train.{lang}.gz.partial", folder / f"train.{lang}.gz")
    return out


def child(args: list[str], env: dict | None = None, timeout: float = 3600) -> dict:
    """Run ``args`` from the repository root; its wall seconds and stdout.

    Raises:
      ZooError: the child failed (its last stderr line named).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise ZooError(f"{shlex.join(args)}: no result in {timeout:.0f} s") from None
    wall = time.perf_counter() - start
    if proc.returncode:
        last = (stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise ZooError(f"{shlex.join(args)}: exit {proc.returncode}: {last}")
    return {"wall_s": wall, "stdout": stdout}


def measured(args: list[str], env: dict | None = None) -> dict:
    """:func:`child` through a wrapper process whose only child is ``args``: its wall seconds and the
    peak RSS (bytes) of the largest process of that tree (``ru_maxrss`` of RUSAGE_CHILDREN)."""
    wrapper = ("import json, resource, subprocess, sys\n"
               "code = subprocess.call(sys.argv[1:])\n"
               "print(json.dumps({'code': code, 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
               "sys.exit(code)")
    result = child([sys.executable, "-c", wrapper, *args], env)
    report = json.loads(result["stdout"].strip().splitlines()[-1])
    return {"wall_s": result["wall_s"], "peak_rss_bytes": report["maxrss_kib"] * 1024}


def intervals(workdir: Path) -> list[float]:
    """tokens/s of each logged interval of a run."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["tokens_per_s"] for r in map(json.loads, lines) if r.get("event") == "interval"]


def run_scale(pipeline: str, scale: int, data: Path, work: Path, log) -> dict:
    """Every measurement of one pipeline at one scale (see the module docstring)."""
    pairs = scale * MULTI30K_TRAIN_PAIRS
    flags = PIPELINES[pipeline]
    cache = work / "prepared"
    env = {"ZOO_COMPILATION_CACHE": str(work / "jax-cache"), "ZOO_PREPARED_DIR": str(cache)}
    row = {"pipeline": pipeline, "scale": scale, "pairs": pairs}
    prepare_cmd = [sys.executable, "-m", "zoo.data.prepare", "--data-dir", str(data), *flags]
    if pipeline == "word":
        if scale == 1:
            script = ("import sys; from zoo.config import DataConfig; from zoo.data.corpora import load_split; "
                      "from zoo.data.pipeline import TextPipeline; "
                      "s, t = load_split('multi30k', 'train', 'de', 'en', sys.argv[1]); "
                      "p = TextPipeline.build(DataConfig(), s, t); p.encode_source(s); p.encode_target(t)")
            row["prep_one_core_s"] = measured(["taskset", "-c", "0", sys.executable, "-c", script, str(data)])["wall_s"]
            row["prep_all_cores_s"] = measured([*prepare_cmd, "--prepared-dir", str(work / "word-prep")])["wall_s"]
    else:
        if scale == 1:  # the one-core rate per sentence, like the word pipeline's, is measured on 1x
            one = [*prepare_cmd, "--workers", "1", "--prepared-dir", str(work / f"one-core-{scale}")]
            row["prep_one_core_s"] = measured(["taskset", "-c", "0", *one])["wall_s"]
            shutil.rmtree(work / f"one-core-{scale}", ignore_errors=True)
        row["prep_all_cores_s"] = measured([*prepare_cmd, "--prepared-dir", str(cache)], env)["wall_s"]
    for key in ("prep_one_core_s", "prep_all_cores_s"):
        if key in row:
            row[key.replace("_s", "_sentences_per_s")] = 2 * pairs / row[key]
    timed = [f"{row[key]:.1f} s on {cores}" for key, cores in (("prep_one_core_s", "one core"), ("prep_all_cores_s", "all"))
             if key in row]
    log(f"  {pipeline} {scale}x: preparation {', '.join(timed) or 'not timed'}")
    train = [sys.executable, "train.py", "--data-dir", str(data), *MODEL, *flags,
             *(["--prepared-dir", "off"] if pipeline == "word" else [])]
    loop_dir, first_dir = work / f"runs/{pipeline}-{scale}x-loop", work / f"runs/{pipeline}-{scale}x-first"
    for d in (loop_dir, first_dir):
        shutil.rmtree(d, ignore_errors=True)
    loop = measured([*train, "--workdir", str(loop_dir), "--train.max-steps", str(LOOP_STEPS)], env)
    rates = intervals(loop_dir)
    row.update(peak_rss_bytes=loop["peak_rss_bytes"], loop_tokens_per_s=float(np.median(rates[1:])), loop_run_s=loop["wall_s"])
    row["first_step_s"] = measured([*train, "--workdir", str(first_dir), "--train.max-steps", "1"], env)["wall_s"]
    log(f"  {pipeline} {scale}x: peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB, loop {row['loop_tokens_per_s']:.0f} "
        f"tokens/s, first step of a second run {row['first_step_s']:.1f} s")
    return row


def table(rows: list[dict]) -> str:
    """The study's Markdown table."""
    fmt = lambda v, spec: "—" if v is None else format(v, spec)
    lines = ["| pipeline | corpus | pairs | prep. sent./s, 1 core | prep. sent./s, all cores | peak RSS (MiB) | "
             "first step, 2nd run (s) | loop tokens/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rss = r.get("peak_rss_bytes")
        lines.append(f"| {r['pipeline']} | {r['scale']}× Multi30k{' (synthetic)' if r['scale'] > 1 else ''} | "
                     f"{r['pairs']:,} | {fmt(r.get('prep_one_core_sentences_per_s'), ',.0f')} | "
                     f"{fmt(r.get('prep_all_cores_sentences_per_s'), ',.0f')} | {fmt(rss and rss / 2**20, ',.0f')} | "
                     f"{fmt(r.get('first_step_s'), '.1f')} | {fmt(r.get('loop_tokens_per_s'), ',.0f')} |")
    return "\n".join(lines)


def run_data_study(out: Path, data_dir=None, scales=SCALES, word_max_scale: int = WORD_MAX_SCALE, log=print) -> dict:
    """Run the study (see the module docstring) into ``out``: ``data.json`` and ``data_table.md``;
    the word pipeline only up to ``word_max_scale``.

    Raises:
      ZooError: Multi30k is not in the data directory, or a child process failed.
    """
    if not (resolve_data_dir(data_dir) / "multi30k" / "train.de.gz").exists():
        raise ZooError(f"{resolve_data_dir(data_dir) / 'multi30k'}: the data study resamples Multi30k train; "
                       "give --data-dir")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "data-study"
    results = {"command": shlex.join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "load_average_at_start": os.getloadavg()}, "rows": []}
    start = time.perf_counter()
    for scale in scales:
        data = synthetic_corpus(data_dir, work / f"corpus-{scale}x", scale)
        for pipeline in PIPELINES:
            if pipeline == "word" and scale > word_max_scale:
                log(f"  word {scale}x: not run (tokenizing {2 * scale * MULTI30K_TRAIN_PAIRS:,} sentences at every start)")
                continue
            results["rows"].append(run_scale(pipeline, scale, data, work, log))
            results["seconds"] = time.perf_counter() - start
            (out / "data.json").write_text(json.dumps(results, indent=1))
            (out / "data_table.md").write_text(table(results["rows"]) + "\n")
    results["load_average_at_end"] = os.getloadavg()
    (out / "data.json").write_text(json.dumps(results, indent=1))
    log(table(results["rows"]))
    return results

