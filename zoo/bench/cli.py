"""The benchmarks: ``python benchmark.py [seq2seq] [layers] [train] [serve] [data] [compile] [--quick] [--peer torch]``.

How the cost of each mechanism grows, on whatever device JAX sees:

  seq2seq  a GRU encoder-decoder without attention (O(m + t) recurrent steps) and with additive
           or dot attention (m·t scores, counted as they run), forward pass and training step,
           over a grid of source length m and target length t; the memory of the naive additive
           attention (a (t, m, A) tensor) against scoring step by step, with and without
           rematerialisation.
  layers   self-attention O(n²·d) (reference, jax.nn.dot_product_attention, blocked), recurrent
           O(n·d²) (LSTM, GRU) and convolution O(k·n·d²) layers (Vaswani et al. 2017, Table 1):
           time, FLOP/s, peak memory, FLOPs (analytic and XLA's), n and d swept.

  train    the training-throughput study (zoo/bench/throughput.py): tokens/s of the whole
           training loop and of the compiled step back to back, the host overhead, FLOPs per
           token, MFU, compile time and memory of every model; --peer torch adds PyTorch's
           tutorial Bahdanau and nn.Transformer on the same batches. Only when named.
  data     the data study (zoo/bench/datascale.py): today's word pipeline against subwords read
           from prepared shards on 1x, 10x and 100x Multi30k train (synthetic, resampled):
           preparation sentences/s on one and all cores, the training process's peak RSS, time to
           first step on a second run, the loop's tokens/s (--scales to choose). Only when named.
  compile  the compile-only planner (zoo/bench/compile.py): every model's training step, float32
           and bfloat16, default and paper size, compiled for TPU v5e-8 and v5p-8 on this machine
           (libtpu): fits, HBM a chip, GFLOP a step, roofline step time and tokens/s, and the
           largest --train.batch-tokens that fits (on v5e-8). Only when named; --quick: default
           sizes, no search.

Writes DIR/scaling.json (every measurement, fitted exponent with its range, and target),
DIR/table.txt (the printed table) and log-log PNGs with the fitted slopes; the train study
writes DIR/train.json, DIR/train_table.txt and DIR/train.png; the serve study DIR/serve.json
and DIR/serve_table.txt; the data study DIR/data.json and DIR/data_table.md; the compile study
DIR/compile.json, DIR/compile.md and DIR/compile.png.
"""

import argparse
import sys
from pathlib import Path

from zoo.errors import ZooError

MIN_REPEATS = 5
NAMED_ONLY = ("train", "serve", "data", "compile")  # studies that run only when named


def parse_args(argv=None):
    from zoo.bench.runner import DTYPES, PEERS, STUDIES

    p = argparse.ArgumentParser(prog="benchmark.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="*", metavar="STUDY",
                   help=f"any of {', '.join((*STUDIES, *NAMED_ONLY))} (default: {' and '.join(STUDIES)})")
    p.add_argument("--models", nargs="+", default=None,
                   help="train and compile studies: these models (default: all); serve study: the first (default: bahdanau)")
    p.add_argument("--exported", default=None, help="serve study: serve this file of python -m zoo.export")
    p.add_argument("--data-dir", default=None,
                   help="train, data and compile studies: where Multi30k is (default: $ZOO_DATA_DIR, ...)")
    p.add_argument("--topologies", nargs="+", default=None,
                   help="compile study: these of zoo.aot.TOPOLOGIES (default: tpu:v5e-8 tpu:v5p-8; gpu:h100: JAX CUDA plugin)")
    p.add_argument("--sizes", nargs="+", default=None, choices=("default", "large"),
                   help="compile study: model sizes (default: default large; --quick: default)")
    p.add_argument("--search-topologies", nargs="*", default=None,
                   help="compile study: search the largest batch on these (default: tpu:v5e-8; none: no search)")
    p.add_argument("--scales", nargs="+", type=int, default=None, help="data study: corpus sizes in Multi30k trains "
                   "(default: 1 10 100)")
    p.add_argument("--word-max-scale", type=int, default=None, help="data study: the word pipeline's largest scale "
                   "(default: 10; it tokenizes the whole corpus at every start)")
    p.add_argument("--quick", action="store_true", help="small sizes, forward passes: a minute or so on a laptop CPU")
    p.add_argument("--device", default=None, help="cpu, gpu or tpu (default: JAX's default device)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--out", default="benchmark-results", help="output folder (default: benchmark-results)")
    p.add_argument("--peer", choices=PEERS, help="time the same layers in this framework, in the same run")
    p.add_argument("--peer-threads", type=int, default=None,
                   help="the peer's intra-op threads (default on a CPU: as many as JAX uses, every core of this process)")
    p.add_argument("--repeats", type=int, default=None, help=f"timed runs per figure, >= {MIN_REPEATS} (default: the preset's)")
    return p.parse_args(argv)


