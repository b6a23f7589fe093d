"""Train a zoo model: ``python train.py --model bahdanau --dataset multi30k --workdir runs/bahdanau``.

Running it again on the same workdir resumes from the latest checkpoint.
"""

import argparse
import signal
import sys

from zoo.config import MODEL_CONFIGS, Config, DataConfig, TrainConfig, replace_fields
from zoo.errors import ZooError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bahdanau", choices=sorted(MODEL_CONFIGS))
    p.add_argument("--dataset", default="multi30k")
    p.add_argument("--workdir", required=True, help="checkpoints, config, vocabularies and metrics go here")
    p.add_argument("--data-dir", default=None, help="corpora root (default: $ZOO_DATA_DIR, else ~/.cache/zoo/data)")
    p.add_argument("--src-lang", default="de")
    p.add_argument("--tgt-lang", default="en")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="batches of a token budget instead: rows × padded length ≤ this (e.g. 4096)")
    p.add_argument("--log-every", type=int, default=TrainConfig.log_every, help="steps between metric reads and log lines")
    p.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate)
    p.add_argument("--clip-norm", type=float, default=TrainConfig.clip_norm)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every, help="steps")
    p.add_argument("--teacher-forcing", type=float, default=TrainConfig.teacher_forcing,
                   help="probability that a decoder step reads the reference token, else its own prediction")
    p.add_argument("--label-smoothing", type=float, default=TrainConfig.label_smoothing,
                   help="ε: the training targets put 1 − ε on the reference token (0: none)")
    p.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps,
                   help="linear warmup to --learning-rate over this many steps, then 1/√step decay (0: constant)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in all")
    p.add_argument("--no-lowercase", action="store_true", help="keep the corpus's casing")
    p.add_argument("--min-freq", type=int, default=DataConfig.min_freq)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field, e.g. --set hidden_dim=512 (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help="JAX's persistent compilation cache (default: $ZOO_COMPILATION_CACHE, else ~/.cache/zoo/jax; off: none)")
    p.add_argument("--fsdp", action="store_true", help="shard parameters and optimizer state over the devices too")
    p.add_argument("--distributed", action="store_true",
                   help="one process of a multi-process run: jax.distributed.initialize() with the cluster "
                        "auto-detected (SLURM, Open MPI, TPU pod slices); the three flags below set it explicitly")
    p.add_argument("--coordinator-address", metavar="HOST:PORT", help="multi-process run: process 0's address (any free port)")
    p.add_argument("--num-processes", type=int, help="multi-process run: how many processes")
    p.add_argument("--process-id", type=int, help="multi-process run: this process's index, from 0")
    return p.parse_args(argv)


def parse_bool(value: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, any case); raises ValueError otherwise."""
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(value)
    return lowered in ("true", "1", "yes")


def model_overrides(pairs: list[str], model_config) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ZooError(f"--set {pair!r}: expected FIELD=VALUE")
        default = getattr(model_config, name, None)
        if default is None:
            raise ZooError(f"--set {pair!r}: {type(model_config).__name__} has no field {name!r}")
        try:
            out[name] = parse_bool(value) if isinstance(default, bool) else type(default)(value)
        except ValueError:
            raise ZooError(f"--set {pair!r}: {value!r} is not a {type(default).__name__}") from None
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        explicit = (args.coordinator_address, args.num_processes, args.process_id)
        if args.distributed or explicit != (None, None, None):  # before any other JAX call
            from zoo.distributed import initialize

            initialize(*explicit)
        model_config = MODEL_CONFIGS[args.model]()
        try:
            config = Config(
                model_name=args.model,
                model=replace_fields(model_config, model_overrides(args.set, model_config)),
                data=DataConfig(args.dataset, args.src_lang, args.tgt_lang, not args.no_lowercase, args.min_freq),
                train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                                  learning_rate=args.learning_rate, clip_norm=args.clip_norm, seed=args.seed,
                                  checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                                  max_steps=args.max_steps, teacher_forcing=args.teacher_forcing,
                                  label_smoothing=args.label_smoothing, warmup_steps=args.warmup_steps, fsdp=args.fsdp),
            )
        except ValueError as e:
            raise ZooError(str(e)) from None
        from zoo.compilation import default_cache_dir, enable_compilation_cache
        from zoo.training import train

        cache = args.compilation_cache
        enable_compilation_cache(default_cache_dir() if cache is None else None if cache == "off" else cache)
        result = train(config, args.workdir, args.data_dir, progress=not args.no_progress)
    except ZooError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    from zoo.distributed import is_main

    if is_main():
        print(f"trained to step {result['step']} (epoch {result['epoch']}); best val loss {result['best_val_loss']:.4f}; "
              f"{result['wall_s']:.0f} s; XLA: {result['compiled']} programs compiled, {result['cached']} from the cache; "
              f"workdir {args.workdir}")
    return 128 + signal.Signals[result["stopped_by"]] if result["stopped_by"] else 0

