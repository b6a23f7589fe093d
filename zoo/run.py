"""A run before its loop: the data read (and, resuming, checked against the workdir's
fingerprint of its training data), the vocabularies made or loaded, the model built
(:func:`prepare`, which writes nothing), and the workdir's config, vocabularies and data
fingerprint written (:func:`write_workdir`)."""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import jax
from flax import nnx

from zoo.checkpoint import read_config, write_or_check_config
from zoo.config import Config
from zoo.data.batching import BatchSpec
from zoo.data.corpora import load_split, split_paths
from zoo.data.dataset import epoch_plan, fingerprint, within_max_length
from zoo.data.pipeline import TextPipeline
from zoo.distributed import barrier, is_main
from zoo.errors import ZooError
from zoo.io import read_json, write_text
from zoo.models import build

DATA_FILE = "data_fingerprint.json"  # the workdir's record of its training data (zoo.data.dataset.fingerprint)


@dataclass
class Run:
    """What a run's loop needs, fixed for the run (made by :func:`prepare`)."""

    config: Config
    workdir: Path
    train_ids: tuple[list, list]
    val_ids: tuple[list, list]
    model: nnx.Module
    skipped: int = 0  # training pairs over DataConfig.max_length, left out
    val_skipped: int = 0  # validation pairs over DataConfig.max_length, left out
    data: dict = dataclasses.field(default_factory=dict)  # the training data's fingerprint, for DATA_FILE

    def plan(self, epoch: int) -> list[BatchSpec]:
        """The epoch's batches (:func:`zoo.data.dataset.epoch_plan`)."""
        src_lengths, tgt_lengths = ([len(s) for s in ids] for ids in self.train_ids)
        return epoch_plan(src_lengths, tgt_lengths, self.config.train, self.config.data, epoch, jax.device_count())


def prepare(config: Config, workdir, data_dir=None, accept_new_data: bool = False) -> tuple[Run, TextPipeline]:
    """Read the data, make or load the vocabularies and build the model; writes nothing.

    Resuming a workdir, the training data must be the data it was trained on (its
    ``data_fingerprint.json``), unless ``accept_new_data`` (``--accept-new-data``).

    Raises:
      ZooError: bad data files or vocabularies, a batch whose logits alone exceed a device's memory,
        training data that differ from the workdir's
        (naming the files and the flag), a training or validation split that
        ``--data.max-length`` empties, a model config the model refuses, or a batch
        (``batch_size``, which also sizes the validation batches) that does not split over the
        devices.
    """
    workdir = Path(workdir).absolute()
    d, t = config.data, config.train
    if t.batch_size % jax.device_count():
        raise ZooError(f"--train.batch-size {t.batch_size} does not split over {jax.device_count()} devices; "
                       f"use a multiple of {jax.device_count()}")
    train_src, train_tgt = load_split(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)
    val_src, val_tgt = load_split(d.dataset, "val", d.src_lang, d.tgt_lang, data_dir)
    data = {**fingerprint(train_src, train_tgt), "files": [str(p) for p in split_paths(d.dataset, "train", d.src_lang,
                                                                                       d.tgt_lang, data_dir)]}
    if (workdir / DATA_FILE).exists() and not accept_new_data:
        _check_data(workdir / DATA_FILE, data)
    if (workdir / TextPipeline.FILES[0]).exists():  # a workdir that was started before
        saved = read_config(workdir).model
        pipeline = TextPipeline.load(d, workdir, (saved.src_vocab_size, saved.tgt_vocab_size))
    else:
        pipeline = TextPipeline.build(d, train_src, train_tgt)
    vocab_sizes = {"src_vocab_size": len(pipeline.src_vocab), "tgt_vocab_size": len(pipeline.tgt_vocab)}
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **vocab_sizes))
    try:
        model = build(config.model_name, config.model, seed=t.seed)
    except ValueError as e:
        raise ZooError(f"model {config.model_name!r}: {e}") from None
    train_ids, skipped = _within_max_length(pipeline, train_src, train_tgt, d, "train")
    val_ids, val_skipped = _within_max_length(pipeline, val_src, val_tgt, d, "val")
    run = Run(config, workdir, train_ids, val_ids, model, skipped, val_skipped, data)
    try:
        plan = run.plan(0)
    except ValueError as e:
        raise ZooError(f"--train.batch-tokens: {e} (rows are a multiple of 8 and of the {jax.device_count()} "
                       "devices)") from None
    _check_batch_fits(plan, t, config.model.tgt_vocab_size)
    return run, pipeline


