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
from zoo.data.batching import BatchSpec, example_lengths
from zoo.data.corpora import load_split, split_paths
from zoo.data.dataset import epoch_plan, fingerprint, within_max_length
from zoo.data.pipeline import TextPipeline
from zoo.data.prepare import PreparedData, ensure_prepared
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
    train_ids: tuple[list, list] | PreparedData  # in memory, or read from prepared shards a batch at a time
    val_ids: tuple[list, list]
    model: nnx.Module
    skipped: int = 0  # training pairs over DataConfig.max_length, left out
    val_skipped: int = 0  # validation pairs over DataConfig.max_length, left out
    data: dict = dataclasses.field(default_factory=dict)  # the training data's fingerprint, for DATA_FILE

    def plan(self, epoch: int) -> list[BatchSpec]:
        """The epoch's batches (:func:`zoo.data.dataset.epoch_plan`)."""
        src_lengths, tgt_lengths = example_lengths(self.train_ids)
        return epoch_plan(src_lengths, tgt_lengths, self.config.train, self.config.data, epoch, jax.device_count())


def prepare(config: Config, workdir, data_dir=None, prepared_dir=None, accept_new_data: bool = False
            ) -> tuple[Run, TextPipeline]:
    """Read the data, make or load the vocabularies and build the model; writes nothing into the workdir.

    With ``prepared_dir`` the training split is read from prepared shards in that cache
    (:func:`zoo.data.prepare.ensure_prepared`, which prepares them there when they are missing,
    stale or damaged, with the workdir's vocabularies when it has them); without, it is tokenized
    into memory. Both give the same batches.

    Resuming a workdir, the training files must be those it was trained on (its
    ``data_fingerprint.json``), unless ``accept_new_data`` (``--accept-new-data``).

    Raises:
      ZooError: bad data files or vocabularies, training files that differ from the workdir's
        (naming them and the flag), a training or validation split that ``--data.max-length``
        empties, a model config the model refuses, a batch (``batch_size``, which also sizes the
        validation batches) that does not split over the devices, or one whose logits alone
        exceed a device's memory.
    """
    workdir = Path(workdir).absolute()
    d, t = config.data, config.train
    if t.batch_size % jax.device_count():
        raise ZooError(f"--train.batch-size {t.batch_size} does not split over {jax.device_count()} devices; "
                       f"use a multiple of {jax.device_count()}")
    started = TextPipeline.saved_in(d, workdir)  # a workdir that was started before: its vocabularies hold
    data = fingerprint(split_paths(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir))
    if (workdir / DATA_FILE).exists() and not accept_new_data:
        try:
            _check_data(workdir / DATA_FILE, data)
        except ZooError:
            load_split(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)  # a damaged file says what is wrong with it first
            raise
    sizes = None
    if started:
        saved = read_config(workdir).model
        sizes = (saved.src_vocab_size, saved.tgt_vocab_size)
    if prepared_dir is not None:
        pipeline_dir = workdir if started else None
        if is_main():  # process 0 prepares; then the others open what it wrote (or prepare on their own disk)
            prepared = ensure_prepared(d, data_dir, prepared_dir, pipeline_dir=pipeline_dir)
        barrier("zoo.prepare_data")
        if not is_main():
            prepared = ensure_prepared(d, data_dir, prepared_dir, pipeline_dir=pipeline_dir)
        pipeline = TextPipeline.load(d, prepared.directory, sizes)
        train_ids, skipped = prepared.within_max_length(d.max_length)
        if not len(train_ids):
            _nothing_left(d, "train", len(prepared), int(prepared.lengths.max(axis=1).min()) + 1 if len(prepared) else 0)
    else:
        train_src, train_tgt = load_split(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)
        if started:
            pipeline = TextPipeline.load(d, workdir, sizes)
        else:
            origin = " and ".join(map(str, split_paths(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)))
            pipeline = TextPipeline.build(d, train_src, train_tgt, origin)
        train_ids, skipped = _within_max_length(pipeline, train_src, train_tgt, d, "train")
    vocab_sizes = {"src_vocab_size": len(pipeline.src_vocab), "tgt_vocab_size": len(pipeline.tgt_vocab)}
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **vocab_sizes))
    try:
        model = build(config.model_name, config.model, seed=t.seed)
    except ValueError as e:
        raise ZooError(f"model {config.model_name!r}: {e}") from None
    val_src, val_tgt = load_split(d.dataset, "val", d.src_lang, d.tgt_lang, data_dir)
    val_ids, val_skipped = _within_max_length(pipeline, val_src, val_tgt, d, "val")
    run = Run(config, workdir, train_ids, val_ids, model, skipped, val_skipped, data)
    try:
        plan = run.plan(0)
    except ValueError as e:
        raise ZooError(f"--train.batch-tokens: {e} (rows are a multiple of 8 and of the {jax.device_count()} "
                       "devices)") from None
    _check_batch_fits(plan, t, config.model.tgt_vocab_size)
    return run, pipeline


