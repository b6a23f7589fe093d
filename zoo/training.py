"""The optimizer, the jit-compiled training step, and the training loop.

The step is one pure function ``train_step(state, batch, key) -> (state, metrics)`` compiled
once per batch shape with ``jax.jit(..., donate_argnums=0)``. The model works on one example;
the per-example loss is ``jax.vmap``-ped over the batch. A batch sharded over a ``"data"``
mesh axis (see :func:`zoo.distributed.data_parallel`) runs data-parallel with the same numbers, on the devices
of one process or of several (:mod:`zoo.distributed`); with ``fsdp`` the parameters and
optimizer state are sharded over that axis too (:func:`zoo.distributed.state_shardings`).

The loop never waits on the device between steps: the dropout key of step s is derived inside
the compiled step from the step counter, batches are collated and placed on the devices ahead
by the loader (:mod:`zoo.data.loader`), and the metrics stay on the device until they are read,
all at once, every ``log_every`` steps (and before a checkpoint, at the end of an epoch and on
stopping). The host stays at most two compiled calls ahead of the device
(:class:`zoo.runtime.DispatchWindow`), so SIGTERM and SIGINT stop the loop within two calls of the signal (two
steps, 2k with ``steps_per_call`` k), with
a resumable checkpoint at the last step; a non-finite loss or gradient norm stops it before anything is saved.
"""

import contextlib
import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from zoo.checkpoint import CheckpointStore, WorkdirLock
from zoo.compilation import CompileCounter
from zoo.config import Config, TrainConfig
from zoo.data.batching import chunk_lengths, example_lengths
from zoo.data.loader import device_batches, real_token_share
from zoo.data.pipeline import TextPipeline
from zoo.distributed import data_parallel, is_main, state_shardings
from zoo.errors import ZooError
from zoo.evaluation import dataset_nll, make_eval_nll, perplexity
from zoo.flops import jaxpr_flops, peak_flops
from zoo.loss import batch_nll
from zoo.metrics_log import MetricsLog
from zoo.run import Run, prepare, write_workdir
from zoo.runtime import DispatchWindow, ExitOnSignal, StopSignal


