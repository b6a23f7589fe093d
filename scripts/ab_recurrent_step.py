"""A/B timing of the recurrent models' training step: this tree against a baseline commit.

Times ``zoo.training.make_train_step`` (the jit-compiled step the trainer runs) of each recurrent
model at its default size on one synthetic batch (random token ids, lengths drawn between half
and all of the positions), here and at ``--baseline`` (default 3b4be56, the last commit whose
recurrent layers used plain autodiff), checked out with ``git worktree add`` into a temporary
folder. Each (model, tree) runs in its own subprocess with PYTHONPATH at that tree, the two trees
alternating, and reports the median of ``--repeats`` steps after ``--warmup`` steps (the first
warm-up step includes compilation). This tree's child also counts the step's FLOPs
(:func:`zoo.flops.jaxpr_flops`, every scan iteration; the baseline computes the same mathematics)
and measures a float32 matrix product's FLOP/s in the same process
(:func:`zoo.flops.measured_matmul_peak`), so the table gives each tree's MFU: how much faster a
step could still get without doing less arithmetic.

    python scripts/ab_recurrent_step.py                     # all four models, 128 x 24 tokens
    python scripts/ab_recurrent_step.py --models cho --repeats 5 --baseline 09cf899
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("bahdanau", "luong", "sutskever", "cho")
REPO = Path(__file__).resolve().parent.parent


def time_step(model_name: str, batch_size: int, tokens: int, repeats: int, warmup: int, flops: bool) -> dict:
    """Wall and CPU (all threads of the process) seconds of ``repeats`` training steps after
    ``warmup``, with the ``zoo`` on sys.path: ``{"wall": [...], "cpu": [...]}``; with ``flops``,
    also the step's FLOPs and the float32 matrix-product peak (FLOP/s) measured after the steps."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from zoo.config import TrainConfig
    from zoo.models import build
    from zoo.training import init_state, make_optimizer, make_train_step

    try:  # the registry's config class, in this tree and after it
        from zoo.models import MODELS

        config = MODELS[model_name].config()
    except (ImportError, AttributeError):  # a baseline before the one registry (zoo.config.MODEL_CONFIGS)
        from zoo.config import MODEL_CONFIGS

        config = MODEL_CONFIGS[model_name]()
    model = build(model_name, config)
    tx = make_optimizer(TrainConfig())
    graphdef, state = init_state(model, tx)
    step = make_train_step(graphdef, tx)
    rng = np.random.default_rng(0)

    def ids(vocab):
        return jnp.asarray(rng.integers(4, vocab, (batch_size, tokens)), jnp.int32)

    def lengths():
        return jnp.asarray(rng.integers(tokens // 2, tokens + 1, batch_size), jnp.int32)

    batch = {"src": ids(config.src_vocab_size), "src_length": lengths(), "tgt_in": ids(config.tgt_vocab_size),
             "tgt_out": ids(config.tgt_vocab_size), "tgt_length": lengths()}
    key, times = jax.random.key(0), {"wall": [], "cpu": []}
    for i in range(warmup + repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch, jax.random.fold_in(key, i))
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times["wall"].append(time.perf_counter() - wall)
            times["cpu"].append(time.process_time() - cpu)
    if flops:
        from zoo.flops import jaxpr_flops, measured_matmul_peak

        times["flops"] = jaxpr_flops(step.trace(state, batch, key).jaxpr)
        times["peak"] = measured_matmul_peak(jax.devices()[0])
    return times


def run_child(tree: Path, args, model_name: str, flops: bool = False) -> dict:
    """Median wall and CPU seconds per step of ``model_name`` with ``zoo`` imported from ``tree``
    (and, with ``flops``, the step's FLOPs and the measured peak FLOP/s)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    command = [sys.executable, __file__, "--child", model_name, "--batch-size", str(args.batch_size),
               "--tokens", str(args.tokens), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               *(["--flops"] if flops else [])]
    out = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert Path(result["zoo"]).resolve().is_relative_to(tree.resolve()), f"imported {result['zoo']}, not {tree}"
    step = result["step"]
    return {**{clock: statistics.median(step[clock]) for clock in ("wall", "cpu")},
            **{k: step[k] for k in ("flops", "peak") if k in step}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=(*MODELS, "transformer", "convs2s"),
                        help="default: the recurrent models; the Transformer and ConvS2S time the same way")
    parser.add_argument("--baseline", default="3b4be56", help="commit to compare against")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=24, help="source and target positions per example")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import zoo

        step = time_step(args.child, args.batch_size, args.tokens, args.repeats, args.warmup, args.flops)
        print(json.dumps({"zoo": zoo.__file__, "step": step}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(baseline), args.baseline],
                       check=True, capture_output=True)
        try:
            print(f"batch {args.batch_size} x {args.tokens} tokens, median of {args.repeats} steps after "
                  f"{args.warmup} warm-up; this tree = {REPO}, baseline = {args.baseline}", flush=True)
            print("ms per step, wall clock and CPU time (all threads; steadier when other processes share the cores);")
            print("MFU: the step's FLOPs per wall second over a float32 matrix product's, measured after this tree's steps")
            print(f"{'model':10} {'clock':5} {'this tree':>10} {'baseline':>10} {'speed-up':>9} {'GFLOP':>7} "
                  f"{'MFU here':>9} {'baseline':>9}", flush=True)
            for name in args.models:
                here = run_child(REPO, args, name, flops=True)
                there = run_child(baseline, args, name)
                mfu = lambda t: here["flops"] / t["wall"] / here["peak"]
                print(f"{name:10} {'wall':5} {1e3 * here['wall']:10.0f} {1e3 * there['wall']:10.0f} "
                      f"{there['wall'] / here['wall']:8.2f}x {here['flops'] / 1e9:7.1f} {mfu(here):9.1%} {mfu(there):9.1%}")
                print(f"{name:10} {'cpu':5} {1e3 * here['cpu']:10.0f} {1e3 * there['cpu']:10.0f} "
                      f"{there['cpu'] / here['cpu']:8.2f}x", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=True)


if __name__ == "__main__":
    main()
