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

    On resume, lines past the checkpoint's step are dropped; a last line cut short by a crash
    is dropped too. Only a ``writer`` writes the file; every process reads and checks the metrics.

    Raises:
      ZooError: a damaged line before the last (naming the file and line).
    """

    def __init__(self, path: Path, resume_step: int, bar, peak: float, writer: bool = True):
        self.path, self.bar, self.peak = path, bar, peak
        if writer and path.exists():
            path.write_text("".join(line + "\n" for line in self._kept_lines(resume_step)))
        self.file = path.open("a") if writer else open(os.devnull, "w")
        self.pending, self.interval_flops, self.clock = [], 0.0, time.perf_counter()

    def _kept_lines(self, resume_step: int) -> list[str]:
        lines = self.path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # the write of the last line was cut short
                raise ZooError(f"{self.path}, line {number}: not JSON; fix or remove that line") from None
            if record.get("step", 0) <= resume_step:
                kept.append(line)
        return kept

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

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
        self.file.close()
