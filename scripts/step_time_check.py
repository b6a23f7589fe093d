"""Predicted and measured training-step time of every model, side by side (issue 25, item 6).

For each model in each compute dtype, the configuration of ``train.py --model NAME
--model.dtype DTYPE`` (its recipe, :func:`zoo.models.recipe`) on one device, as the planner
(:mod:`zoo.aot`) predicts it for an H100: with Multi30k under ``--data-dir``, its vocabulary
sizes and the largest batch shape of the run's first epoch (:func:`zoo.aot.read_corpus`,
:func:`zoo.aot.largest_batch_shape`); without the corpus, the default vocabularies and a
synthetic batch of ``--batch`` B,S,T tokens (default 256 × 16 × 16, the throughput study's).
Every position of the batch is a real token (random ids):

  predicted  on one H100 SXM (:data:`zoo.aot.CHIPS`): ``roofline`` = :func:`zoo.aot.roofline`
             of the FLOPs and bytes accessed that XLA's ``cost_analysis()`` gives for the step
             compiled here, the planner's formula (on the GPU: XLA:GPU's counts, as the planner's
             compile for ``gpu:h100``; XLA counts a scan body once, so a recurrent model's figure
             is far too low); ``compute`` = the step's matrix-product FLOPs
             (:func:`zoo.flops.jaxpr_flops`, every scan iteration counted) over the dense bfloat16 peak;
  measured   the compiled step run back to back on this device (state donated, as the trainer
             runs it) for at least ``--min-seconds`` after two warm-up steps: wall time per step,
             target tokens a second (B·T), and MFU = FLOPs / step time / H100 peak.

Prints one table and writes every figure as JSON (``--output``). Run by
``scripts/accelerator_checks.sh`` on the GPU machine; ``--quick`` (the throughput study's small
sizes) is its rehearsal on a CPU, where the "measured" column is the CPU's.

    python scripts/step_time_check.py --data-dir data --output step_time.json
    JAX_PLATFORMS=cpu python scripts/step_time_check.py --quick --models transformer --dtypes float32
"""

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's zoo, installed or not

from zoo import aot  # noqa: E402
from zoo.bench.measure import memory_bytes  # noqa: E402
from zoo.bench.throughput import BUCKET, FULL, QUICK  # noqa: E402
from zoo.config import COMPUTE_DTYPES, Config, replace_fields  # noqa: E402
from zoo.data.corpora import resolve_data_dir  # noqa: E402
from zoo.flops import jaxpr_flops  # noqa: E402
from zoo.models import build, list_models, recipe  # noqa: E402
from zoo.training import init_state, make_optimizer, make_train_step  # noqa: E402

H100 = aot.CHIPS["h100"]


def synthetic_batch(rows: int, src_len: int, tgt_len: int, src_vocab: int, tgt_vocab: int, seed: int = 0) -> dict:
    """A batch of random token ids in [3, vocab) (past <pad>, <bos>, <eos>) with every position real."""
    rng = np.random.default_rng(seed)
    ids = lambda vocab, length: rng.integers(3, vocab, (rows, length)).astype(np.int32)
    return {"src": ids(src_vocab, src_len), "src_length": np.full(rows, src_len, np.int32),
            "tgt_in": ids(tgt_vocab, tgt_len), "tgt_out": ids(tgt_vocab, tgt_len),
            "tgt_length": np.full(rows, tgt_len, np.int32)}


@functools.cache
def corpus(config: Config, data_dir) -> tuple[dict, list[int], list[int]]:
    """The vocabulary sizes and training pairs' token counts of ``config.data`` (one tokenization
    serves every model: :func:`zoo.aot.read_corpus` depends on the data config alone)."""
    config, src_lengths, tgt_lengths = aot.read_corpus(config, None, data_dir)
    vocab_sizes = {"src_vocab_size": config.model.src_vocab_size, "tgt_vocab_size": config.model.tgt_vocab_size}
    return vocab_sizes, src_lengths, tgt_lengths


def configuration(model: str, dtype: str, overrides: dict, data_dir, batch_shape: tuple[int, int, int]):
    """``(config, batch_shape, source)``: the recipe of ``model`` in ``dtype`` (with ``overrides``),
    and its vocabularies and largest first-epoch batch on one device from Multi30k under
    ``data_dir`` if it is there (``source`` "multi30k"), else the defaults and ``batch_shape``."""
    config = recipe(model)
    config = dataclasses.replace(config, model=replace_fields(config.model, {**overrides, "dtype": dtype}))
    if not (resolve_data_dir(data_dir) / "multi30k").is_dir():
        return config, batch_shape, "synthetic"
    vocab_sizes, src_lengths, tgt_lengths = corpus(dataclasses.replace(recipe("transformer"), data=config.data), data_dir)
    config = dataclasses.replace(config, model=replace_fields(config.model, vocab_sizes))
    return config, aot.largest_batch_shape(config, src_lengths, tgt_lengths, 1), "multi30k"


