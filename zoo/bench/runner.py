"""One benchmark run: the presets, the studies in order, and what a run writes.

    results = run_benchmark(["seq2seq", "layers"], QUICK, out=Path("bench"), dtype="float32")

writes ``out/scaling.json``, ``out/table.txt`` and the PNGs of :func:`zoo.plotting.write_scaling_plots`.
"""

import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp

from zoo.bench import layers, report, seq2seq
from zoo.bench.measure import device_memory_peak, run_setting

STUDIES = ("seq2seq", "layers")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PEERS = ("torch",)


@dataclass(frozen=True)
class Preset:
    """Sizes of both studies and the timing protocol."""

    name: str
    seq2seq: seq2seq.Seq2SeqSizes
    layers: layers.LayerSizes
    repeats: int  # timed runs per figure (the median is reported)
    warmup: int  # untimed runs first


# The seq2seq grid: 13 (m, t) pairs, m·t over 256× (4096 to 1048576), m + t over 16× (128 to 2048).
# The "large" fits take m·t >= 65536 (7 points, m·t over 16×, m + t over 4×), where the additive
# scores (~m·A tanh per target step) outweigh a GRU step (~12·H² FLOPs) about 3 to 1.
_GRID = ((64, 64), (128, 64), (64, 128), (128, 128), (256, 128), (128, 256), (256, 256), (512, 256), (256, 512),
         (512, 512), (1024, 512), (512, 1024), (1024, 1024))

FULL_CPU = Preset(
    "full-cpu",
    seq2seq.Seq2SeqSizes(batch=8, vocab=256, embed=64, hidden=64, attention_dim=64, grid=_GRID, memory_length=128,
                         fit_from=65536),
    layers.LayerSizes(batch=4, head_dim=64, kernel_size=3, block_size=128, fixed_d=256,
                      n_grid=(64, 128, 256, 512, 1024, 2048, 4096), fixed_n=512, d_grid=(64, 128, 256, 512, 1024),
                      fit_points=4),
    repeats=7, warmup=2)

# Accelerators: longer sequences, and heads of width 128 (the cuDNN flash-attention target).
FULL_ACCELERATOR = Preset(
    "full-accelerator",
    replace(FULL_CPU.seq2seq, batch=64, hidden=256, attention_dim=256, embed=256),
    layers.LayerSizes(batch=4, head_dim=128, kernel_size=3, block_size=512, fixed_d=1024,
                      n_grid=(256, 512, 1024, 2048, 4096, 8192, 16384), fixed_n=1024,
                      d_grid=(128, 256, 512, 1024, 2048, 4096), fit_points=4),
    repeats=10, warmup=3)

# A smoke run: small sizes, forward passes only (the memory comparison still compiles training
# steps), 6 grid points: the run is mostly compilation. Its exponents are overhead-bound.
QUICK = Preset(
    "quick",
    seq2seq.Seq2SeqSizes(batch=8, vocab=32, embed=32, hidden=32, attention_dim=32,
                         grid=((8, 8), (16, 8), (8, 16), (16, 16), (32, 16), (32, 32)),
                         memory_length=32, fit_from=128, train=False),
    layers.LayerSizes(batch=2, head_dim=16, kernel_size=3, block_size=32, fixed_d=32, n_grid=(16, 32, 64, 128, 256),
                      fixed_n=64, d_grid=(16, 32, 64), fit_points=3, train=False),
    repeats=5, warmup=1)


def full_preset(device) -> Preset:
    """The full run's preset for a device: CPU sizes, or the larger accelerator sizes."""
    return FULL_CPU if device.platform == "cpu" else FULL_ACCELERATOR


def run_benchmark(studies, preset: Preset, out: Path, device=None, dtype: str = "float32", peer: str | None = None,
                  peer_threads: int | None = None, log: Callable = print) -> dict:
    """Run ``studies`` (a subset of :data:`STUDIES`) on ``device`` and write the results to ``out``.

    Args:
      studies: names from :data:`STUDIES`, run in that order.
      preset: sizes and timing protocol. out: output folder (created).
      device: a JAX device (None: JAX's default). dtype: a key of :data:`DTYPES`.
      peer: None or "torch" (:mod:`zoo.bench.peer_torch`; layer study only).
      peer_threads: PyTorch's intra-op threads (None: PyTorch's default).
      log: where progress lines go.

    Returns:
      the results dict also written to ``out/scaling.json``.

    Raises:
      ValueError: unknown study, dtype or peer.
      zoo.bench.peer_torch.PeerUnavailable: the peer cannot run.
    """
    unknown = [s for s in studies if s not in STUDIES]
    if unknown or dtype not in DTYPES or peer not in (None, *PEERS):
        raise ValueError(f"studies must be among {STUDIES}, dtype among {tuple(DTYPES)}, peer among {PEERS}; "
                         f"got {studies}, {dtype!r}, {peer!r}")
    out.mkdir(parents=True, exist_ok=True)
    device = device or jax.devices()[0]
    setting = run_setting(device, dtype)
    peer_fn = None
    if peer == "torch" and "layers" in studies:
        from zoo.bench.peer_torch import torch_peer, torch_setting

        peer_fn = torch_peer(device, dtype, preset.layers, preset.repeats, preset.warmup, peer_threads)
        setting.update(torch_setting())
    results = {"setting": setting, "command": shlex.join(sys.argv), "preset": preset.name, "repeats": preset.repeats,
               "warmup": preset.warmup, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    start = time.perf_counter()
    with jax.default_device(device):
        if "seq2seq" in studies:
            results["seq2seq"] = seq2seq.run(preset.seq2seq, DTYPES[dtype], preset.repeats, preset.warmup, log)
        if "layers" in studies:
            results["layers"] = layers.run(preset.layers, DTYPES[dtype], device, preset.repeats, preset.warmup,
                                           peer=peer_fn, log=log)
    results["seconds"] = time.perf_counter() - start
    results["device_peak_bytes"] = device_memory_peak(device)
    results["targets"] = report.targets(results)
    from zoo.plotting import write_scaling_plots  # matplotlib only when writing

    results["plots"] = [p.name for p in write_scaling_plots(results, out)]
    report.write_json(results, out / "scaling.json")
    table = report.tables(results)
    (out / "table.txt").write_text(table + "\n")
    log(table)
    return results
