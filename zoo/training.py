"""The loss, the jit-compiled training step, and the training loop.

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
(:class:`DispatchWindow`), so SIGTERM and SIGINT stop the loop within two calls of the signal (two
steps, 2k with ``steps_per_call`` k), with
a resumable checkpoint at the last step; a non-finite loss or gradient norm stops it before anything is saved.
"""

import collections
import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from zoo.checkpoint import CheckpointStore, WorkdirLock, read_config, write_or_check_config
from zoo.compilation import CompileCounter
from zoo.config import Config, TrainConfig
from zoo.data.batching import BatchSpec, batch_order, chunk_lengths, collate, group_by_shape, token_batches
from zoo.data.corpora import load_split
from zoo.data.loader import device_batches, real_token_share
from zoo.data.pipeline import TextPipeline
from zoo.decoding import decode
from zoo.distributed import barrier, data_parallel, is_main, state_shardings
from zoo.errors import ZooError
from zoo.flops import jaxpr_flops, peak_flops
from zoo.functional.masks import length_mask
from zoo.models import build


def example_nll(model, example, key=None, teacher_forcing: float = 1.0, label_smoothing: float = 0.0):
    """Negative log-likelihood of one example, summed over its real target tokens.

    Args:
      model: a zoo seq2seq model (one example at a time).
      example: dict of ``src`` (S,), ``src_length``, ``tgt_in`` (T,), ``tgt_out`` (T,), ``tgt_length``.
      key: PRNG key for dropout and the teacher-forcing coins, or None (no dropout).
      teacher_forcing: the probability r that a decoder step reads the reference token rather
        than its own previous prediction (:func:`zoo.decoding.decode`): 1 is teacher forcing,
        0 free running (greedy), in between needs a ``key``.
      label_smoothing: ε; the target distribution puts 1 − ε on y_t and ε/V on every token
        (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4). 0: the plain NLL.

    Returns:
      ``(nll, num_tokens)``: float32 scalars, −Σ_t log p(y_t | y_<t, x) over t < tgt_length (the
      cross-entropy against the smoothed targets when ε > 0), and that count.

    Raises:
      ValueError: 0 < teacher_forcing < 1 without a key.
    """
    if teacher_forcing >= 1.0:
        logits, _ = model(example["src"], example["src_length"], example["tgt_in"], key=key)
    else:
        if key is None and teacher_forcing > 0.0:
            raise ValueError(f"teacher_forcing={teacher_forcing} draws coins and needs a key")
        k_enc, k_dec, k_coin = [None] * 3 if key is None else jax.random.split(key, 3)
        memory = model.encode(example["src"], example["src_length"], k_enc)
        shape = example["tgt_in"].shape
        use_reference = jnp.zeros(shape, bool) if k_coin is None else jax.random.bernoulli(k_coin, teacher_forcing, shape)
        _, logits, _ = decode(model, memory, example["tgt_in"], use_reference, k_dec)
    mask = length_mask(example["tgt_length"], example["tgt_out"].shape[0])
    if label_smoothing > 0.0:
        targets = optax.smooth_labels(jax.nn.one_hot(example["tgt_out"], logits.shape[-1]), label_smoothing)
        nll = optax.softmax_cross_entropy(logits, targets)
    else:
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, example["tgt_out"])
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def batch_nll(graphdef, params, batch, key=None, teacher_forcing: float = 1.0, label_smoothing: float = 0.0):
    """Summed NLL and token count of a batch: :func:`example_nll` vmapped over its examples."""
    model = nnx.merge(graphdef, params)
    if key is None:
        nll, n = jax.vmap(lambda ex: example_nll(model, ex, None, teacher_forcing, label_smoothing))(batch)
    else:
        keys = jax.random.split(key, batch["src"].shape[0])
        nll, n = jax.vmap(lambda ex, k: example_nll(model, ex, k, teacher_forcing, label_smoothing))(batch, keys)
    return jnp.sum(nll), jnp.sum(n)


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


