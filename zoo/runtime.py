"""The loop's runtime: a bounded window of calls dispatched ahead of the device, and stop signals
that every process of a run agrees on."""

import collections
import os
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class DispatchWindow:
    """At most ``limit`` compiled calls queued on the device: after one more is dispatched, wait
    for the oldest. With ``limit`` ≥ 2 the device always has the next call queued, while the host
    never runs further ahead (unbounded, it would dispatch up to the next metrics read, ``log_every``
    steps, which a stop signal would then wait for: 100 s for 50 steps of a 2 s CPU step)."""

    def __init__(self, limit: int = 2):
        self.limit, self.queue = limit, collections.deque()

    def add(self, outputs) -> None:
        """Record a dispatched call's outputs (any pytree of arrays); block on the oldest beyond ``limit``."""
        self.queue.append(outputs)
        if len(self.queue) > self.limit:
            jax.block_until_ready(self.queue.popleft())


class _SignalHandlers:
    """A context manager that routes SIGTERM and SIGINT to ``self._on_signal`` inside its block and
    restores the previous handlers after it. Outside the main thread: no-op."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def _on_signal(self, signum, frame) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class ExitOnSignal(_SignalHandlers):
    """Inside ``with ExitOnSignal():``, SIGTERM and SIGINT exit the process at once with ``128 +
    signum``, one line on stderr and no traceback (Python's default SIGINT raises
    KeyboardInterrupt wherever the main thread is, even inside JAX's callbacks, where it is
    ignored). For the time before the loop, which writes nothing that a kill could leave half
    written (files are renamed into place; the kernel releases the workdir lock);
    :class:`StopSignal` takes the signals over for the loop. Outside the main thread: no-op."""

    def _on_signal(self, signum, frame) -> None:
        os.write(2, f"stopped by {signal.Signals(signum).name} before training\n".encode())
        os._exit(128 + signum)


class StopSignal(_SignalHandlers):
    """Inside ``with StopSignal() as stop:``, SIGTERM and SIGINT set ``stop.signal`` (the
    signal's name) instead of ending the process, so the loop can finish its step and save; a
    second signal exits at once with ``128 + signum`` (what was committed stays intact:
    Orbax commits a step by renaming a finished folder). Outside the main thread: no-op.

    The loop asks :meth:`should_stop` instead of reading ``signal``: with several processes a
    signal may reach one of them only, or each a step apart, and a process that stopped alone
    would leave the others waiting in a collective for ever. They agree at sync points (calls
    every process makes at the same step: the loop's metrics reads and saves), by an all-gather of
    every process's reason to stop (``multihost_utils.process_allgather``); between them the
    last agreement holds. With one process every call is a sync point and costs nothing.
    """

    FAILED = "FAILED"  # a process cannot go on (its metrics log cannot be written): stop and save

    def __init__(self):
        self.signal, self.agreed = None, None

    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None:
            os._exit(128 + signum)
        self.signal = signal.Signals(signum).name

    def should_stop(self, sync: bool = True, failed: bool = False) -> bool:
        """Whether to stop now: the same answer on every process (see the class docstring).

        Args:
          sync: a sync point, reached by every process at the same step (ignored with one process).
          failed: this process cannot go on (a reason to stop, like a signal).

        Sets :attr:`agreed` to the reason every process stops for: a signal's name (SIGTERM before
        SIGINT), else :attr:`FAILED`; None to go on.
        """
        local = self.signal or (self.FAILED if failed else None)
        if jax.process_count() == 1:
            self.agreed = local
        elif sync:
            codes = {None: 0, self.FAILED: 1, "SIGINT": int(signal.SIGINT), "SIGTERM": int(signal.SIGTERM)}
            agreed = int(np.max(multihost_utils.process_allgather(np.int32(codes[local]))))
            self.agreed = {code: name for name, code in codes.items()}[agreed]
        return self.agreed is not None
