"""Serve an exported model over HTTP: ``python -m zoo.serve --model bahdanau.zoo --port 8000``.

* ``POST /translate`` with ``{"sentences": ["Ein Mann schläft.", ...], "beam_size": 1, "all_heads": false}``
  answers ``{"translations": [...], "source_tokens": [[...]], "tokens": [[...]], "attention": [T×S per
  sentence], "has_attention": ..., "beam_size": k}``; ``"all_heads": true`` adds ``"weights"``,
  every decoder layer's and head's attention (L×N×T×S a sentence). Tokens include ``<eos>``;
  ``attention[i][t][s]`` is the weight of source token s when target token t was emitted
  (the last layer's heads averaged, as :meth:`zoo.translator.Translator.translate` returns).
* ``GET /health``: the model, its limits and the queue's length.
* ``GET /``: the attention explorer page (``zoo/static``).

Bad input (not JSON, not a list of strings, too many or too long sentences, a beam size that
was not exported) is a 400 (unreadable) or 422 (out of range) with ``{"error": "<one line>"}``;
the server keeps serving.

Dynamic batching (:class:`Batcher`): requests wait in one ``asyncio.Queue``; one task takes the
first waiting request, then whatever else arrives within ``--max-wait-ms`` until
``--max-batch-size`` sentences are gathered (a request is never split; one that would overflow
the batch opens the next), and translates them in a worker thread, one call a beam size, so
the event loop keeps accepting requests meanwhile. Sentences are grouped by padded length
(``by_padded_length``), so a sentence's translation does not depend on the requests it was
batched with. ``--max-batch-size 1`` turns batching off: one request at a time.
"""

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from zoo.errors import ZooError
from zoo.serving import ExportedTranslator, load_exported
from zoo.translation import Translation

MAX_SENTENCES = 64  # sentences a request
MAX_BATCH_SIZE = 64  # sentences a decode batch
MAX_WAIT_MS = 5.0  # how long the first request of a batch waits for others