def make_eval_nll(graphdef, teacher_forcing: float = 1.0):
    """Compiled ``eval_nll(params, batch) -> (nll_sum, num_tokens)`` without dropout; teacher-forced,
    or free-running (greedy) with ``teacher_forcing=0``."""
    return jax.jit(lambda params, batch: batch_nll(graphdef, params, batch, None, teacher_forcing))


def step_key(key, step):
    """The dropout key of a global step, fold_in(key, step): resuming with the saved key replays it."""
    return jax.random.fold_in(key, step)


def dataset_nll(eval_nll, params, src_ids, tgt_ids, batch_size: int, length_multiple: int, sharding=None) -> float:
    """Token-level mean NLL (nats) of a dataset, teacher-forced; the sums stay on the device
    until the end (one read). ``sharding``: where batches go (default: JAX's default device),
    e.g. split over a ``"data"`` mesh, whose device count must divide ``batch_size``; with
    several processes every process passes the whole batch."""
    order = np.argsort([len(s) for s in src_ids], kind="stable")
    total, count = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)
    for start in range(0, len(order), batch_size):
        batch = collate(src_ids, tgt_ids, order[start : start + batch_size], batch_size, length_multiple)
        nll, n = eval_nll(params, batch if sharding is None else jax.device_put(batch, sharding))
        total, count = total + nll, count + n
    total, count = jax.device_get((total, count))
    return float(total) / max(float(count), 1.0)


def perplexity(nll: float) -> float:
    """exp(nll), ``inf`` where that overflows."""
    return math.exp(nll) if nll < 700 else math.inf


def read_metrics(pending: list[dict]) -> list[dict]:
    """The one device-to-host read of the loop: every pending step's metrics at once, stacked on
    the device first (reading each scalar on its own cost ~0.3 ms apiece on a CPU)."""
    stacked = jax.device_get({name: jnp.stack([m[name] for m in pending]) for name in pending[0]})
    return [{name: values[i] for name, values in stacked.items()} for i in range(len(pending))]


class MetricsLog:
    """``metrics.jsonl``: per step ``step, epoch, loss, grad_norm, tokens``; per logged interval
    ``event="interval"`` with target tokens/s, step time, achieved FLOP/s and MFU; validations
    and run events (``start``; ``end`` with the run's ``wall_s``, one per uninterrupted segment of
    a resumed run). Step metrics wait on the device (:meth:`add`) until :meth:`flush`.

    On resume, lines past the checkpoint's step are dropped; a last line cut short by a crash
    is dropped too. Only a ``writer`` writes the file; every process reads and checks the metrics.

    Raises:
      ZooError: a damaged line before the last (naming the file and line).
    """

    def __init__(self, path: Path, resume_step: int, bar, peak: float, writer: bool = True):
        self.path, self.bar, self.peak = path, bar, peak
        if writer and path.exists():
            path.write_text("".join(line + "\n" for line in self._kept_lines(resume_step)))
        self.file = path.open("a") if writer else open(os.devnull, "w")
        self.pending, self.interval_flops, self.clock = [], 0.0, time.perf_counter()

    def _kept_lines(self, resume_step: int) -> list[str]:
        lines = self.path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # the write of the last line was cut short
                raise ZooError(f"{self.path}, line {number}: not JSON; fix or remove that line") from None
            if record.get("step", 0) <= resume_step:
                kept.append(line)
        return kept

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def add(self, step: int, epoch: int, metrics: dict, flops: float, steps: int = 1) -> None:
        """Keep the metrics (device arrays, not read) of the ``steps`` steps up to ``step`` and
        their FLOPs (``flops`` a step): scalars for one step, or a multi-step call's (k,) arrays
        of which the first ``steps`` are real (:func:`make_train_step`)."""
        self.pending.append((step, epoch, metrics, steps))
        self.interval_flops += flops * steps

    def restart_clock(self) -> None:
        """Start the next interval's clock now (after a save or a validation, which are not steps)."""
        self.clock = time.perf_counter()

    def flush(self) -> None:
        """Read the pending metrics (one transfer), write them and the interval's throughput.

        Raises:
          ZooError: a non-finite loss or gradient norm, naming the first such step.
        """
        if not self.pending:
            return
        values = read_metrics([m for _, _, m, _ in self.pending])
        seconds = time.perf_counter() - self.clock
        per_step = [(last - n + 1 + i, epoch, {name: np.atleast_1d(v)[i] for name, v in m.items()})
                    for (last, epoch, _, n), m in zip(self.pending, values) for i in range(n)]
        tokens = 0.0
        for step, epoch, m in per_step:
            for name in ("loss", "grad_norm"):
                if not math.isfinite(m[name]):
                    raise ZooError(f"step {step}: {name} is {float(m[name])}; stopping without saving (lower "
                                   f"--learning-rate or --clip-norm; the last checkpoint is kept)")
            tokens += float(m["tokens"])
            self.write(step=step, epoch=epoch, loss=float(m["loss"]), grad_norm=float(m["grad_norm"]), tokens=int(m["tokens"]))
        steps, last = len(per_step), per_step[-1][2]
        interval = {"step": self.pending[-1][0], "steps": steps, "tokens_per_s": tokens / seconds,
                    "step_time_s": seconds / steps, "flops_per_s": self.interval_flops / seconds,
                    "mfu": self.interval_flops / seconds / self.peak}
        self.write(event="interval", **interval)
        self.bar.update(steps)
        self.bar.set_postfix(loss=f"{float(last['loss']):.3f}", tok_s=f"{interval['tokens_per_s']:.0f}",
                             mfu=f"{interval['mfu']:.1%}")
        self.pending, self.interval_flops = [], 0.0
        self.restart_clock()

    def close(self) -> None:
        self.file.close()


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


