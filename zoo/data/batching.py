"""Length-bucketed, padded batches of token ids (NumPy; the loader moves them to devices).

A batch is a dict of arrays with B rows:
  ``src`` int32 (B, S), ``src_length`` int32 (B,), ``tgt_in`` int32 (B, T) = [<bos>, y_1..y_n],
  ``tgt_out`` int32 (B, T) = [y_1..y_n, <eos>], ``tgt_length`` int32 (B,) = n + 1.

Rows past the batch's examples are empty (lengths 0) and carry no loss.

An epoch is a *plan*: a list of :class:`BatchSpec` (which examples, how many rows, what padded
lengths), deterministic in (seed, epoch), made by one of two batchers. The plan fixes every
batch's shape, so the processes of a multi-process run, each padding only its own rows, agree:

* :func:`batch_order` — ``batch_size`` sentences a batch; S and T are the batch's longest source
  and target rounded up to a multiple of ``length_multiple``.
* :func:`token_batches` — a token budget N a batch, as fairseq's ``--max-tokens``: examples are
  bucketed by L = max(source + <eos>, target + <eos>) rounded up to the next of
  :data:`TOKEN_BUCKETS`; a bucket's batches have ``rows = ⌊N / L⌋`` rounded down to a multiple of
  ``row_multiple``, and source and target are both padded to L, so **rows × L ≤ N** counts every
  padded position of the longer side. One program shape per bucket: at most
  ``len(TOKEN_BUCKETS)`` shapes (13 for sentences up to 64 tokens).
"""

from typing import NamedTuple

import numpy as np

from zoo.data.vocab import BOS_ID, EOS_ID, PAD_ID

# Padded lengths of token-budget batches: fine steps where Multi30k's sentences are (median 13
# tokens), coarser above; on Multi30k train 92 % of the padded target positions are real tokens.
# Longer sentences are padded to the next multiple of 32.
TOKEN_BUCKETS = (8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 48, 64)


class BatchSpec(NamedTuple):
    """One batch of a plan: example ``indices``, ``rows`` (≥ len(indices)) and the padded
    source and target lengths ``src_len`` (S) and ``tgt_len`` (T)."""

    indices: np.ndarray
    rows: int
    src_len: int
    tgt_len: int


