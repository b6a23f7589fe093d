"""The loss, the jit-compiled training step, and the training loop.

The step is one pure function ``train_step(state, batch, key) -> (state, metrics)`` compiled
once per batch shape with ``jax.jit(..., donate_argnums=0)``. The model works on one example;
the per-example loss is ``jax.vmap``-ped over the batch. A batch sharded over a ``"data"``
mesh axis (see :func:`data_parallel`) runs data-parallel with the same numbers.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from zoo.checkpoint import CheckpointStore, write_or_check_config
from zoo.config import Config, TrainConfig
from zoo.data.batching import batch_order, collate
from zoo.data.corpora import load_split
from zoo.data.pipeline import TextPipeline
from zoo.decoding import decode
from zoo.errors import ZooError
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


def make_train_step(graphdef, tx, teacher_forcing: float = 1.0, label_smoothing: float = 0.0):
    """The compiled ``train_step(state, batch, key) -> (state, metrics)``; ``state`` is donated.

    The loss is the mean token-level cross-entropy over the batch's real target tokens (against
    targets smoothed by ``label_smoothing``).
    Metrics: ``loss``, ``tokens`` (real target tokens), ``grad_norm`` (before clipping).
    """

    def train_step(state, batch, key):
        def loss_fn(params):
            nll, n = batch_nll(graphdef, params, batch, key, teacher_forcing, label_smoothing)
            return nll / jnp.maximum(n, 1), n

        (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, {"loss": loss, "tokens": n, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(train_step, donate_argnums=0)


def make_eval_nll(graphdef, teacher_forcing: float = 1.0):
    """Compiled ``eval_nll(params, batch) -> (nll_sum, num_tokens)`` without dropout; teacher-forced,
    or free-running (greedy) with ``teacher_forcing=0``."""
    return jax.jit(lambda params, batch: batch_nll(graphdef, params, batch, None, teacher_forcing))


def data_parallel():
    """``(batch_sharding, replicated)`` over a 1-D ``"data"`` mesh of all devices."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def step_key(key, step: int):
    """The dropout key of a global step, fold_in(key, step): resuming with the saved key replays it."""
    return jax.random.fold_in(key, step)


def dataset_nll(eval_nll, params, src_ids, tgt_ids, batch_size: int, length_multiple: int) -> float:
    """Token-level mean NLL (nats) of a dataset, teacher-forced."""
    order = np.argsort([len(s) for s in src_ids], kind="stable")
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate(src_ids, tgt_ids, order[start : start + batch_size], batch_size, length_multiple)
        nll, n = eval_nll(params, batch)
        total, count = total + float(nll), count + int(n)
    return total / max(count, 1)


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl``; on resume drops training lines past the checkpoint."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if path.exists():
            kept = [l for l in path.read_text().splitlines() if json.loads(l).get("step", 0) <= resume_step]
            path.write_text("".join(l + "\n" for l in kept))
        self.file = path.open("a")

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def train(config: Config, workdir, data_dir=None, progress: bool = True) -> dict:
    """Train ``config`` on its dataset, checkpointing into ``workdir`` and resuming from it.

    Returns:
      the final record: ``step``, ``epoch``, ``val_loss``, ``best_val_loss``, ``wall_s``.

    Raises:
      ZooError: bad data files, a model config the model refuses, or a workdir made with another config.
    """
    workdir = Path(workdir).absolute()
    d, t = config.data, config.train
    train_src, train_tgt = load_split(d.dataset, "train", d.src_lang, d.tgt_lang, data_dir)
    val_src, val_tgt = load_split(d.dataset, "val", d.src_lang, d.tgt_lang, data_dir)
    has_vocab = (workdir / TextPipeline.FILES[0]).exists()  # a workdir that was started before
    pipeline = TextPipeline.load(d, workdir) if has_vocab else TextPipeline.build(d, train_src, train_tgt)
    vocab_sizes = {"src_vocab_size": len(pipeline.src_vocab), "tgt_vocab_size": len(pipeline.tgt_vocab)}
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, **vocab_sizes))
    try:
        model = build(config.model_name, config.model, seed=t.seed)
    except ValueError as e:
        raise ZooError(f"model {config.model_name!r}: {e}") from None
    write_or_check_config(workdir, config)
    if not has_vocab:
        pipeline.save(workdir)
    train_ids = pipeline.encode_source(train_src), pipeline.encode_target(train_tgt)
    val_ids = pipeline.encode_source(val_src), pipeline.encode_target(val_tgt)

    tx = make_optimizer(t)
    graphdef, state = init_state(model, tx)
    store = CheckpointStore(workdir)
    epoch, batch_index, best_val, key = 0, 0, math.inf, jax.random.key(t.seed)
    if store.latest_step() is not None:
        state, meta = store.restore(state)
        epoch, batch_index, best_val = meta["epoch"], meta["batch"], meta["best_val_loss"]
        key = jax.random.wrap_key_data(np.asarray(meta["rng_key"], np.uint32))

    def position(epoch: int, batch: int) -> dict:
        """The checkpoint's JSON part: data position, best validation loss so far, PRNG key."""
        return {"epoch": epoch, "batch": batch, "best_val_loss": best_val, "rng_key": jax.random.key_data(key).tolist()}

    batch_sharding, replicated = data_parallel()
    state = jax.device_put(state, replicated)
    train_step, eval_nll = make_train_step(graphdef, tx, t.teacher_forcing, t.label_smoothing), make_eval_nll(graphdef)
    step = int(state["step"])
    log = MetricsLog(workdir / "metrics.jsonl", step)
    num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    if step == 0:
        log.write(event="start", step=0, num_params=int(num_params), devices=str(jax.devices()))
    start, val_loss = time.time(), None
    steps_per_epoch = -(-len(train_ids[0]) // t.batch_size)
    total_steps = min(t.epochs * steps_per_epoch, t.max_steps or math.inf)
    bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    try:
        while epoch < t.epochs and step < total_steps:
            batches = batch_order([len(s) for s in train_ids[0]], t.batch_size, t.seed, epoch)
            while batch_index < len(batches) and step < total_steps:
                tic = time.time()
                batch = collate(*train_ids, batches[batch_index], t.batch_size, d.length_multiple)
                state, metrics = train_step(state, jax.device_put(batch, batch_sharding), step_key(key, step))
                loss, tokens = float(metrics["loss"]), int(metrics["tokens"])
                step, batch_index = step + 1, batch_index + 1
                tokens_per_s = tokens / (time.time() - tic)
                log.write(step=step, epoch=epoch, loss=loss, grad_norm=float(metrics["grad_norm"]), tokens_per_s=tokens_per_s)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
                if step % t.checkpoint_every == 0 and batch_index < len(batches):  # else saved below
                    store.save(step, state, position(epoch, batch_index))
            if batch_index < len(batches):
                break  # max_steps reached inside the epoch
            epoch, batch_index = epoch + 1, 0
            val_loss = dataset_nll(eval_nll, state["params"], *val_ids, t.batch_size, d.length_multiple)
            best_val = min(best_val, val_loss)
            log.write(event="validation", step=step, epoch=epoch, val_loss=val_loss, val_ppl=math.exp(val_loss))
            bar.write(f"epoch {epoch}: val loss {val_loss:.4f} (ppl {math.exp(val_loss):.2f})")
            store.save(step, state, position(epoch, 0), val_loss=val_loss)
        if store.latest_step() != step:
            store.save(step, state, position(epoch, batch_index))
    finally:
        bar.close()
        store.close()
        log.close()
    return {"step": step, "epoch": epoch, "val_loss": val_loss, "best_val_loss": best_val, "wall_s": time.time() - start}

