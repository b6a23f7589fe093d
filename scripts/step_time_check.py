"""Predicted and measured training-step time of every model, side by side (issue 25, item 6).

For each model at its default size (``zoo.config.MODEL_CONFIGS``, the default vocabularies
8000/6000) in each compute dtype, the step :func:`zoo.training.make_train_step` builds (Adam
after gradient clipping, the default ``TrainConfig``) on one synthetic batch of B × S source
and B × T target tokens, every position real (default: the training-throughput study's shape,
4,096 target tokens as 256 × 16, :data:`zoo.bench.throughput.BUCKET`):

  predicted  the roofline bound of an H100 SXM (:func:`h100_prediction`): the step's
             matrix-product FLOPs (:func:`zoo.flops.jaxpr_flops`, every scan iteration counted)
             over the dense bfloat16 peak, and max(FLOPs / peak, bytes / HBM bandwidth) with the
             FLOPs and bytes accessed of XLA's ``cost_analysis()`` of the step compiled on this
             machine (XLA counts a scan body once: a recurrent model's figure is far too low);
  measured   the compiled step run back to back on this device (state donated, as the trainer
             runs it) for at least ``--min-seconds`` after two warm-up steps: wall time per step,
             target tokens a second, and MFU = FLOPs / step time / peak.

Prints one table and writes every figure as JSON (``--output``). Run by
``scripts/accelerator_checks.sh`` on the GPU machine; ``--quick`` (small sizes and batch) is its
rehearsal on a CPU, where the "measured" column is the CPU's.

    python scripts/step_time_check.py --output step_time.json
    JAX_PLATFORMS=cpu python scripts/step_time_check.py --quick --models transformer --dtypes float32
"""

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's zoo, installed or not

from zoo.bench.measure import memory_bytes  # noqa: E402
from zoo.bench.throughput import BUCKET, FULL, QUICK  # noqa: E402
from zoo.config import COMPUTE_DTYPES, MODEL_CONFIGS, TrainConfig  # noqa: E402
from zoo.flops import dense_bf16_peak, jaxpr_flops  # noqa: E402
from zoo.models import build, list_models  # noqa: E402
from zoo.training import init_state, make_optimizer, make_train_step  # noqa: E402

H100_PEAK_BF16 = dense_bf16_peak("H100")  # SXM: 989 TFLOP/s dense bfloat16
H100_HBM_BANDWIDTH = 3.35e12  # bytes/s, HBM3 of the H100 SXM (NVIDIA H100 Tensor Core GPU data sheet)


def h100_prediction(jaxpr_flops: float, xla_flops: float, bytes_accessed: float) -> dict:
    """The predicted step time (seconds) on one H100 SXM: ``compute`` = jaxpr FLOPs / peak, and
    ``roofline`` = max(XLA FLOPs / peak, bytes accessed / HBM bandwidth) (Williams et al. 2009)."""
    return {"compute": jaxpr_flops / H100_PEAK_BF16,
            "roofline": max(xla_flops / H100_PEAK_BF16, bytes_accessed / H100_HBM_BANDWIDTH)}


def synthetic_batch(rows: int, src_len: int, tgt_len: int, src_vocab: int, tgt_vocab: int, seed: int = 0) -> dict:
    """A batch of random token ids in [3, vocab) (past <pad>, <bos>, <eos>) with every position real."""
    rng = np.random.default_rng(seed)
    ids = lambda vocab, length: rng.integers(3, vocab, (rows, length)).astype(np.int32)
    return {"src": ids(src_vocab, src_len), "src_length": np.full(rows, src_len, np.int32),
            "tgt_in": ids(tgt_vocab, tgt_len), "tgt_out": ids(tgt_vocab, tgt_len),
            "tgt_length": np.full(rows, tgt_len, np.int32)}