def measure(config, batch_shape: tuple[int, int, int], min_seconds: float) -> dict:
    """Compile, predict and time one configuration's training step (see the module docstring)."""
    t, m = config.train, config.model
    tx = make_optimizer(t)
    graphdef, state = init_state(build(config.model_name, m, seed=t.seed), tx)
    rows, src_len, tgt_len = batch_shape
    batch = jax.device_put(synthetic_batch(rows, src_len, tgt_len, m.src_vocab_size, m.tgt_vocab_size))
    key = jax.random.key(t.seed)
    step = make_train_step(graphdef, tx, t.teacher_forcing, t.label_smoothing)
    traced = step.trace(state, batch, key)
    tic = time.perf_counter()
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - tic
    cost = compiled.cost_analysis() or {}
    flops, bytes_accessed = jaxpr_flops(traced.jaxpr), cost.get("bytes accessed", 0.0)
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    steps, tic = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - tic < min_seconds:
        state, metrics = compiled(state, batch, key)
        steps += 1
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - tic) / steps
    return {"device": jax.devices()[0].device_kind, "num_params": int(sum(x.size for x in jax.tree.leaves(state["params"]))),
            "vocab_sizes": [m.src_vocab_size, m.tgt_vocab_size], "compile_s": compile_s, "jaxpr_flops": flops,
            "xla_flops": cost.get("flops", 0.0), "bytes_accessed": bytes_accessed,
            "peak_memory_bytes": memory_bytes(compiled)["peak"], "predicted_compute_s": flops / H100.peak_bf16_flops,
            "predicted_roofline_s": aot.roofline(cost.get("flops", 0.0), bytes_accessed, H100),
            "measured_s": step_s, "steps_timed": steps,
            "tokens_per_s": rows * tgt_len / step_s, "mfu_h100": flops / step_s / H100.peak_bf16_flops,
            "loss": float(metrics["loss"])}

def row_text(r: dict) -> str:
    ms = lambda s: f"{s * 1e3:10.4g}"
    shape = "x".join(map(str, r["batch_shape"]))
    return (f"{r['model']:12} {r['dtype']:9} {shape:>11} {ms(r['predicted_roofline_s'])} {ms(r['predicted_compute_s'])} "
            f"{ms(r['measured_s'])} {r['measured_s'] / r['predicted_roofline_s']:9.1f}x {r['tokens_per_s']:12,.0f} "
            f"{r['mfu_h100']:7.1%} {r['compile_s']:9.1f}")


HEADER = (f"{'model':12} {'dtype':9} {'B x S x T':>11} {'roofl. ms':>10} {'matmul ms':>10} {'meas. ms':>10} "
          f"{'meas/roofl':>10} {'tokens/s':>12} {'MFU':>7} {'compile s':>9}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["transformer", "bahdanau", "convs2s", "luong", "sutskever", "cho"],
                        choices=list_models())
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=COMPUTE_DTYPES)
    parser.add_argument("--data-dir", help="where multi30k/ is (default: $ZOO_DATA_DIR, ...); without it, synthetic")
    parser.add_argument("--batch", default=None, help="B,S,T without the corpus (default: 256,16,16; --quick: 32,16,16)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="each model's timed steps last at least this")
    parser.add_argument("--quick", action="store_true", help="the throughput study's small sizes (a CPU rehearsal)")
    parser.add_argument("--output", type=Path, help="write every row as JSON here, after each model")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    batch_shape = tuple(int(n) for n in args.batch.split(",")) if args.batch else (sizes.batch_tokens // BUCKET, BUCKET, BUCKET)
    if len(batch_shape) != 3 or min(batch_shape) < 1:
        parser.error(f"--batch {args.batch!r}: give three positive integers B,S,T")
    print(f"device: {jax.devices()[0].device_kind}; predicted: {H100.kind}, {H100.peak_bf16_flops / 1e12:.0f} TFLOP/s "
          f"bf16, {H100.hbm_bandwidth / 1e12:.2f} TB/s (zoo.aot.CHIPS['h100']). roofl.: zoo.aot.roofline of XLA's FLOPs "
          f"and bytes of the step compiled here (the planner's prediction); matmul: jaxpr matrix-product FLOPs / peak; "
          f"meas.: this device", flush=True)
    print(HEADER, flush=True)
    rows = []
    for dtype in args.dtypes:
        for model in args.models:
            row = {"model": model, "dtype": dtype}
            try:
                config, shape, source = configuration(model, dtype, sizes.overrides.get(model, {}), args.data_dir, batch_shape)
                row.update(batch_shape=list(shape), data=source)
                row.update(measure(config, shape, args.min_seconds))
            except Exception as e:  # one model's failure (out of memory, a missing kernel) must not hide the others
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                print(f"{model:12} {dtype:9} FAILED: {row['error']}", flush=True)
            else:
                print(row_text(row), flush=True)
            rows.append(row)
            if args.output:
                args.output.write_text(json.dumps(rows, indent=1))
    return int(any("error" in r for r in rows))


if __name__ == "__main__":
    sys.exit(main())
