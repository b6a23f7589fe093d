"""The server benchmark: ``python benchmark.py serve [--models bahdanau] [--exported FILE.zoo] [--quick]``.

A model is exported (:mod:`zoo.export`, this machine's platform, greedy decoding) and served by
``python -m zoo.serve`` in a subprocess, once with dynamic batching (up to 64 sentences, 5 ms
wait) and once without (``--max-batch-size 1``: one request at a time). Concurrent clients
(1, 8 and 64; asyncio + httpx in this process) each send one sentence a request, back to back,
cycling through :data:`SENTENCES` (4 to 13 tokens, Multi30k-like); after an untimed warm-up
(every batch shape compiled first, then the same load untimed), the timed window gives sentences/s and the p50 and p99
latency of a request, and the server's ``/health`` counters the mean requests a batch.

Without ``--exported`` the model has freshly initialised parameters at its default size (with
vocabularies padded to the config's sizes): decoding always runs its 2 S + 8 steps (static
shapes), so the cost is that of a trained model of the same size; only the hypotheses differ.
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SENTENCES = (
    "Ein Mann schläft.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau mit einem roten Hut liest ein Buch.",
    "Ein kleiner Junge springt in einen Pool.",
    "Menschen gehen auf einer belebten Straße.",
    "Ein Mann in einem blauen Hemd repariert ein Fahrrad vor einem Geschäft.",
    "Ein Kind isst Eis.",
    "Zwei Frauen sitzen auf einer Bank im Park und unterhalten sich.",
)
MODES = {"batching": ("--max-batch-size", "64", "--max-wait-ms", "5"),
         "no batching": ("--max-batch-size", "1", "--max-wait-ms", "0")}


@dataclass(frozen=True)
class ServeSizes:
    """A preset: the model's overrides of its default size, the client counts and the windows."""

    name: str
    overrides: dict
    clients: tuple[int, ...]
    warmup_seconds: float
    seconds: float


FULL = ServeSizes("full", {}, (1, 8, 64), warmup_seconds=5.0, seconds=20.0)
QUICK = ServeSizes("quick", {"embed_dim": 16, "hidden_dim": 16, "attention_dim": 16, "maxout_dim": 16}, (1, 8),
                   warmup_seconds=2.0, seconds=3.0)


def export_fresh_model(name: str, overrides: dict, path: Path) -> Path:
    """Export model ``name`` at its default size (plus ``overrides``) with freshly initialised
    parameters and vocabularies of the config's sizes (the benchmark sentences' tokens, then fillers)."""
    import jax
    from flax import nnx

    from zoo.config import Config, DataConfig, TrainConfig
    from zoo.data.pipeline import TextPipeline
    from zoo.data.tokenize import Tokenizer
    from zoo.data.vocab import SPECIALS, Vocab
    from zoo.export import export_translator
    from zoo.models import MODELS, build
    from zoo.serving import current_platform
    from zoo.translator import Translator

    config = Config(model_name=name, model=MODELS[name].config(**overrides), data=DataConfig(), train=TrainConfig())
    src_tokenizer, tgt_tokenizer = Tokenizer("de"), Tokenizer("en")
    words = sorted({t for s in SENTENCES for t in src_tokenizer.tokenize(s)})

    def vocab(size: int, known: list[str]) -> Vocab:
        return Vocab([*SPECIALS, *known, *(f"<w{i}>" for i in range(size - len(SPECIALS) - len(known)))])

    pipeline = TextPipeline(src_tokenizer, tgt_tokenizer, vocab(config.model.src_vocab_size, words),
                            vocab(config.model.tgt_vocab_size, []))
    graphdef, state = nnx.split(build(name, config.model))
    translator = Translator(config, pipeline, graphdef, jax.device_get(nnx.to_pure_dict(state)), step=0)
    return export_translator(translator, path, [current_platform()], [1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model: Path, flags) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "zoo.serve", "--model", str(model), "--port", str(port), *flags],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.stdout.read()}")
        try:
            httpx.get(f"{url}/health", timeout=5).raise_for_status()
            return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the server did not answer in 300 s")