def measure(model: str, dtype: str, overrides: dict, batch_shape: tuple[int, int, int], min_seconds: float) -> dict:
    """Compile, predict and time one model's training step (see the module docstring)."""
    config = MODEL_CONFIGS[model](**overrides, dtype=dtype)
    tx = make_optimizer(TrainConfig())
    graphdef, state = init_state(build(model, config), tx)
    rows, src_len, tgt_len = batch_shape
    batch = jax.device_put(synthetic_batch(rows, src_len, tgt_len, config.src_vocab_size, config.tgt_vocab_size))
    key = jax.random.key(0)
    step = make_train_step(graphdef, tx)
    traced = step.trace(state, batch, key)
    tic = time.perf_counter()
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - tic
    cost = compiled.cost_analysis() or {}
    flops = jaxpr_flops(traced.jaxpr)
    predicted = h100_prediction(flops, cost.get("flops", 0.0), cost.get("bytes accessed", 0.0))
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)
    steps, tic = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - tic < min_seconds:
        state, metrics = compiled(state, batch, key)
        steps += 1
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - tic) / steps
    return {"model": model, "dtype": dtype, "overrides": overrides, "batch_shape": list(batch_shape),
            "device": jax.devices()[0].device_kind, "num_params": int(sum(x.size for x in jax.tree.leaves(state["params"]))),
            "compile_s": compile_s, "jaxpr_flops": flops, "xla_flops": cost.get("flops", 0.0),
            "bytes_accessed": cost.get("bytes accessed", 0.0), "peak_memory_bytes": memory_bytes(compiled)["peak"],
            "predicted_compute_s": predicted["compute"], "predicted_roofline_s": predicted["roofline"],
            "measured_s": step_s, "steps_timed": steps, "tokens_per_s": rows * tgt_len / step_s,
            "mfu_h100": flops / step_s / H100_PEAK_BF16, "loss": float(metrics["loss"])}


def row_text(r: dict) -> str:
    ms = lambda s: f"{s * 1e3:10.4g}"
    return (f"{r['model']:12} {r['dtype']:9} {ms(r['predicted_compute_s'])} {ms(r['predicted_roofline_s'])} "
            f"{ms(r['measured_s'])} {r['measured_s'] / r['predicted_compute_s']:9.1f}x {r['tokens_per_s']:12,.0f} "
            f"{r['mfu_h100']:7.1%} {r['compile_s']:8.1f}")


HEADER = (f"{'model':12} {'dtype':9} {'pred. ms':>10} {'roofl. ms':>10} {'meas. ms':>10} {'meas/pred':>10} "
          f"{'tokens/s':>12} {'MFU':>7} {'compile s':>8}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["transformer", "bahdanau", "convs2s", "luong", "sutskever", "cho"],
                        choices=list_models())
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=COMPUTE_DTYPES)
    parser.add_argument("--batch", default=None, help="B,S,T (default: 256,16,16; --quick: 32,16,16)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="each model's timed steps last at least this")
    parser.add_argument("--quick", action="store_true", help="the throughput study's small sizes (a CPU rehearsal)")
    parser.add_argument("--output", type=Path, help="write every row as JSON here, after each model")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    batch_shape = tuple(int(n) for n in args.batch.split(",")) if args.batch else (sizes.batch_tokens // BUCKET, BUCKET, BUCKET)
    if len(batch_shape) != 3 or min(batch_shape) < 1:
        parser.error(f"--batch {args.batch!r}: give three positive integers B,S,T")
    print(f"device: {jax.devices()[0].device_kind}; batch B,S,T = {batch_shape}; predicted: H100 SXM, "
          f"{H100_PEAK_BF16 / 1e12:.0f} TFLOP/s bf16, {H100_HBM_BANDWIDTH / 1e12:.2f} TB/s", flush=True)
    print(HEADER, flush=True)
    rows = []
    for dtype in args.dtypes:
        for model in args.models:
            try:
                rows.append(measure(model, dtype, sizes.overrides.get(model, {}), batch_shape, args.min_seconds))
            except Exception as e:  # one model's failure (out of memory, a missing kernel) must not hide the others
                rows.append({"model": model, "dtype": dtype, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"})
                print(f"{model:12} {dtype:9} FAILED: {rows[-1]['error']}", flush=True)
            else:
                print(row_text(rows[-1]), flush=True)
            if args.output:
                args.output.write_text(json.dumps(rows, indent=1))
    return int(any("error" in r for r in rows))


if __name__ == "__main__":
    sys.exit(main())
