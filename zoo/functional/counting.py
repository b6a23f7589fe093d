"""Instrumentation: count what a computation evaluates while it runs.

Inside ``with count_evaluations() as counts:``, functions traced by JAX record their work
through :func:`record` (:class:`zoo.nn.Attention` records every score, :func:`zoo.functional.cells.run_rnn`
and :class:`zoo.nn.RNNLayer` every recurrent step), and ``counts`` (a ``collections.Counter``)
holds the totals once the computation has run. Outside a context :func:`record` adds nothing
to the traced program, and a program that does count adds only to the contexts open while it
runs. Counts are per example: under ``jax.vmap`` a step counts once for the whole batch.

The counts are taken at run time by ``jax.debug.callback``, so a ``lax.scan`` body is
counted once per iteration. Trace inside the context (a function jit-compiled before it
was entered keeps its cached, uninstrumented program).
"""

from collections import Counter
from contextlib import contextmanager

import jax

_ACTIVE: list[Counter] = []


@contextmanager
def count_evaluations():
    """Yield a ``Counter`` of the evaluations recorded while the context is open."""
    counts = Counter()
    _ACTIVE.append(counts)
    try:
        yield counts
    finally:
        jax.effects_barrier()
        _ACTIVE.remove(counts)


def record(name: str, amount: int) -> None:
    """Add ``amount`` (a Python int, known at trace time) to ``name`` each time this point runs."""
    if not _ACTIVE:
        return

    def add():  # counts into the contexts open when the program runs
        for c in _ACTIVE:
            c[name] += amount

    jax.debug.callback(add, ordered=False)