def _check_data(path: Path, data: dict) -> None:
    """Refuse training files whose sizes or SHA-256 differ from those recorded in ``path``."""
    saved = read_json(path)
    files = saved.get("files") if isinstance(saved, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in files):
        raise ZooError(f"{path}: not a data fingerprint (a JSON object of files with bytes and sha256); hand-edited?")
    old = [(f.get("bytes"), f["sha256"]) for f in files]
    new = [(f["bytes"], f["sha256"]) for f in data["files"]]
    if old != new:
        changed = [i for i, (o, n) in enumerate(zip(old, new)) if o != n] or list(range(len(new)))
        (old_bytes, old_sha), (new_bytes, new_sha) = old[changed[0]], new[changed[0]]
        raise ZooError(f"{', '.join(data['files'][i]['path'] for i in changed)}: not the training data this workdir was "
                       f"trained on ({old_bytes} bytes, SHA-256 {old_sha[:12]}; now {new_bytes} bytes, {new_sha[:12]}); "
                       f"--accept-new-data resumes on them on purpose, with the workdir's vocabularies")


def _nothing_left(d, split: str, pairs: int, shortest: int) -> None:
    """Raise: ``--data.max-length`` leaves none of the split's ``pairs`` (the shortest of ``shortest``
    tokens with <eos>; the split may be empty)."""
    why = "it is empty" if not pairs else (f"--data.max-length {d.max_length} leaves out all {pairs} pairs (the shortest "
                                          f"has {shortest} tokens with <eos>)")
    raise ZooError(f"{d.dataset} split {split!r}: nothing to {'train on' if split == 'train' else 'validate on'}: {why}")


def _within_max_length(pipeline: TextPipeline, src: list[str], tgt: list[str], d, split: str):
    """The split's token ids within ``d.max_length`` (:func:`within_max_length`) and how many were left out.

    Raises:
      ZooError: none is left (:func:`_nothing_left`).
    """
    src_ids, tgt_ids = pipeline.encode_source(src), pipeline.encode_target(tgt)
    kept, skipped = within_max_length(src_ids, tgt_ids, d.max_length)
    if not kept[0]:
        _nothing_left(d, split, len(src_ids), min((max(len(s), len(t)) + 1 for s, t in zip(src_ids, tgt_ids)), default=0))
    return kept, skipped


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


def write_workdir(run: Run, pipeline: TextPipeline) -> None:
    """Write ``config.json`` and the vocabularies (or SentencePiece model) into a new workdir; in a used one, check that
    its config is this run's (:func:`zoo.checkpoint.write_or_check_config`); record the training
    data's fingerprint (``data_fingerprint.json``, which :func:`prepare` checked or was told to
    accept). Process 0 writes, after every process has read the workdir (:func:`prepare`); every
    process returns once it has."""
    barrier("zoo.prepare")
    if is_main():
        write_or_check_config(run.workdir, run.config)
        if not TextPipeline.saved_in(run.config.data, run.workdir):
            pipeline.save(run.workdir)
        path = run.workdir / DATA_FILE
        if not path.exists() or read_json(path) != run.data:
            write_text(path, json.dumps(run.data, indent=1))
    barrier("zoo.workdir_written")
