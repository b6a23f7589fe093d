"""The training loop's metrics log, ``metrics.jsonl``, and its one device-to-host read."""

import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from zoo.errors import ZooError
from zoo.io import write_text


def read_metrics(pending: list[dict]) -> list[dict]:
    """The one device-to-host read of the loop: every pending step's metrics at once, stacked on
    the device first (reading each scalar on its own cost ~0.3 ms apiece on a CPU)."""
    stacked = jax.device_get({name: jnp.stack([m[name] for m in pending]) for name in pending[0]})
    return [{name: values[i] for name, values in stacked.items()} for i in range(len(pending))]


class MetricsLog:
    """``metrics.jsonl``: per step ``step, epoch, loss, grad_norm, tokens``; per logged interval
    ``event="interval"`` with target tokens/s, step time, achieved FLOP/s and MFU; validations
    and run events (``start``; ``end`` with the run's ``wall_s``, one per uninterrupted segment of
    a resumed run). Step metrics wait on the device (:meth:`add`) until :meth:`flush`.

    The file is only ever appended to. On resume, records past the checkpoint's step are dropped
    (:attr:`dropped` says which steps) and a last line cut short by a crash is dropped too: the kept
    lines replace the file through a temporary file and an atomic rename, never in place, so a kill
    at any moment leaves the whole history. Only a ``writer`` reads and writes the file; every
    process checks the metrics.

    Raises:
      ZooError: a damaged line before the last (not UTF-8 JSON, or not a JSON object with an
        integer step), naming the file and line; a folder in its place; a file that cannot be
        read or written.
    """

    def __init__(self, path: Path, resume_step: int, bar, peak: float, writer: bool = True):
        self.path, self.bar, self.peak = path, bar, peak
        self.dropped = None  # (first, last) step of the records past ``resume_step`` that were dropped
        self.error = None  # why writing failed (see write)
        if writer and path.exists():
            self._repair(resume_step)
        try:
            self.file = path.open("a", encoding="utf-8") if writer else open(os.devnull, "w")
        except OSError as e:
            raise ZooError(f"{path}: cannot open for appending ({e.strerror or e})") from None
        self.pending, self.interval_flops, self.clock = [], 0.0, time.perf_counter()

    def _repair(self, resume_step: int) -> None:
        """Keep the records up to ``resume_step``: the file untouched if that is all of it, else the
        kept lines replace it through a temporary file and an atomic rename
        (:func:`zoo.errors.write_text`), so a kill at any moment leaves the old file or the new one."""
        try:
            data = self.path.read_bytes()
        except IsADirectoryError:
            raise ZooError(f"{self.path}: a folder, not the metrics log; move it away") from None
        except OSError as e:
            raise ZooError(f"{self.path}: cannot read ({e.strerror or e})") from None
        lines = data.splitlines()
        kept, dropped = [], []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                if number == len(lines):
                    break  # the write of the last line was cut short
                raise ZooError(f"{self.path}, line {number}: not JSON text; fix or remove that line") from None
            step = record.get("step", 0) if isinstance(record, dict) else None
            if not isinstance(step, int):
                raise ZooError(f"{self.path}, line {number}: not a metrics record (a JSON object with an integer "
                               f"step); fix or remove that line")
            (kept if step <= resume_step else dropped).append((line.decode("utf-8"), step))
        if len(kept) == len(lines) and data.endswith(b"\n") or not data:
            return  # nothing to repair: append to it
        if dropped:
            self.dropped = (min(s for _, s in dropped), max(s for _, s in dropped))
        write_text(self.path, "".join(line + "\n" for line, _ in kept))

    def write(self, **record) -> None:
        """Append one record (a line of JSON). When that fails (a full disk), :attr:`error` says so,
        naming the file and the record's step, and this and every later record are skipped: the
        loop stops and saves (a line cut short is dropped on resume)."""
        if self.error:
            return
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            self.error = f"{self.path}: cannot write ({e.strerror or e}) from step {record.get('step')} on"

    def add(self, step: int, epoch: int, metrics: dict, flops: float, steps: int = 1) -> None:
        """Keep the metrics (device arrays, not read) of the ``steps`` steps up to ``step`` and
        their FLOPs (``flops`` a step): scalars for one step, or a multi-step call's (k,) arrays
        of which the first ``steps`` are real (:func:`make_train_step`)."""
        self.pending.append((step, epoch, metrics, steps))
        self.interval_flops += flops * steps

    def restart_clock(self) -> None:
        """Start the next interval's clock now (after a save or a validation, which are not steps)."""
        self.clock = time.perf_counter()

    def flush(self) -> None:
        """Read the pending metrics (one transfer), write them and the interval's throughput.

        Raises:
          ZooError: a non-finite loss or gradient norm, naming the first such step.
        """
        if not self.pending:
            return
        values = read_metrics([m for _, _, m, _ in self.pending])
        seconds = time.perf_counter() - self.clock
        per_step = [(last - n + 1 + i, epoch, {name: np.atleast_1d(v)[i] for name, v in m.items()})
                    for (last, epoch, _, n), m in zip(self.pending, values) for i in range(n)]
        tokens = 0.0
        for step, epoch, m in per_step:
            for name in ("loss", "grad_norm"):
                if not math.isfinite(m[name]):
                    raise ZooError(f"step {step}: {name} is {float(m[name])}; stopping without saving (lower "
                                   f"--train.learning-rate or --train.clip-norm; the last checkpoint is kept)")
            tokens += float(m["tokens"])
            self.write(step=step, epoch=epoch, loss=float(m["loss"]), grad_norm=float(m["grad_norm"]), tokens=int(m["tokens"]))
        steps, last = len(per_step), per_step[-1][2]
        interval = {"step": self.pending[-1][0], "steps": steps, "tokens_per_s": tokens / seconds,
                    "step_time_s": seconds / steps, "flops_per_s": self.interval_flops / seconds,
                    "mfu": self.interval_flops / seconds / self.peak}
        self.write(event="interval", **interval)
        self.bar.update(steps)
        self.bar.set_postfix(loss=f"{float(last['loss']):.3f}", tok_s=f"{interval['tokens_per_s']:.0f}",
                             mfu=f"{interval['mfu']:.1%}")
        self.pending, self.interval_flops = [], 0.0
        self.restart_clock()

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # a failed write was reported when it happened (:meth:`write`); what was flushed stays
