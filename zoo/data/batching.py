"""Length-bucketed, padded batches of token ids (NumPy; the training step moves them to devices).

A batch is a dict of arrays with a fixed batch size B:
  ``src`` int32 (B, S), ``src_length`` int32 (B,), ``tgt_in`` int32 (B, T) = [<bos>, y_1..y_n],
  ``tgt_out`` int32 (B, T) = [y_1..y_n, <eos>], ``tgt_length`` int32 (B,) = n + 1.
S and T are rounded up to a multiple of ``length_multiple`` so that few shapes get compiled.
A short last batch is filled with empty rows (lengths 0), which carry no loss.
"""

import numpy as np

from zoo.data.vocab import BOS_ID, EOS_ID, PAD_ID


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def batch_order(src_lengths, batch_size: int, seed: int, epoch: int, pool: int = 64) -> list[np.ndarray]:
    """Example indices of each batch of one epoch, deterministic in (seed, epoch).

    The examples are shuffled, cut into pools of ``pool`` batches, each pool sorted by source
    length (so a batch holds similar lengths) and cut into batches; the batches are shuffled.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(src_lengths))
    lengths = np.asarray(src_lengths)
    batches = []
    for start in range(0, len(order), batch_size * pool):
        chunk = order[start : start + batch_size * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(src_ids: list[list[int]], tgt_ids: list[list[int]], indices, batch_size: int, length_multiple: int = 8) -> dict:
    """Pad the examples ``indices`` into one batch (see the module docstring). Sources get <eos>."""
    srcs = [src_ids[i] + [EOS_ID] for i in indices]
    tgts = [tgt_ids[i] for i in indices]
    S = _round_up(max(len(s) for s in srcs), length_multiple)
    T = _round_up(max(len(t) + 1 for t in tgts), length_multiple)
    batch = {
        "src": np.full((batch_size, S), PAD_ID, np.int32),
        "src_length": np.zeros((batch_size,), np.int32),
        "tgt_in": np.full((batch_size, T), PAD_ID, np.int32),
        "tgt_out": np.full((batch_size, T), PAD_ID, np.int32),
        "tgt_length": np.zeros((batch_size,), np.int32),
    }
    for row, (s, t) in enumerate(zip(srcs, tgts)):
        batch["src"][row, : len(s)] = s
        batch["src_length"][row] = len(s)
        batch["tgt_in"][row, : len(t) + 1] = [BOS_ID, *t]
        batch["tgt_out"][row, : len(t) + 1] = [*t, EOS_ID]
        batch["tgt_length"][row] = len(t) + 1
    return batch