def round_up(n: int, multiple: int) -> int:
    """The least multiple of ``multiple`` that is ≥ n (and ≥ multiple)."""
    return max(multiple, -(-n // multiple) * multiple)


def padded_lengths(src_lengths, tgt_lengths, length_multiple: int) -> tuple[int, int]:
    """(S, T) of a sentence batch: the longest source + <eos> and the longest target + <bos>/<eos>,
    each rounded up to a multiple of ``length_multiple``."""
    return round_up(int(np.max(src_lengths)) + 1, length_multiple), round_up(int(np.max(tgt_lengths)) + 1, length_multiple)


def bucket_length(n: int) -> int:
    """The padded length of a token-budget batch holding a sentence of ``n`` tokens (see :data:`TOKEN_BUCKETS`)."""
    for b in TOKEN_BUCKETS:
        if n <= b:
            return b
    return round_up(n, 32)


def batch_order(src_lengths, tgt_lengths, batch_size: int, seed: int, epoch: int, length_multiple: int = 8,
                pool: int = 64) -> list[BatchSpec]:
    """Sentence batches of one epoch, deterministic in (seed, epoch).

    The examples are shuffled, cut into pools of ``pool`` batches, each pool sorted by source
    length (so a batch holds similar lengths) and cut into batches; the batches are shuffled.
    Every batch has ``batch_size`` rows, padded to :func:`padded_lengths` of its examples.

    Args:
      src_lengths, tgt_lengths: tokens per sentence, without <eos> (each side gets one).
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(src_lengths))
    src, tgt = np.asarray(src_lengths), np.asarray(tgt_lengths)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = order[start : start + batch_size * pool]
        chunk = chunk[np.argsort(src[chunk], kind="stable")]
        for i in range(0, len(chunk), batch_size):
            indices = chunk[i : i + batch_size]
            batches.append(BatchSpec(indices, batch_size, *padded_lengths(src[indices], tgt[indices], length_multiple)))
    return [batches[i] for i in rng.permutation(len(batches))]


def token_batches(src_lengths, tgt_lengths, batch_tokens: int, seed: int, epoch: int, row_multiple: int = 8) -> list[BatchSpec]:
    """Token-budget batches of one epoch (see the module docstring), deterministic in (seed, epoch).

    Within each bucket the examples are shuffled and cut into full batches; the remainder (fewer
    than a batch) moves up into the next bucket, padded to its length, so only the last bucket
    ends in a partial batch. The batches are then shuffled. Every example is in exactly one batch.

    Args:
      src_lengths, tgt_lengths: tokens per sentence, without <eos> (each side gets one).
      batch_tokens: N, the budget: rows × padded length ≤ N.
      seed, epoch: the shuffles' seed.
      row_multiple: rows are a multiple of this (so the rows split evenly over devices and processes).

    Raises:
      ValueError: N cannot hold ``row_multiple`` rows of the longest example.
    """
    lengths = np.maximum(np.asarray(src_lengths), np.asarray(tgt_lengths)) + 1
    buckets = np.array([bucket_length(int(n)) for n in lengths])
    longest = int(buckets.max(initial=0))
    if batch_tokens < row_multiple * longest:
        raise ValueError(f"batch_tokens={batch_tokens} cannot hold {row_multiple} rows of the longest example "
                         f"(padded to {longest} tokens): use at least {row_multiple * longest}")
    rng = np.random.default_rng([seed, epoch])
    batches, carry = [], np.zeros(0, np.int64)
    for length in np.unique(buckets):
        members = np.concatenate([carry, rng.permutation(np.flatnonzero(buckets == length))])
        rows = batch_tokens // length // row_multiple * row_multiple
        full = len(members) // rows * rows
        batches += [BatchSpec(members[i : i + rows], rows, int(length), int(length)) for i in range(0, full, rows)]
        carry = members[full:]
    if len(carry):
        batches.append(BatchSpec(carry, rows, int(length), int(length)))
    return [batches[i] for i in rng.permutation(len(batches))]


def _shape(spec: BatchSpec) -> tuple[int, int, int]:
    return spec.rows, spec.src_len, spec.tgt_len


def group_by_shape(plan: list[BatchSpec], steps_per_call: int) -> list[BatchSpec]:
    """The plan reordered into runs of up to ``steps_per_call`` batches of one shape (for a
    compiled program that takes that many batches a call): each shape's batches, in plan order,
    are cut into runs of ``steps_per_call`` (the last may be shorter), and the runs are ordered by
    where their first batch stood in the plan, so the plan's shuffle survives. With
    ``steps_per_call=1`` the plan is returned as is.
    """
    if steps_per_call == 1:
        return plan
    runs, open_runs = [], {}
    for spec in plan:
        run = open_runs.get(_shape(spec))
        if run is None or len(run) == steps_per_call:
            run = open_runs[_shape(spec)] = []
            runs.append(run)
        run.append(spec)
    return [spec for run in runs for spec in run]


def chunk_lengths(plan: list[BatchSpec], steps_per_call: int) -> list[int]:
    """How many batches each call takes, from the start of ``plan``: a call takes the next batches
    while they have the first one's shape, at most ``steps_per_call`` of them. On a plan made by
    :func:`group_by_shape` these are its runs, also from any run's first batch (where a resumed
    run starts)."""
    lengths, i = [], 0
    while i < len(plan):
        n = 1
        while n < steps_per_call and i + n < len(plan) and _shape(plan[i + n]) == _shape(plan[i]):
            n += 1
        lengths.append(n)
        i += n
    return lengths


def examples(ids, indices) -> tuple[list, list]:
    """The source and target ids of the examples ``indices`` of ``ids``: either in-memory lists
    ``(src_ids, tgt_ids)``, or a prepared dataset (:class:`zoo.data.prepare.PreparedData`), whose
    ``read`` reads those examples only from disk."""
    if isinstance(ids, tuple):
        return [ids[0][i] for i in indices], [ids[1][i] for i in indices]
    return ids.read(indices)


def example_lengths(ids) -> tuple[np.ndarray, np.ndarray]:
    """Source and target tokens (without <eos>) of every example of ``ids`` (as :func:`examples`)."""
    if isinstance(ids, tuple):
        return np.array([len(s) for s in ids[0]], np.int64), np.array([len(t) for t in ids[1]], np.int64)
    return ids.lengths[:, 0], ids.lengths[:, 1]


def collate(src_ids, tgt_ids, indices, batch_size: int, length_multiple: int = 8,
            lengths: tuple[int, int] | None = None) -> dict:
    """Pad the examples ``indices`` into a batch of ``batch_size`` rows (see the module docstring).

    Sources get <eos>. Source and target are padded to ``lengths`` = (S, T) if given (a plan's),
    else to :func:`padded_lengths` of the examples.
    """
    return collate_examples([src_ids[i] for i in indices], [tgt_ids[i] for i in indices], batch_size, length_multiple,
                            lengths)


def collate_examples(srcs, tgts, batch_size: int, length_multiple: int = 8, lengths: tuple[int, int] | None = None) -> dict:
    """:func:`collate` of the examples themselves: ``srcs`` and ``tgts`` are their ids (lists or int arrays)."""
    S, T = lengths or padded_lengths([len(s) for s in srcs], [len(t) for t in tgts], length_multiple)
    batch = {
        "src": np.full((batch_size, S), PAD_ID, np.int32),
        "src_length": np.zeros((batch_size,), np.int32),
        "tgt_in": np.full((batch_size, T), PAD_ID, np.int32),
        "tgt_out": np.full((batch_size, T), PAD_ID, np.int32),
        "tgt_length": np.zeros((batch_size,), np.int32),
    }
    for row, (s, t) in enumerate(zip(srcs, tgts)):
        n, m = len(s), len(t)
        batch["src"][row, :n] = s
        batch["src"][row, n] = EOS_ID
        batch["src_length"][row] = n + 1
        batch["tgt_in"][row, 0] = BOS_ID
        batch["tgt_in"][row, 1 : m + 1] = t
        batch["tgt_out"][row, :m] = t
        batch["tgt_out"][row, m] = EOS_ID
        batch["tgt_length"][row] = m + 1
    return batch
