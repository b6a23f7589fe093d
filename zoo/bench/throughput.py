"""The training-throughput study: ``python benchmark.py train``.

For every model at its default size (or the quick preset's small sizes), on real Multi30k
sentences (or, without the corpus, a synthetic one with Multi30k's length distribution)::

  loop      target tokens/s of the whole training loop, :func:`zoo.training.train` with its
            real data path (Grain loader, token-budget batches, metrics every ``log_every``
            steps), checkpointing only at the end; the first logged interval (compilation) is
            left out;
  step      target tokens/s of the compiled training step run back to back on batches already
            on the device, timed half before and half after the loop (so that a drift of the
            machine's speed does not read as overhead), and its compile time and XLA peak memory;
  overhead  the host's share of the loop, 1 − loop / step;
  FLOPs     per target token: the jaxpr's matrix products (:func:`zoo.flops.jaxpr_flops`, scan
            bodies × their length) and XLA's ``cost_analysis()`` (which counts a scan body once);
  MFU       achieved FLOP/s over the peak (:func:`zoo.flops.peak_flops`: a data-sheet peak, or on a
            CPU a float32 matrix product measured in the same run);
  peer      with ``--peer torch``: PyTorch implementations of the tutorial shapes (Bahdanau,
            ``torch.nn.Transformer``) timed on the very same batches (:mod:`zoo.bench.peer_torch`).

All batches have one shape (every sentence whose token-budget bucket is :data:`BUCKET` tokens,
the median), so that the loop and the back-to-back step run the same program and their ratio
is the host overhead, not compilation.
"""

import dataclasses
import gzip
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from zoo.bench.measure import memory_bytes, xla_flops
from zoo.config import Config, DataConfig, TrainConfig
from zoo.data.batching import bucket_length, collate, token_batches
from zoo.data.corpora import MULTI30K_SPLITS, load_split, resolve_data_dir
from zoo.data.pipeline import TextPipeline
from zoo.data.tokenize import Tokenizer
from zoo.distributed import data_parallel, state_shardings
from zoo.flops import jaxpr_flops, peak_flops
from zoo.models import MODELS, list_models
from zoo.run import Run, prepare
from zoo.training import init_state, make_optimizer, make_train_step, train

BUCKET = 16  # sentences of 15-16 tokens (with <eos>) on the longer side: Multi30k's median bucket
HOST_OVERHEAD_SMALL_MAX, HOST_OVERHEAD_TRANSFORMER_MAX, PEER_MIN_RATIO = 0.05, 0.02, 1.5


@dataclass(frozen=True)
class ThroughputSizes:
    """A preset of the study."""

    name: str
    models: tuple[str, ...]
    batch_tokens: int  # rows × BUCKET ≤ this
    loop_steps: int  # the loop's timed steps (after its first interval)
    log_every: int  # the loop's interval; its first interval (compilation) is not timed
    step_repeats: int  # back-to-back steps timed
    overrides: dict  # model name -> config overrides (the quick preset's small sizes)
    # a 1-3 ms step on a 2-core CPU (2.2-2.4 ms at 8 × 16 tokens; d_model 64 took 3.4-5.7 ms)
    small: tuple[str, dict] = ("transformer", {"d_model": 16, "num_heads": 4, "num_encoder_layers": 1,
                                               "num_decoder_layers": 1, "d_ff": 32})
    small_batch_tokens: int = 128
    small_loop_steps: int = 1600  # its steps are short: time a few seconds of them (400, about 1 s, gave −9 % to +18 %)
    small_steps_per_call: int = 8  # the small model is timed again with this many steps a call (TrainConfig.steps_per_call)
    min_seconds: float = 2.0  # the back-to-back step is timed over at least this long
    corpus_sentences: int = 4096  # the training corpus (:func:`write_corpus`); the loop cycles through it


_QUICK_SIZES = {"embed_dim": 32, "hidden_dim": 32}
FULL = ThroughputSizes("full", tuple(list_models()), batch_tokens=4096, loop_steps=6, log_every=3, step_repeats=5,
                       overrides={})