def _check_batch_fits(plan: list[BatchSpec], t, tgt_vocab_size: int) -> None:
    """Refuse batches whose logits alone, float32 (B, T, V) split over the devices, exceed one device's
    memory (HBM; on a CPU the host's memory shared by its devices): a lower bound of what the step
    needs, which catches a mistyped batch size before anything is written instead of an
    allocation failure after."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / jax.local_device_count()
    largest = max(plan, key=lambda spec: spec.rows * spec.tgt_len)
    rows = -(-largest.rows // jax.device_count())  # a device's share of the rows
    logits = rows * largest.tgt_len * tgt_vocab_size * 4
    if logits > limit:
        flag = "--train.batch-tokens" if t.batch_tokens is not None else "--train.batch-size"
        raise ZooError(f"{flag} {t.batch_tokens or t.batch_size}: a batch's logits alone take {logits / 2**30:.1f} GiB "
                       f"a device ({rows} rows × {largest.tgt_len} target positions × {tgt_vocab_size} target tokens × "
                       f"4 bytes), over the {limit / 2**30:.1f} GiB of {device.platform.upper()} {device.id}'s memory")


def _check_data(path: Path, data: dict) -> None:
    """Refuse training data whose fingerprint differs from the one recorded in ``path``."""
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("sha256"), str):
        raise ZooError(f"{path}: not a data fingerprint (a JSON object with pairs and sha256); hand-edited?")
    if saved["sha256"] != data["sha256"]:
        raise ZooError(f"{', '.join(data['files'])}: not the training data this workdir was trained on "
                       f"({saved.get('pairs')} pairs, SHA-256 {saved['sha256'][:12]}; now {data['pairs']} pairs, "
                       f"{data['sha256'][:12]}); --accept-new-data resumes on them on purpose, with the workdir's "
                       f"vocabularies")


def _within_max_length(pipeline: TextPipeline, src: list[str], tgt: list[str], d, split: str):
    """The split's token ids within ``d.max_length`` (:func:`within_max_length`) and how many were left out.

    Raises:
      ZooError: none is left: every pair is longer than ``--data.max-length`` (or the split is empty).
    """
    src_ids, tgt_ids = pipeline.encode_source(src), pipeline.encode_target(tgt)
    kept, skipped = within_max_length(src_ids, tgt_ids, d.max_length)
    if not kept[0]:
        shortest = min((max(len(s), len(t)) + 1 for s, t in zip(src_ids, tgt_ids)), default=None)
        why = "it is empty" if shortest is None else (f"--data.max-length {d.max_length} leaves out all {len(src_ids)} "
                                                       f"pairs (the shortest has {shortest} tokens with <eos>)")
        raise ZooError(f"{d.dataset} split {split!r}: nothing to {'train on' if split == 'train' else 'validate on'}: "
                       f"{why}")
    return kept, skipped


def write_workdir(run: Run, pipeline: TextPipeline) -> None:
    """Write ``config.json`` and the vocabularies into a new workdir; in a used one, check that
    its config is this run's (:func:`zoo.checkpoint.write_or_check_config`); record the training
    data's fingerprint (``data_fingerprint.json``, which :func:`prepare` checked or was told to
    accept). Process 0 writes, after every process has read the workdir (:func:`prepare`); every
    process returns once it has."""
    barrier("zoo.prepare")
    if is_main():
        write_or_check_config(run.workdir, run.config)
        if not (run.workdir / TextPipeline.FILES[0]).exists():
            pipeline.save(run.workdir)
        path = run.workdir / DATA_FILE
        if not path.exists() or read_json(path) != run.data:
            write_text(path, json.dumps(run.data, indent=1))
    barrier("zoo.workdir_written")