@dataclass
class _Job:
    sentences: list[str]
    beam_size: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Dynamic batching of concurrent requests (see the module docstring).

    Args:
      model: an exported model (:func:`zoo.serving.load_exported`).
      max_batch_size: sentences a batch (≥ 1; 1: no batching).
      max_wait_ms: how long the first request of a batch waits for more.
    """

    def __init__(self, model: ExportedTranslator, max_batch_size: int = MAX_BATCH_SIZE, max_wait_ms: float = MAX_WAIT_MS):
        self.model, self.max_batch_size, self.max_wait = model, max_batch_size, max_wait_ms / 1000
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._next: _Job | None = None  # a request that would have overflowed the last batch
        self.requests = self.batches = 0  # served so far (GET /health reports them)

    async def translate(self, sentences: list[str], beam_size: int) -> list[Translation]:
        """Queue one request and wait for its translations."""
        job = _Job(sentences, beam_size, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def _gather(self) -> list[_Job]:
        """The next batch: the first waiting request and those arriving within the wait, up to the size."""
        loop = asyncio.get_running_loop()
        first, self._next = self._next or await self.queue.get(), None
        jobs, size, deadline = [first], len(first.sentences), loop.time() + self.max_wait
        while size < self.max_batch_size:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                try:
                    job = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
            if size + len(job.sentences) > self.max_batch_size:
                self._next = job
                break
            jobs.append(job)
            size += len(job.sentences)
        return jobs

    async def run(self) -> None:
        """Translate batches until cancelled."""
        while True:
            jobs = await self._gather()
            self.requests, self.batches = self.requests + len(jobs), self.batches + 1
            for beam_size in sorted({job.beam_size for job in jobs}):
                group = [job for job in jobs if job.beam_size == beam_size]
                sentences = [s for job in group for s in job.sentences]
                try:
                    results = await asyncio.to_thread(self.model.translate_tokens, sentences, beam_size,
                                                      self.max_batch_size, True)
                except Exception as e:  # answered to the requests, one line each; the loop goes on
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(e)
                    continue
                start = 0
                for job in group:
                    if not job.future.done():  # a client that went away cancelled its future
                        job.future.set_result(results[start : start + len(job.sentences)])
                    start += len(job.sentences)


def _rounded(x) -> list:
    return x.astype(np.float64).round(6).tolist()


def create_app(model: ExportedTranslator, max_sentences: int = MAX_SENTENCES, max_batch_size: int = MAX_BATCH_SIZE,
               max_wait_ms: float = MAX_WAIT_MS):
    """The FastAPI application serving ``model`` (see the module docstring).

    Args:
      model: an exported model. max_sentences: sentences a request (more is a 422).
      max_batch_size, max_wait_ms: the :class:`Batcher`'s.

    Returns:
      a ``fastapi.FastAPI`` app; run it with uvicorn (:func:`main`).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr, ValidationError

    class TranslateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        sentences: list[StrictStr]
        beam_size: StrictInt = 1
        all_heads: StrictBool = False

    batcher = Batcher(model, max_batch_size, max_wait_ms)
    max_tokens = model.max_source_length

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="zoo", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model.model_name, "step": model.step, "has_attention": model.has_attention,
                "beam_sizes": model.beam_sizes, "max_sentences": max_sentences, "max_tokens": max_tokens,
                "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "queue": batcher.queue.qsize(),
                "requests": batcher.requests, "batches": batcher.batches}

    def parse(raw: bytes) -> TranslateRequest:
        """The request, or ValueError with one line (any content type is read as JSON)."""
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"the body is not valid JSON ({e})") from None
        try:
            return TranslateRequest.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise ValueError(f"{where}: {first['msg']}") from None

    @app.post("/translate")
    async def translate(request: Request):
        try:
            body = parse(await request.body())
        except ValueError as e:
            return error(400, str(e))
        if not body.sentences:
            return error(422, "sentences: give at least one sentence")
        if len(body.sentences) > max_sentences:
            return error(422, f"sentences: {len(body.sentences)} sentences; at most {max_sentences} a request")
        if body.beam_size not in model.beam_sizes:
            return error(422, f"beam_size={body.beam_size}: this model decodes with beam sizes "
                              f"{','.join(map(str, model.beam_sizes))}")
        for i, sentence in enumerate(body.sentences):
            n = len(model.pipeline.src_tokenizer.tokenize(sentence))
            if n > max_tokens:
                return error(422, f"sentences.{i}: {n} tokens; at most {max_tokens} a sentence")
        results = await batcher.translate(body.sentences, body.beam_size)
        out = {"model": model.model_name, "beam_size": body.beam_size, "has_attention": model.has_attention,
               "translations": [r.text for r in results], "source_tokens": [r.source_tokens for r in results],
               "tokens": [r.tokens for r in results], "attention": [_rounded(r.attention) for r in results]}
        if body.all_heads:
            out["weights"] = [_rounded(r.heads) for r in results]
        return out

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):
        return error(500, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    page = (resources.files("zoo") / "static" / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=str(resources.files("zoo") / "static")), name="static")
    return app


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m zoo.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a file written by python -m zoo.export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-sentences", type=int, default=MAX_SENTENCES, help="sentences a request (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE,
                   help="sentences a decode batch; 1 turns dynamic batching off (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS,
                   help="how long a batch's first request waits for others (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        for flag in ("max_sentences", "max_batch_size"):
            if getattr(args, flag) < 1:
                raise ZooError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
        if args.max_wait_ms < 0:
            raise ZooError(f"--max-wait-ms {args.max_wait_ms}: must be at least 0")
        if not 0 <= args.port < 65536:
            raise ZooError(f"--port {args.port}: must be in 0-65535")
        try:
            import uvicorn
        except ImportError:
            raise ZooError("the server needs FastAPI and uvicorn: pip install 'zoo[serve]'") from None
        app = create_app(load_exported(args.model), args.max_sentences, args.max_batch_size, args.max_wait_ms)
    except ZooError as e:
        print(f"zoo.serve: error: {e}", file=sys.stderr)
        return 2
    print(f"zoo.serve: {args.model} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