QUICK = ThroughputSizes(
    "quick", tuple(list_models()), batch_tokens=512, loop_steps=60, log_every=20, step_repeats=3,
    overrides={"bahdanau": {**_QUICK_SIZES, "attention_dim": 32, "maxout_dim": 32},
               "cho": {**_QUICK_SIZES, "maxout_dim": 32}, "sutskever": _QUICK_SIZES,
               "luong": {**_QUICK_SIZES, "attention_dim": 32},
               "transformer": {"d_model": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "d_ff": 64},
               "convs2s": {**_QUICK_SIZES, "num_encoder_layers": 2, "num_decoder_layers": 2}})


def write_corpus(root: Path, data_dir=None, size: int = 4096, val_size: int = 64) -> dict:
    """A corpus in the Multi30k layout under ``root`` whose sentences all fall in one bucket.

    Real Multi30k train sentences (if ``<data_dir>/multi30k`` exists) whose bucket (:func:`zoo.data.batching.bucket_length` of the
    longer side with <eos>, as the zoo tokenizes it) is :data:`BUCKET`;
    else synthetic sentences of ``BUCKET − 1`` words drawn from a 5,000-word vocabulary.

    Returns:
      ``{"source": "multi30k" | "synthetic", "sentences": n}``.
    """
    if not (resolve_data_dir(data_dir) / "multi30k").is_dir():  # no corpus: the synthetic stand-in
        rng = np.random.default_rng(0)
        words = [f"w{i}" for i in range(5000)]
        pairs = [tuple(" ".join(rng.choice(words, BUCKET - 1)) for _ in range(2)) for _ in range(size + val_size)]
        source = "synthetic"
    else:
        src, tgt = load_split("multi30k", "train", "de", "en", data_dir)
        de, en = Tokenizer("de"), Tokenizer("en")
        pairs = [(s, t) for s, t in zip(src, tgt) if bucket_length(max(len(de.tokenize(s)), len(en.tokenize(t))) + 1) == BUCKET]
        source = "multi30k"
    folder = root / "multi30k"
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": pairs[:size], "val": pairs[size : size + val_size] or pairs[:val_size]}
    for split, chosen in splits.items():
        for lang, column in (("de", 0), ("en", 1)):
            text = "".join(p[column] + "\n" for p in chosen)
            (folder / f"{MULTI30K_SPLITS[split]}.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    return {"source": source, "sentences": len(splits["train"])}


def _config(model: str, overrides: dict, batch_tokens: int, max_steps: int, log_every: int, dtype: str,
            steps_per_call: int = 1) -> Config:
    model_config = MODELS[model].config(**overrides)
    if dtype != "float32":
        model_config = dataclasses.replace(model_config, dtype=dtype)
    return Config(model_name=model, model=model_config, data=DataConfig(),
                  train=TrainConfig(batch_tokens=batch_tokens, max_steps=max_steps, log_every=log_every,
                                    checkpoint_every=10**6, epochs=100, steps_per_call=steps_per_call))


def measure_loop(config: Config, data_dir: Path, workdir: Path) -> dict:
    """Target tokens/s of :func:`zoo.training.train`, over its logged intervals after the first."""
    train(config, workdir, data_dir, progress=False)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    intervals = [r for r in records if r.get("event") == "interval"][1:]
    steps = {r["step"]: r["tokens"] for r in records if "tokens" in r}
    seconds = sum(r["step_time_s"] * r["steps"] for r in intervals)
    tokens = sum(steps[s] for r in intervals for s in range(r["step"] - r["steps"] + 1, r["step"] + 1))
    return {"tokens_per_s": tokens / seconds, "steps": sum(r["steps"] for r in intervals), "seconds": seconds}


def step_batches(config: Config, workdir: Path, data_dir: Path, count: int) -> tuple[list[dict], Run]:
    """The first ``count`` full batches of epoch 0 of the plan of the loop in ``workdir`` (NumPy),
    and that loop's :class:`zoo.run.Run` (its model and the config with the vocabulary
    sizes; :func:`zoo.run.prepare`, which writes nothing)."""
    run, _ = prepare(config, workdir, data_dir)
    plan = [spec for spec in run.plan(0) if len(spec.indices) == spec.rows][:count]
    batches = [collate(*run.train_ids, spec.indices, spec.rows, lengths=(spec.src_len, spec.tgt_len)) for spec in plan]
    return batches, run


def measure_step(run: Run, batches: list[dict], peak: float, min_seconds: float,
                 between: Callable[[], dict]) -> tuple[dict, dict]:
    """The compiled step back to back on device batches: tokens/s, compile time, memory, FLOPs,
    MFU; and ``between()``'s result.

    The step is timed in two windows, each whole passes over ``batches`` for at least
    ``min_seconds``, with ``between()`` (the loop) run from the first to the second: a machine
    that slows or speeds up during the study moves both measures alike, so their ratio (the host
    overhead) is not the drift. The step's state stays in memory meanwhile. The step is the
    loop's own: the same shardings of state, batch and key (:class:`zoo.training.Trainer`).
    ``run``: the loop's model and config (:func:`step_batches`)."""
    config = run.config
    tx = make_optimizer(config.train)
    graphdef, state = init_state(run.model, tx)
    batch_sharding, replicated = data_parallel()
    state_sharding = state_shardings(state, replicated.mesh, config.train.fsdp)
    state = jax.device_put(state, state_sharding)
    step = make_train_step(graphdef, tx, config.train.teacher_forcing, config.train.label_smoothing, state_sharding)
    key = jax.random.wrap_key_data(jax.device_put(jax.random.key_data(jax.random.key(0)), replicated))
    device_batches = [jax.device_put(b, batch_sharding) for b in batches]
    tic = time.perf_counter()
    compiled = step.lower(state, device_batches[0], key).compile()
    compile_s = time.perf_counter() - tic
    flops = jaxpr_flops(step.trace(state, device_batches[0], key).jaxpr)
    state, metrics = compiled(state, device_batches[0], key)  # warm-up
    jax.block_until_ready(metrics)

    def window(state):
        tokens, steps, tic = [], 0, time.perf_counter()
        while steps < len(batches) or time.perf_counter() - tic < min_seconds:  # whole passes over the batches
            for batch in device_batches:
                state, metrics = compiled(state, batch, key)
                tokens.append(metrics["tokens"])
            steps += len(batches)
            jax.block_until_ready(state)
        return state, float(sum(jax.device_get(tokens))), steps, time.perf_counter() - tic

    state, tokens_a, steps_a, seconds_a = window(state)
    result = between()
    state, tokens_b, steps_b, seconds_b = window(state)
    target_tokens, steps, seconds = tokens_a + tokens_b, steps_a + steps_b, seconds_a + seconds_b
    rate = target_tokens / seconds
    per_token = flops * steps / target_tokens
    return {"tokens_per_s": rate, "step_ms": 1e3 * seconds / steps, "compile_s": compile_s,
            "peak_memory_bytes": memory_bytes(compiled)["peak"], "flops_per_token": per_token,
            "xla_flops_per_token": xla_flops(compiled) * steps / target_tokens,
            "flops_per_s": per_token * rate, "mfu": per_token * rate / peak,
            "num_params": int(sum(x.size for x in jax.tree.leaves(state["params"]))),
            "batch_shape": list(batches[0]["tgt_in"].shape)}, result


def measure_model(model: str, overrides: dict, batch_tokens: int, loop_steps: int, sizes: ThroughputSizes, data_dir: Path,
                  work: Path, peak: float, dtype: str, peer, steps_per_call: int = 1, baseline: dict | None = None) -> dict:
    """Loop (with ``steps_per_call`` steps a call of the compiled program), step (one step a
    call, the baseline), overhead (and the peer's figures) of one model. ``baseline``: the row of
    the same model, size and batches at one step a call, whose step and peer figures are reused."""
    whole_calls = lambda n: -(-n // steps_per_call) * steps_per_call
    log_every = whole_calls(max(sizes.log_every, loop_steps // 3))
    config = _config(model, overrides, batch_tokens, log_every + whole_calls(loop_steps), log_every, dtype, steps_per_call)
    workdir = work / f"{model}-{batch_tokens}-{steps_per_call}"
    if baseline is not None:
        loop = measure_loop(config, data_dir, workdir)
        row = {**baseline, "steps_per_call": steps_per_call, "loop_tokens_per_s": loop["tokens_per_s"]}
    else:
        batches, run = step_batches(config, workdir, data_dir, sizes.step_repeats)
        step, loop = measure_step(run, batches, peak, sizes.min_seconds,
                                  between=lambda: measure_loop(config, data_dir, workdir))
        row = {"model": model, "overrides": overrides, "batch_tokens": batch_tokens, "steps_per_call": steps_per_call,
               "loop_tokens_per_s": loop["tokens_per_s"],
               **{f"step_{k}" if k in ("tokens_per_s",) else k: v for k, v in step.items()}}
        if peer is not None and model in peer.models:
            row["peer_tokens_per_s"] = peer.tokens_per_s(model, batches, (run.config.model.src_vocab_size,
                                                                          run.config.model.tgt_vocab_size))
    row["host_overhead"] = 1.0 - row["loop_tokens_per_s"] / row["step_tokens_per_s"]
    if "peer_tokens_per_s" in row:
        row.update(loop_vs_peer=row["loop_tokens_per_s"] / row["peer_tokens_per_s"],
                   step_vs_peer=row["step_tokens_per_s"] / row["peer_tokens_per_s"])
    return row


def run_throughput(sizes: ThroughputSizes, out: Path, device, dtype: str = "float32", models=None, peer=None,
                   data_dir=None, log=print) -> dict:
    """Run the study on ``device`` and write ``out/train.json``, ``out/train_table.txt`` and ``out/train.png``.

    Args:
      sizes: :data:`FULL` or :data:`QUICK`. out: output folder (created). device: a JAX device.
      dtype: the models' compute dtype. models: a subset of the preset's (None: all).
      peer: None or a :class:`zoo.bench.peer_torch.TorchSeq2SeqPeer`.
      data_dir: where Multi30k is (default: the zoo's data directory).

    Returns:
      the results dict written to ``train.json``.

    Raises:
      ValueError: an unknown model.
    """
    from zoo.bench.measure import run_setting
    from zoo.bench.report import write_json
    from zoo.plotting import throughput_plot

    models = list(models or sizes.models)
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; choose from {', '.join(list_models())}")
    out.mkdir(parents=True, exist_ok=True)
    results = {"setting": {**run_setting(device, dtype), "preset": sizes.name, "bucket": BUCKET}, "rows": []}
    with jax.default_device(device), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["corpus"] = write_corpus(work / "data", data_dir, size=sizes.corpus_sentences)
        peak = peak_flops(device, jnp.dtype(dtype))
        results["setting"]["peak_flops"] = peak
        results["batching"] = multi30k_batching(data_dir)
        small_model, small_overrides = sizes.small
        runs = [(m, sizes.overrides.get(m, {}), sizes.batch_tokens, sizes.loop_steps, 1) for m in models]
        runs += [(small_model, small_overrides, sizes.small_batch_tokens, sizes.small_loop_steps, k)
                 for k in (1, sizes.small_steps_per_call)]
        for model, overrides, batch_tokens, loop_steps, k in runs:
            log(f"[train] {model} {overrides or '(default size)'} at {batch_tokens} tokens a batch, {k} steps a call")
            baseline = results["rows"][-1] if k > 1 else None  # the small model at one step a call
            results["rows"].append(measure_model(model, overrides, batch_tokens, loop_steps, sizes, work / "data", work, peak,
                                                 dtype, peer, k, baseline))
    if peer is not None:
        results["setting"].update(peer.setting())
    results["targets"] = throughput_targets(results)
    write_json(results, out / "train.json")
    table = throughput_table(results)
    (out / "train_table.txt").write_text(table + "\n")
    log(table)
    throughput_plot(results, out / "train.png")
    return results


def multi30k_batching(data_dir=None, batch_tokens: int = 4096) -> dict | None:
    """Real-token share and distinct shapes of one epoch of ``--train.batch-tokens`` batches on Multi30k train."""
    from zoo.data.loader import real_token_share

    if not (resolve_data_dir(data_dir) / "multi30k").is_dir():
        return None
    src, tgt = load_split("multi30k", "train", "de", "en", data_dir)
    pipeline = TextPipeline.build(DataConfig(), src, tgt)
    src_ids, tgt_ids = pipeline.encode_source(src), pipeline.encode_target(tgt)
    tgt_lengths = [len(t) for t in tgt_ids]
    plan = token_batches([len(s) for s in src_ids], tgt_lengths, batch_tokens, 0, 0)
    return {"batch_tokens": batch_tokens, "real_token_share": real_token_share(plan, tgt_lengths),
            "shapes": len({(s.rows, s.tgt_len) for s in plan}), "batches": len(plan)}


def throughput_targets(results: dict) -> list[dict]:
    """The training-loop issue's targets on this run."""
    rows = results["rows"]
    (single, calls), default = rows[-2:], {r["model"]: r for r in rows[:-2]}
    out = [{"name": f"host overhead, small model ({single['step_ms']:.1f} ms step), {r['steps_per_call']} steps a call",
            "value": r["host_overhead"], "target": f"<= {HOST_OVERHEAD_SMALL_MAX}",
            "met": r["host_overhead"] <= HOST_OVERHEAD_SMALL_MAX} for r in (single, calls)]
    if "transformer" in default:
        value = default["transformer"]["host_overhead"]
        out.append({"name": "host overhead, transformer", "value": value, "target": f"<= {HOST_OVERHEAD_TRANSFORMER_MAX}",
                    "met": value <= HOST_OVERHEAD_TRANSFORMER_MAX})
    for model in ("bahdanau", "transformer"):
        if model in default:
            value = default[model].get("loop_vs_peer")
            out.append({"name": f"{model} loop tokens/s / torch", "value": value, "target": f">= {PEER_MIN_RATIO}",
                        "met": None if value is None else value >= PEER_MIN_RATIO})
    if results.get("batching"):
        b = results["batching"]
        out.append({"name": f"real-token share, Multi30k train, {b['batch_tokens']} tokens", "value": b["real_token_share"],
                    "target": ">= 0.85 with <= 16 shapes", "met": b["real_token_share"] >= 0.85 and b["shapes"] <= 16})
    return out


def throughput_table(results: dict) -> str:
    """The printed table: one line per model, then the targets."""
    s = results["setting"]
    lines = [f"training throughput on {s['device_kind']} ({s['dtype']}), peak {s['peak_flops'] / 1e9:.1f} GFLOP/s, "
             f"corpus {results['corpus']['source']}, JAX on {s['host_cores']} host threads"
             + (f", torch {s['torch']} on {s['torch_threads']}" if "torch" in s else ""),
             f"{'model':<17} {'params':>8} {'batch':>9} {'loop tok/s':>10} {'step tok/s':>10} {'host':>6} {'step ms':>8} "
             f"{'MFLOP/tok':>9} {'XLA':>7} {'MFU':>6} {'compile s':>9} {'mem MB':>7} {'torch tok/s':>11} {'loop/torch':>10}"]
    for r in results["rows"]:
        peer = r.get("peer_tokens_per_s")
        name = r["model"] + ("*" if r["overrides"] else "") + (f" k={r['steps_per_call']}" if r["steps_per_call"] > 1 else "")
        lines.append(f"{name:<17} {r['num_params'] / 1e6:>7.2f}M "
                     f"{'x'.join(map(str, r['batch_shape'])):>9} {r['loop_tokens_per_s']:>10.0f} {r['step_tokens_per_s']:>10.0f} "
                     f"{r['host_overhead']:>6.1%} {r['step_ms']:>8.1f} {r['flops_per_token'] / 1e6:>9.1f} "
                     f"{r['xla_flops_per_token'] / 1e6:>7.1f} {r['mfu']:>6.1%} {r['compile_s']:>9.1f} "
                     f"{r['peak_memory_bytes'] / 2**20:>7.0f} {'' if peer is None else f'{peer:.0f}':>11} "
                     f"{'' if peer is None else format(r['loop_vs_peer'], '.2f'):>10}")
    lines.append("* a smaller size than the default (see overrides in train.json); k=N: the loop ran N steps a call")
    if results.get("batching"):
        b = results["batching"]
        lines.append(f"--train.batch-tokens {b['batch_tokens']} on Multi30k train: {b['real_token_share']:.3f} real target "
                     f"tokens, {b['shapes']} shapes, {b['batches']} batches an epoch")
    for t in results["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        verdict = {True: "met", False: "NOT met", None: ""}[t["met"]]
        lines.append(f"target {t['name']}: {value} (want {t['target']}) {verdict}")
    return "\n".join(lines)