def learning_rate_schedule(train: TrainConfig) -> optax.Schedule:
    """The learning rate per step: constant, or with ``warmup_steps`` = w > 0 a linear warmup to
    the peak η followed by inverse-square-root decay (Vaswani et al. 2017, eq. 3, with the peak
    η as a parameter instead of d_model^−0.5 · w^−0.5):

        lr(s) = η · s / w  for s < w,    η · √(w / s)  after.
    """
    peak, warmup = train.learning_rate, train.warmup_steps
    if warmup <= 0:
        return optax.constant_schedule(peak)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 lambda count: peak * jnp.sqrt(warmup / (jnp.maximum(count, 0) + warmup))], [warmup])


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) on :func:`learning_rate_schedule`, after clipping the global gradient norm."""
    return optax.chain(optax.clip_by_global_norm(train.clip_norm), optax.adam(learning_rate_schedule(train)))


def init_state(model: nnx.Module, tx: optax.GradientTransformation):
    """``(graphdef, state)``: the model's static structure and the training state pytree."""
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    return graphdef, {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def make_train_step(graphdef, tx, teacher_forcing: float = 1.0, label_smoothing: float = 0.0, state_sharding=None,
                    steps_per_call: int = 1):
    """The compiled ``train_step(state, batch, key) -> (state, metrics)``; ``state`` is donated.

    ``state_sharding``: a pytree of shardings (:func:`zoo.distributed.state_shardings`) that the new state keeps,
    with replicated metrics; None: wherever JAX places them.

    ``key`` is the run's PRNG key; the step's dropout key is ``fold_in(key, state["step"])``
    (:func:`step_key`), derived on the device, so the same key serves every step.
    The loss is the mean token-level cross-entropy over the batch's real target tokens (against
    targets smoothed by ``label_smoothing``).
    Metrics: ``loss``, ``tokens`` (real target tokens), ``grad_norm`` (before clipping).

    ``steps_per_call`` = k > 1 (as Keras' ``steps_per_execution``): one call runs up to k steps,
    a ``lax.scan`` over a batch stacked on a leading slot axis, (k, B, ...), with a boolean
    ``active`` (k,) whose False slots leave the state as it is (``lax.cond``); metrics are (k,)
    (zero in inactive slots). One dispatch and one loader hand-off per k steps: for models whose
    step is short against the host's work per step.
    """

    def train_step(state, batch, key):
        def loss_fn(params):
            nll, n = batch_nll(graphdef, params, batch, step_key(key, state["step"]), teacher_forcing, label_smoothing)
            return nll / jnp.maximum(n, 1), n

        (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss, "tokens": n, "grad_norm": optax.tree.norm(grads)}

    def train_steps(state, batches, key):
        def slot(state, batch):
            active = batch.pop("active")
            zeros = lambda a: jnp.zeros(a.shape, a.dtype)
            skip = lambda s: (s, jax.tree.map(zeros, jax.eval_shape(train_step, s, batch, key)[1]))
            return jax.lax.cond(active, lambda s: train_step(s, batch, key), skip, state)

        return jax.lax.scan(slot, state, batches)

    step = train_step if steps_per_call == 1 else train_steps
    if state_sharding is None:
        return jax.jit(step, donate_argnums=0)
    replicated = NamedSharding(jax.tree.leaves(state_sharding)[0].mesh, P())
    return jax.jit(step, donate_argnums=0, out_shardings=(state_sharding, replicated))


def step_key(key, step):
    """The dropout key of a global step, fold_in(key, step): resuming with the saved key replays it."""
    return jax.random.fold_in(key, step)


@dataclass
class Position:
    """Where a run is: global step, epoch, batch within the epoch's plan, best validation loss."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best_val_loss: float = math.inf


class Trainer:
    """The loop of one run: state, position, and the pieces that act on them."""

    def __init__(self, run: Run, progress: bool):
        self.run, t = run, run.config.train
        self.tx = make_optimizer(t)
        self.graphdef, state = init_state(run.model, self.tx)
        self.batch_sharding, replicated = data_parallel()
        # training batches; with steps_per_call > 1 a slot axis comes before the batch axis
        self.train_sharding = self.batch_sharding if t.steps_per_call == 1 else NamedSharding(replicated.mesh, P(None, "data"))
        state_sharding = state_shardings(state, replicated.mesh, t.fsdp)
        self.store = CheckpointStore(run.workdir, depends_on=TextPipeline.files(run.config.data))
        self.pos, key_data = Position(), jax.random.key_data(jax.random.key(t.seed))
        if self.store.latest_step() is not None:
            target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sharding)
            state, meta = self.store.restore(target)
            self.pos = Position(int(state["step"]), meta["epoch"], meta["batch"], self.store.best_val_loss)
            key_data = np.asarray(meta["rng_key"], np.uint32)
        self.state = jax.device_put(state, state_sharding)
        # key arrays cannot be placed on other processes' devices: their data can
        self.key = jax.random.wrap_key_data(jax.device_put(key_data, replicated))
        self.train_step = make_train_step(self.graphdef, self.tx, t.teacher_forcing, t.label_smoothing, state_sharding,
                                          t.steps_per_call)
        self.eval_nll = make_eval_nll(self.graphdef)
        first_plan = run.plan(0)  # every epoch has as many batches; only their order changes
        self.steps_per_epoch = len(first_plan)
        self.total_steps = min(t.epochs * self.steps_per_epoch, t.max_steps or math.inf)
        self.main = is_main()
        self.bar = tqdm(total=self.total_steps, initial=self.pos.step, disable=not (progress and self.main), unit="step",
                        dynamic_ncols=True)
        peak = jax.device_count() * peak_flops(jax.devices()[0], getattr(run.config.model, "dtype", "float32"))
        self.log = MetricsLog(run.workdir / "metrics.jsonl", self.pos.step, self.bar, peak, writer=self.main)
        self.flops_by_shape: dict = {}
        if self.pos.step == 0:
            self.log.write(event="start", step=0, num_params=int(sum(x.size for x in jax.tree.leaves(state["params"]))),
                           devices=str(jax.devices()), steps_per_epoch=self.steps_per_epoch,
                           real_token_share=real_token_share(first_plan, example_lengths(run.train_ids)[1]),
                           skipped_long_pairs=run.skipped, skipped_long_val_pairs=run.val_skipped)
        if self.log.dropped:
            first, last = self.log.dropped
            self.print(f"{self.log.path}: dropped the records of steps {first}-{last}, past step {self.pos.step} that "
                       f"this run resumes from ({'the newest intact checkpoint' if self.pos.step else 'no checkpoint left'})")
        if run.skipped or run.val_skipped:
            self.print(f"left out {run.skipped} training and {run.val_skipped} validation pairs longer than "
                       f"{run.config.data.max_length} tokens (--data.max-length)")

    def save(self, val_loss: float | None = None) -> None:
        """A resumable checkpoint at the current position (after reading the pending metrics)."""
        self.log.flush()
        p = self.pos
        meta = {"epoch": p.epoch, "batch": p.batch, "best_val_loss": p.best_val_loss,
                "rng_key": jax.random.key_data(self.key).tolist()}
        self.store.save(p.step, self.state, meta, val_loss=val_loss)
        self.log.restart_clock()

    def print(self, line: str) -> None:
        """A line on the console, from process 0 only."""
        if self.main:
            self.bar.write(line)

    def step_flops(self, batch: dict) -> float:
        """Matrix-product FLOPs of one training step on a batch of this shape (:func:`zoo.flops.jaxpr_flops`;
        a call of ``steps_per_call`` slots counts each slot's step once)."""
        shape = batch["src"].shape + batch["tgt_in"].shape
        if shape not in self.flops_by_shape:
            calls = self.run.config.train.steps_per_call
            self.flops_by_shape[shape] = jaxpr_flops(self.train_step.trace(self.state, batch, self.key).jaxpr) / calls
        return self.flops_by_shape[shape]

    def run_epoch(self, stop: StopSignal) -> bool:
        """Train from the current position to the end of the epoch; False if stopped before it
        (``max_steps`` or a signal). A call of the compiled step takes the next
        :func:`~zoo.data.batching.chunk_lengths` batches (one without ``steps_per_call``)."""
        t, p = self.run.config.train, self.pos
        plan = self.run.plan(p.epoch)
        calls = chunk_lengths(plan[p.batch :], t.steps_per_call)
        batches = device_batches(self.run.train_ids, plan, p.batch, self.train_sharding, t.steps_per_call)
        crossed = lambda every, n: p.step // every > (p.step - n) // every
        window = DispatchWindow()
        try:
            for n in calls:
                if p.step + n > self.total_steps or stop.should_stop(sync=False, failed=bool(self.log.error)):
                    return False
                batch = next(batches)
                flops = self.step_flops(batch)
                self.state, metrics = self.train_step(self.state, batch, self.key)
                window.add(metrics)
                p.step, p.batch = p.step + n, p.batch + n
                self.log.add(p.step, p.epoch, metrics, flops, n)
                if crossed(t.checkpoint_every, n) and p.batch < len(plan):  # else saved after validation
                    self.save()
                elif crossed(t.log_every, n):
                    self.log.flush()
                else:
                    continue
                stop.should_stop(sync=True, failed=bool(self.log.error))  # a sync point: every process is here
        finally:
            batches.close()
        return True

    def validate_and_save(self) -> float:
        """End of an epoch: validation loss, then a checkpoint at the next epoch's start (offered to ``best/``)."""
        self.log.flush()
        t, d, p = self.run.config.train, self.run.config.data, self.pos
        val_loss = dataset_nll(self.eval_nll, self.state["params"], *self.run.val_ids, t.batch_size, d.length_multiple,
                               self.batch_sharding)
        p.epoch, p.batch = p.epoch + 1, 0
        if math.isfinite(val_loss):
            p.best_val_loss = min(p.best_val_loss, val_loss)
        self.log.write(event="validation", step=p.step, epoch=p.epoch, val_loss=val_loss, val_ppl=perplexity(val_loss))
        self.print(f"epoch {p.epoch}: val loss {val_loss:.4f} (ppl {perplexity(val_loss):.2f})")
        self.save(val_loss=val_loss)
        return val_loss

    def close(self) -> None:
        self.bar.close()
        self.store.close()
        self.log.close()


def train(config: Config, workdir, data_dir=None, progress: bool = True, prepared_dir=None,
          accept_new_data: bool = False) -> dict:
    """Train ``config`` on its dataset, checkpointing into ``workdir`` and resuming from it.

    ``prepared_dir``: read the training split from prepared shards in this cache, preparing them
    first when missing or stale (:func:`zoo.run.prepare`); None: tokenize it into memory.

    SIGTERM or SIGINT during training: the calls already queued (at most two) finish, a resumable checkpoint is saved
    at it (waiting for the save to commit), and ``train`` returns with ``stopped_by`` set; with several processes, all
    stop at the same step (:meth:`zoo.runtime.StopSignal.should_stop`). Before that (reading the data, building the
    model) a signal exits the process at once with 128 + signum (:class:`zoo.runtime.ExitOnSignal`).

    Returns:
      the final record: ``step``, ``epoch``, ``val_loss``, ``best_val_loss``, ``wall_s``,
      ``stopped_by`` (None, "SIGTERM" or "SIGINT"), ``programs``/``compiled``/``cached``
      (XLA programs handed to the backend, compiled, loaded from the persistent cache).

    ``accept_new_data``: resume on training data that differ from the workdir's (else refused).

    Raises:
      ZooError: bad data files, a model config the model refuses, a workdir made with another
        config or trained on other data, or in use by another trainer (its PID named), a workdir
        that cannot be written (a full disk while writing the metrics: the step is saved first),
        or a non-finite loss or gradient norm (nothing is saved then).
    """
    start = time.time()
    with ExitOnSignal():  # a signal before the loop exits at once (128 + signum)
        run, pipeline = prepare(config, workdir, data_dir, prepared_dir, accept_new_data)
        lock = WorkdirLock(run.workdir) if is_main() else contextlib.nullcontext()  # one lock a run, held by process 0
        with lock, CompileCounter() as compiles, StopSignal() as stop:
            write_workdir(run, pipeline)
            trainer = Trainer(run, progress)
            try:
                val_loss = _loop(trainer, stop, start)
            finally:
                trainer.close()
    p = trainer.pos
    if trainer.log.error:  # the end record
        raise ZooError(trainer.log.error)
    return {"step": p.step, "epoch": p.epoch, "val_loss": val_loss, "best_val_loss": p.best_val_loss,
            "wall_s": time.time() - start, "stopped_by": stop.agreed, "programs": compiles.programs,
            "compiled": compiles.compiled, "cached": compiles.cached}


def _loop(trainer: Trainer, stop: StopSignal, start: float) -> float | None:
    """:func:`train`'s epochs, until the end, ``max_steps`` or a stop every process agrees on; then the
    last save, waited for. Returns the last validation loss (None if no epoch ended)."""
    t, p, val_loss = trainer.run.config.train, trainer.pos, None
    while p.epoch < t.epochs and p.step < trainer.total_steps and not stop.should_stop(failed=bool(trainer.log.error)):
        if not trainer.run_epoch(stop):  # (the loop's test is a sync point: every process is at an epoch's end)
            break
        val_loss = trainer.validate_and_save()
    if trainer.store.latest_step() != p.step:
        trainer.save()
    trainer.store.wait()
    if stop.agreed == stop.FAILED:
        raise ZooError(f"{trainer.log.error or 'process 0 could not write the metrics log'}; saved step {p.step}, "
                       f"whose log lacks those records: free some space and rerun to resume")
    if stop.agreed:
        trainer.print(f"saved step {p.step}, stopping on {stop.agreed}")
    trainer.log.write(event="end", step=p.step, epoch=p.epoch, wall_s=time.time() - start, stopped_by=stop.agreed)
    return val_loss
