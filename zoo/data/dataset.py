"""A run's training data: its fingerprint, the pairs within the length limit, and each epoch's batch plan."""

import hashlib
import math
import os

from zoo.config import DataConfig, TrainConfig
from zoo.data.batching import BatchSpec, batch_order, group_by_shape, token_batches


def fingerprint(paths) -> dict:
    """``{"files": [{"path", "bytes", "sha256"}, ...]}``: what a run's training files were, to tell
    on resuming whether they changed (the SHA-256 of each file's bytes, in ``paths``' order).

    Examples:
      >>> import pathlib, tempfile
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "train.de"
      >>> _ = path.write_bytes(b"Ein Hund. ")
      >>> fingerprint([path])["files"][0]["bytes"]
      10
    """
    files = []
    for path in paths:
        with open(path, "rb") as f:
            files.append({"path": str(path), "bytes": os.fstat(f.fileno()).st_size,
                          "sha256": hashlib.file_digest(f, "sha256").hexdigest()})
    return {"files": files}


def within_max_length(src_ids: list, tgt_ids: list, max_length: int) -> tuple[tuple[list, list], int]:
    """The pairs whose source and target, each with <eos>, have at most ``max_length`` tokens, and
    how many were left out."""
    kept = [(s, t) for s, t in zip(src_ids, tgt_ids) if max(len(s), len(t)) + 1 <= max_length]
    return ([s for s, _ in kept], [t for _, t in kept]), len(src_ids) - len(kept)


def epoch_plan(src_lengths: list[int], tgt_lengths: list[int], train: TrainConfig, data: DataConfig, epoch: int,
               num_devices: int) -> list[BatchSpec]:
    """The batches of ``epoch``, deterministic in (``train.seed``, ``epoch``): token-budget batches
    (:func:`~zoo.data.batching.token_batches`, rows a multiple of 8 and of ``num_devices``) if
    ``train.batch_tokens`` is set, else sentence batches (:func:`~zoo.data.batching.batch_order`);
    grouped into runs of one shape for ``train.steps_per_call`` > 1.

    Args:
      src_lengths, tgt_lengths: token counts of every training pair (without <eos>).

    Raises:
      ValueError: a token budget too small for the longest pair's rows.
    """
    if train.batch_tokens is not None:
        plan = token_batches(src_lengths, tgt_lengths, train.batch_tokens, train.seed, epoch,
                             row_multiple=math.lcm(8, num_devices))
    else:
        plan = batch_order(src_lengths, tgt_lengths, train.batch_size, train.seed, epoch, data.length_multiple)
    return group_by_shape(plan, train.steps_per_call)