def main_serve(args, out: Path) -> None:
    """The serve study (:func:`zoo.bench.serving.run_serving`)."""
    from zoo.bench import serving
    from zoo.models import list_models

    model = (args.models or ["bahdanau"])[0]
    if model not in list_models():
        raise ZooError(f"--models: unknown model {model!r}; choose from {', '.join(list_models())}")
    exported = Path(args.exported) if args.exported else None
    if exported is not None and not exported.is_file():
        raise ZooError(f"--exported {exported}: no such file")
    try:
        serving.run_serving(serving.QUICK if args.quick else serving.FULL, out, model, exported)
    except RuntimeError as e:
        raise ZooError(f"serve study: {str(e).splitlines()[0]}") from None


def main_compile(args, out: Path) -> None:
    """The compile study (:func:`zoo.bench.compile.run_compile_study`) with the command line's
    models, topologies and sizes.

    Raises:
      ZooError: an unknown model or topology, no libtpu, no corpus.
    """
    from zoo.aot import TOPOLOGIES
    from zoo.bench.compile import DEFAULT_TOPOLOGIES, SEARCH_TOPOLOGIES, run_compile_study
    from zoo.models import list_models

    unknown = [m for m in args.models or () if m not in list_models()]
    if unknown:
        raise ZooError(f"--models: unknown model {unknown[0]!r}; choose from {', '.join(list_models())}")
    topologies = args.topologies or DEFAULT_TOPOLOGIES
    unknown = [t for t in (*topologies, *(args.search_topologies or ())) if t not in TOPOLOGIES]
    if unknown:
        raise ZooError(f"--topologies: unknown topology {unknown[0]!r}; choose from {', '.join(TOPOLOGIES)}")
    search_on = () if args.quick else SEARCH_TOPOLOGIES if args.search_topologies is None else args.search_topologies
    sizes = args.sizes or (("default",) if args.quick else ("default", "large"))
    run_compile_study(out, args.models, topologies, sizes, search_on, data_dir=args.data_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        from zoo.bench.runner import QUICK, STUDIES, full_preset, run_benchmark

        unknown = [s for s in args.studies if s not in (*STUDIES, *NAMED_ONLY)]
        if unknown:
            raise ZooError(f"unknown study {unknown[0]!r}; choose from {', '.join((*STUDIES, *NAMED_ONLY))}")
        if args.repeats is not None and args.repeats < MIN_REPEATS:
            raise ZooError(f"--repeats {args.repeats}: every figure is a median of at least {MIN_REPEATS} runs")
        if args.peer_threads is not None and args.peer_threads < 1:
            raise ZooError(f"--peer-threads {args.peer_threads}: must be at least 1")
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ZooError(f"--out {out}: exists and is not a folder")
        from dataclasses import replace

        from zoo.bench.measure import host_threads, pick_device
        from zoo.bench.peer_torch import PeerUnavailable

        try:
            device = pick_device(args.device)
        except RuntimeError as e:
            raise ZooError(f"--device {args.device}: {e}") from None
        if args.peer and args.peer_threads is None and device.platform == "cpu":
            args.peer_threads = host_threads()  # equal threads: XLA's CPU backend uses every core
        preset = QUICK if args.quick else full_preset(device)
        if args.repeats is not None:
            preset = replace(preset, repeats=args.repeats)
        if "compile" in args.studies:
            main_compile(args, out)
        if args.scales is not None and min(args.scales) < 1:
            raise ZooError(f"--scales {args.scales}: corpus sizes are whole multiples of Multi30k train, at least 1")
        studies = [s for s in STUDIES if s in args.studies] if args.studies else list(STUDIES)
        try:
            if studies:
                run_benchmark(studies, preset, out, device, args.dtype, args.peer, args.peer_threads)
            if "train" in args.studies:
                from zoo.bench import throughput
                from zoo.bench.peer_torch import TorchSeq2SeqPeer
                from zoo.models import list_models

                unknown = [m for m in args.models or () if m not in list_models()]
                if unknown:
                    raise ZooError(f"--models: unknown model {unknown[0]!r}; choose from {', '.join(list_models())}")
                peer = args.peer and TorchSeq2SeqPeer(device, args.dtype, args.peer_threads)
                throughput.run_throughput(throughput.QUICK if args.quick else throughput.FULL, out, device, args.dtype,
                                          args.models, peer, args.data_dir)
            if "serve" in args.studies:
                main_serve(args, out)
            if "data" in args.studies:
                from zoo.bench.datascale import SCALES, WORD_MAX_SCALE, run_data_study

                run_data_study(out, args.data_dir, tuple(args.scales or SCALES), args.word_max_scale or WORD_MAX_SCALE)
        except PeerUnavailable as e:
            raise ZooError(str(e)) from None
    except ZooError as e:
        print(f"benchmark.py: error: {e}", file=sys.stderr)
        return 2
    return 0