async def _drive(url: str, clients: int, seconds: float) -> list[float]:
    """``clients`` concurrent clients sending one sentence a request for ``seconds``: the latencies (s)."""
    import httpx

    latencies: list[float] = []
    end = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def one(i: int) -> None:
            n = i
            while time.perf_counter() < end:
                start = time.perf_counter()
                response = await client.post("/translate", json={"sentences": [SENTENCES[n % len(SENTENCES)]]})
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)
                n += clients

        await asyncio.gather(*(one(i) for i in range(clients)))
    return latencies


def _compile_shapes(url: str, max_batch_size: int) -> None:
    """Compile every program the timed runs can use: one request of k copies of a sentence, for
    each padded source length of :data:`SENTENCES` and each power of two k up to the batch size
    (the exported model pads a batch's rows to a power of two)."""
    import httpx

    from zoo.data.batching import round_up
    from zoo.data.tokenize import Tokenizer

    tokenizer = Tokenizer("de")
    by_length = {round_up(len(tokenizer.tokenize(s)) + 1, 8): s for s in SENTENCES}
    k = 1
    while k <= max_batch_size:
        for sentence in by_length.values():
            httpx.post(f"{url}/translate", json={"sentences": [sentence] * k}, timeout=600).raise_for_status()
        k *= 2


def _health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", timeout=30).json()


def run_serving(sizes: ServeSizes, out: Path, model: str = "bahdanau", exported: Path | None = None,
                log: Callable = print) -> dict:
    """Run the study and write ``out/serve.json`` and ``out/serve_table.txt``.

    Args:
      sizes: :data:`FULL` or :data:`QUICK`. out: output folder (created).
      model: the model exported when ``exported`` is None. exported: a ``.zoo`` file to serve instead.

    Returns:
      the results written to ``serve.json``: per mode and client count, the requests, sentences/s,
      p50 and p99 latency (ms) and mean requests a batch.
    """
    import jax

    from zoo.bench.measure import run_setting
    from zoo.bench.report import write_json

    out.mkdir(parents=True, exist_ok=True)
    results = {"setting": {**run_setting(jax.devices()[0], "float32"), "preset": sizes.name,
                           "load_average": os.getloadavg()}, "rows": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if exported is None:
            log(f"[serve] exporting a freshly initialised {model} {sizes.overrides or '(default size)'}")
            exported = export_fresh_model(model, sizes.overrides, Path(tmp) / f"{model}.zoo")
        results["model"] = {"file": str(exported), "bytes": exported.stat().st_size}
        for mode, flags in MODES.items():
            process, url = _start_server(exported, flags)
            try:
                health = _health(url)
                results["model"]["name"] = health["model"]
                log(f"[serve] {mode}: compiling every batch shape")
                _compile_shapes(url, health["max_batch_size"])
                for clients in sizes.clients:
                    log(f"[serve] {mode}, {clients} client(s): warm-up {sizes.warmup_seconds:.0f} s, timed {sizes.seconds:.0f} s")
                    asyncio.run(_drive(url, clients, sizes.warmup_seconds))
                    before = _health(url)
                    latencies = np.array(asyncio.run(_drive(url, clients, sizes.seconds)))
                    after = _health(url)
                    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
                    results["rows"].append({
                        "mode": mode, "clients": clients, "requests": len(latencies),
                        "sentences_per_s": len(latencies) / sizes.seconds,
                        "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
                        "requests_per_batch": requests / max(batches, 1)})
            finally:
                process.terminate()
                process.wait(timeout=30)
    results["seconds"] = time.perf_counter() - start
    results["load_average_after"] = os.getloadavg()
    write_json(results, out / "serve.json")
    table = serve_table(results)
    (out / "serve_table.txt").write_text(table + "\n")
    log(table)
    return results


def serve_table(results: dict) -> str:
    """The study's Markdown table."""
    lines = ["| mode | clients | sentences/s | p50 latency (ms) | p99 latency (ms) | requests a batch |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results["rows"]:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['sentences_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
                     f"| {r['requests_per_batch']:.1f} |")
    return "\n".join(lines)

