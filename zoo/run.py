"""A run before its loop: the data read, the vocabularies made or loaded, the model built
(:func:`prepare`, which writes nothing), and the workdir's config and vocabularies written
(:func:`write_workdir`)."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import jax
from flax import nnx

from zoo.checkpoint import read_config, write_or_check_config
from zoo.config import Config
from zoo.data.batching import BatchSpec, example_lengths
from zoo.data.corpora import load_split, split_paths
from zoo.data.dataset import epoch_plan, within_max_length
from zoo.data.pipeline import TextPipeline
from zoo.data.prepare import PreparedData, ensure_prepared
from zoo.distributed import barrier, is_main
from zoo.errors import ZooError
from zoo.models import build


@dataclass
class Run:
    """What a run's loop needs, fixed for the run (made by :func:`prepare`)."""

    config: Config
    workdir: Path
    train_ids: tuple[list, list] | PreparedData  # in memory, or read from prepared shards a batch at a time
    val_ids: tuple[list, list]
    model: nnx.Module
    skipped: int = 0  # training pairs over DataConfig.max_length, left out

    def plan(self, epoch: int) -> list[BatchSpec]:
        """The epoch's batches (:func:`zoo.data.dataset.epoch_plan`)."""
        src_lengths, tgt_lengths = example_lengths(self.train_ids)
        return epoch_plan(src_lengths, tgt_lengths, self.config.train, self.config.data, epoch, jax.device_count())


def prepare(config: Config, workdir, data_dir=None, prepared_dir=None) -> tuple[Run, TextPipeline]:
    """Read the data, make or load the vocabularies and build the model; writes nothing into the workdir.

    With ``prepared_dir`` the training split is read from prepared shards in that cache
    (:func:`zoo.data.prepare.ensure_prepared`, which prepares them there when they are missing,
    stale or damaged, with the workdir's vocabularies when it has them); without, it is tokenized
    into memory. Both give the same batches.

    Raises:
      ZooError: bad data files or vocabularies, a model config the model refuses, or a batch
        (``batch_size``, which also sizes the validation batches) that does not split over the
        devices.
    """
    workdir = Path(workdir).absolute()
    d, t = config.data, config.train
    if t.batch_size % jax.device_count():
        raise ZooError(f"--train.batch-size {t.batch_size} does not split over {jax.device_count()} devices; "
                       f"use a multiple of {jax.device_count()}")
    started = TextPipeline.saved_in(d, workdir)  # a workdir that was started before: its vocabularies hold
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
    else:
        train_src, train_tgt = load_split(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)
        if started:
            pipeline = TextPipeline.load(d, workdir, sizes)
        else:
            origin = " and ".join(map(str, split_paths(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)))
            pipeline = TextPipeline.build(d, train_src, train_tgt, origin)
        train_ids, skipped = within_max_length(pipeline.encode_source(train_src), pipeline.encode_target(train_tgt),
                                               d.max_length)
    vocab_sizes = {"src_vocab_size": len(pipeline.src_vocab), "tgt_vocab_size": len(pipeline.tgt_vocab)}
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **vocab_sizes))
    try:
        model = build(config.model_name, config.model, seed=t.seed)
    except ValueError as e:
        raise ZooError(f"model {config.model_name!r}: {e}") from None
    val_src, val_tgt = load_split(d.dataset, "val", d.src_lang, d.tgt_lang, data_dir)
    val_ids, _ = within_max_length(pipeline.encode_source(val_src), pipeline.encode_target(val_tgt), d.max_length)
    run = Run(config, workdir, train_ids, val_ids, model, skipped)
    if t.batch_tokens is not None:
        try:
            run.plan(0)
        except ValueError as e:
            raise ZooError(f"--train.batch-tokens: {e} (rows are a multiple of 8 and of the {jax.device_count()} "
                           "devices)") from None
    return run, pipeline


def write_workdir(run: Run, pipeline: TextPipeline) -> None:
    """Write ``config.json`` and the vocabularies (or SentencePiece model) into a new workdir; in a used one, check that
    its config is this run's (:func:`zoo.checkpoint.write_or_check_config`). Process 0 writes,
    after every process has read the workdir (:func:`prepare`)."""
    barrier("zoo.prepare")
    if is_main():
        write_or_check_config(run.workdir, run.config)
        if not TextPipeline.saved_in(run.config.data, run.workdir):
            pipeline.save(run.workdir)