@dataclass
class Position:
    """Where a run is: global step, epoch, batch within the epoch's plan, best validation loss."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    best_val_loss: float = math.inf


@dataclass
class Run:
    """What a run's loop needs, fixed for the run (made by :func:`prepare`)."""

    config: Config
    workdir: Path
    train_ids: tuple[list, list]
    val_ids: tuple[list, list]
    model: nnx.Module
    skipped: int = 0  # training pairs over DataConfig.max_length, left out

    def plan(self, epoch: int) -> list[BatchSpec]:
        """The epoch's batches: token-budget batches if ``batch_tokens`` is set, else sentence
        batches; grouped into runs of one shape for ``steps_per_call`` > 1."""
        t = self.config.train
        src_lengths = [len(s) for s in self.train_ids[0]]
        tgt_lengths = [len(s) for s in self.train_ids[1]]
        if t.batch_tokens is not None:
            plan = token_batches(src_lengths, tgt_lengths, t.batch_tokens, t.seed, epoch,
                                 row_multiple=math.lcm(8, jax.device_count()))
        else:
            plan = batch_order(src_lengths, tgt_lengths, t.batch_size, t.seed, epoch, self.config.data.length_multiple)
        return group_by_shape(plan, t.steps_per_call)


def prepare(config: Config, workdir, data_dir=None) -> tuple[Run, TextPipeline]:
    """Read the data, make or load the vocabularies and build the model; writes nothing.

    Raises:
      ZooError: bad data files or vocabularies, a model config the model refuses, or a batch
        (``batch_size``, which also sizes the validation batches) that does not split over the
        devices.
    """
    workdir = Path(workdir).absolute()
    d, t = config.data, config.train
    if t.batch_size % jax.device_count():
        raise ZooError(f"--batch-size {t.batch_size} does not split over {jax.device_count()} devices; "
                       f"use a multiple of {jax.device_count()}")
    train_src, train_tgt = load_split(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)
    val_src, val_tgt = load_split(d.dataset, "val", d.src_lang, d.tgt_lang, data_dir)
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
    train_ids, skipped = within_max_length(pipeline.encode_source(train_src), pipeline.encode_target(train_tgt), d.max_length)
    val_ids, _ = within_max_length(pipeline.encode_source(val_src), pipeline.encode_target(val_tgt), d.max_length)
    run = Run(config, workdir, train_ids, val_ids, model, skipped)
    if t.batch_tokens is not None:
        try:
            run.plan(0)
        except ValueError as e:
            raise ZooError(f"--batch-tokens: {e} (rows are a multiple of 8 and of the {jax.device_count()} devices)") from None
    return run, pipeline


