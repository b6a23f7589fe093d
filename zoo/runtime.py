"""The loop's runtime: a bounded window of calls dispatched ahead of the device, and stop signals."""

import collections
import os
import signal
import threading

import jax


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


class StopSignal:
    """Inside ``with StopSignal() as stop:``, SIGTERM and SIGINT set ``stop.signal`` (the
    signal's name) instead of ending the process, so the loop can finish its step and save; a
    second signal exits at once with ``128 + signum`` (what was committed stays intact:
    Orbax commits a step by renaming a finished folder). Outside the main thread: no-op."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal, self._previous = None, {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            os._exit(128 + signum)
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