def within_max_length(src_ids: list, tgt_ids: list, max_length: int) -> tuple[tuple[list, list], int]:
    """The pairs whose source and target, each with <eos>, have at most ``max_length`` tokens, and
    how many were left out."""
    kept = [(s, t) for s, t in zip(src_ids, tgt_ids) if max(len(s), len(t)) + 1 <= max_length]
    return ([s for s, _ in kept], [t for _, t in kept]), len(src_ids) - len(kept)


def write_workdir(run: Run, pipeline: TextPipeline) -> None:
    """Write ``config.json`` and the vocabularies into a new workdir; in a used one, check that
    its config is this run's (:func:`zoo.checkpoint.write_or_check_config`). Process 0 writes,
    after every process has read the workdir (:func:`prepare`)."""
    barrier("zoo.prepare")
    if is_main():
        write_or_check_config(run.workdir, run.config)
        if not (run.workdir / TextPipeline.FILES[0]).exists():
            pipeline.save(run.workdir)


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
        self.store = CheckpointStore(run.workdir)
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
                           real_token_share=real_token_share(first_plan, run.train_ids[1]),
                           skipped_long_pairs=run.skipped)
        if run.skipped:
            self.print(f"left out {run.skipped} training pairs longer than {run.config.data.max_length} tokens "
                       f"(--data.max-length)")

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
                if p.step + n > self.total_steps or stop.signal:
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


def train(config: Config, workdir, data_dir=None, progress: bool = True) -> dict:
    """Train ``config`` on its dataset, checkpointing into ``workdir`` and resuming from it.

    SIGTERM or SIGINT during training: the calls already queued (at most two) finish, a resumable checkpoint is saved
    at it (waiting for the save to commit), and ``train`` returns with ``stopped_by`` set.

    Returns:
      the final record: ``step``, ``epoch``, ``val_loss``, ``best_val_loss``, ``wall_s``,
      ``stopped_by`` (None, "SIGTERM" or "SIGINT"), ``programs``/``compiled``/``cached``
      (XLA programs handed to the backend, compiled, loaded from the persistent cache).

    Raises:
      ZooError: bad data files, a model config the model refuses, a workdir made with another
        config or in use by another trainer (its PID named), a workdir that cannot be written,
        or a non-finite loss or gradient norm (nothing is saved then).
    """
    start, val_loss = time.time(), None
    run, pipeline = prepare(config, workdir, data_dir)
    lock = WorkdirLock(run.workdir) if is_main() else contextlib.nullcontext()  # one lock a run, held by process 0
    with lock, CompileCounter() as compiles, StopSignal() as stop:
        write_workdir(run, pipeline)
        trainer = Trainer(run, progress)
        t, p = config.train, trainer.pos
        try:
            while p.epoch < t.epochs and p.step < trainer.total_steps and not stop.signal:
                if not trainer.run_epoch(stop):
                    break
                val_loss = trainer.validate_and_save()
            if trainer.store.latest_step() != p.step:
                trainer.save()
            if stop.signal:
                trainer.print(f"saved step {p.step}, stopping on {stop.signal}")
            trainer.log.write(event="end", step=p.step, epoch=p.epoch, wall_s=time.time() - start, stopped_by=stop.signal)
        finally:
            trainer.close()
    return {"step": p.step, "epoch": p.epoch, "val_loss": val_loss, "best_val_loss": p.best_val_loss,
            "wall_s": time.time() - start, "stopped_by": stop.signal, "programs": compiles.programs,
            "compiled": compiles.compiled, "cached": compiles.cached}
