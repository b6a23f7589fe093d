"""The seq2seq study: how a GRU encoder-decoder's cost grows with source length m and target
length t, without attention (O(m + t) recurrent steps), with global attention (m·t scores) and
with local attention (t·(2D + 1) scores, flat in m for m ≫ D).

Glossary of shapes: B batch, m source length, t target length, V vocabulary, E embedding
width, H hidden width (encoder and decoder), A additive attention width::

    h_1..h_m = GRU_enc(E x_1 .. E x_m)                 annotations (m, H)
    s_0 = h_m;  s_i = GRU_dec(s_{i-1}, E y_{i-1})      decoder states (t, H)
    c_i = Σ_j α_ij h_j,  α_i = softmax_j score(s_i, h_j)  (Luong et al. 2015, global attention,
                                                       query = the current state s_i)
    p(y_i | y_<i, x) = softmax(W_o [s_i; c_i])         (W_o s_i without attention)

Without attention the decoder sees the source only through s_0 (Cho et al. 2014; Sutskever et
al. 2014): m + t recurrent steps. With attention every target step scores every source
position: m·t score evaluations (Bahdanau et al. 2015; Luong et al. 2015), each O(A) for the
additive score vᵀ tanh(W_q s_i + W_k h_j) and O(H) for the dot score s_iᵀ h_j. Local attention
(Luong et al. 2015, section 3.2, local-m: p_i = min(i, m − 1)) gathers and scores only the
W = min(2D + 1, m) positions j with ``|j − p_i| <= D``: t·W additive scores, so for m ≫ D its time
grows with t·D and the encoder's m steps, not with m·t.

The additive attention is computed in one of two ways, the same function up to rounding:

* ``"step"``: inside the decoder's ``lax.scan``, one (m, A) tanh per step; with ``remat=True``
  the step is wrapped in ``jax.checkpoint``, so training keeps only the carries and recomputes
  each step's (m, A) block in the backward pass: memory O(t·H + m·A) instead of O(t·m·A).
* ``"broadcast"`` (naive): all decoder states first, then tanh(W_q s_i + W_k h_j) for all
  (i, j) at once: a (t, m, A) tensor, kept for the backward pass.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.bench.fit import fit_series
from zoo.bench.measure import FAST_COMPILE, compile_program, memory_bytes, time_call
from zoo.functional.attention import masked_softmax
from zoo.functional.counting import count_evaluations, record
from zoo.nn import Attention, RNNLayer

MODELS = ("none", "additive", "dot", "local")  # the attention of each timed model (local: additive, local-m)
SCORINGS = ("step", "broadcast")
LEARNING_RATE = 0.01


@dataclass(frozen=True)
class Seq2SeqSizes:
    """The study's sizes: model widths, the (m, t) grid and the length of the memory comparison."""

    batch: int
    vocab: int
    embed: int
    hidden: int
    attention_dim: int
    grid: tuple[tuple[int, int], ...]  # (m, t) pairs
    memory_length: int  # m = t of the memory comparison
    fit_from: int  # the "large" fits use the grid points with m·t >= fit_from
    train: bool = True  # also time the training step over the grid (the memory comparison always does)
    window: int = 4  # D of the local attention

    def scores(self, attention: str, m: int, t: int) -> int:
        """The analytic score count of one example: 0, m·t, or t·min(2D + 1, m) (local)."""
        return {"none": 0, "local": t * min(2 * self.window + 1, m)}.get(attention, m * t)


class Seq2Seq(nnx.Module):
    """A GRU encoder-decoder on one example (``jax.vmap`` it over a batch); see the module docstring.

    Args:
      attention: "none", "additive", "dot" (the dot score needs no parameters; query and key
        widths are both H) or "local" (additive, local-m with window D).
      vocab, embed, hidden, attention_dim: V, E, H, A. window: D (local attention only).
      scoring: "step" (scores inside the decoder's scan) or "broadcast" (the naive (t, m, A)
        tensor; additive attention only).
      remat: rematerialise the decoder step in the backward pass (``jax.checkpoint``; "step" only).

    Raises:
      ValueError: unknown attention or scoring, or an option the attention cannot take.
    """

    def __init__(self, attention: str, vocab: int, embed: int, hidden: int, attention_dim: int, *,
                 window: int = 4, scoring: str = "step", remat: bool = False, rngs: nnx.Rngs):
        if attention not in MODELS:
            raise ValueError(f"unknown attention {attention!r}; choose from {', '.join(MODELS)}")
        if scoring not in SCORINGS:
            raise ValueError(f"unknown scoring {scoring!r}; choose from {', '.join(SCORINGS)}")
        if scoring == "broadcast" and attention != "additive":
            raise ValueError("the broadcast (naive) scoring is the additive attention's")
        if remat and (attention == "none" or scoring != "step"):
            raise ValueError("remat wraps the attention decoder's scan step; it needs attention and scoring='step'")
        self.attention_name, self.scoring, self.remat = attention, scoring, remat
        self.src_embed = nnx.Embed(vocab, embed, rngs=rngs)
        self.tgt_embed = nnx.Embed(vocab, embed, rngs=rngs)
        self.encoder = RNNLayer("gru", embed, hidden, rngs=rngs)
        self.decoder = RNNLayer("gru", embed, hidden, rngs=rngs)
        self.attention = None if attention == "none" else Attention(
            "additive" if attention == "local" else attention, hidden, hidden, attention_dim,
            window=window if attention == "local" else None, rngs=rngs)
        self.output = nnx.Linear(hidden if attention == "none" else 2 * hidden, vocab, rngs=rngs)

    def __call__(self, src, tgt_in):
        """Teacher-forced logits: src int32 (m,), tgt_in int32 (t,) -> (t, V)."""
        x = self.src_embed(src)  # (m, E)
        y = self.tgt_embed(tgt_in)  # (t, E)
        encoder_last, annotations = self.encoder.scan(x, src.shape[0])  # (H,), (m, H)
        if self.attention is None:
            _, states = self.decoder.scan(y, tgt_in.shape[0], carry=encoder_last)  # (t, H)
            return self.output(states)
        mask = jnp.ones(src.shape, bool)
        if self.scoring == "broadcast":
            _, states = self.decoder.scan(y, tgt_in.shape[0], carry=encoder_last)  # (t, H)
            contexts = self._broadcast_contexts(states, annotations, mask)  # (t, H)
            return self.output(jnp.concatenate([states, contexts], axis=-1))
        keys_proj = self.attention.project_keys(annotations)  # (m, A) or (m, H)

        def step(s_prev, inputs):
            y_i, i = inputs
            s, _ = self.decoder(s_prev, y_i)  # (H,)
            center = jnp.minimum(i, src.shape[0] - 1).astype(jnp.float32)  # local-m's p_i (global: unused)
            context, _ = self.attention(s, keys_proj, annotations, mask, center=center)  # (H,)
            return s, jnp.concatenate([s, context], axis=-1)

        steps = jnp.arange(tgt_in.shape[0], dtype=jnp.int32)
        _, features = jax.lax.scan(jax.checkpoint(step) if self.remat else step, encoder_last, (y, steps))  # (t, 2H)
        return self.output(features)

    def _broadcast_contexts(self, states, annotations, mask):
        """Naive additive attention for all t queries at once through a (t, m, A) tensor:
        e_ij = vᵀ tanh(W_q s_i + W_k h_j) (Bahdanau et al. 2015, eq. 6). Returns contexts (t, H)."""
        p = self.attention.params
        queries = states @ p["w_query"]  # (t, A)
        keys = self.attention.project_keys(annotations)  # (m, A)
        logits = jnp.tanh(queries[:, None, :] + keys[None, :, :]) @ p["v"]  # (t, m, A) -> (t, m)
        record("scores", logits.size)
        return masked_softmax(logits, mask[None, :]) @ annotations


def build(attention: str, sizes: Seq2SeqSizes, dtype, *, scoring: str = "step", remat: bool = False, seed: int = 0):
    """A :class:`Seq2Seq` split into ``(graphdef, params)`` with the parameters cast to ``dtype``."""
    model = Seq2Seq(attention, sizes.vocab, sizes.embed, sizes.hidden, sizes.attention_dim, window=sizes.window,
                    scoring=scoring, remat=remat, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    return graphdef, jax.tree.map(lambda a: a.astype(dtype), params)


def batch(sizes: Seq2SeqSizes, m: int, t: int, seed: int = 0):
    """Random token ids: ``(src (B, m), tgt_in (B, t), tgt_out (B, t))``, int32."""
    keys = jax.random.split(jax.random.key(seed), 3)
    src = jax.random.randint(keys[0], (sizes.batch, m), 0, sizes.vocab)
    tgt_in = jax.random.randint(keys[1], (sizes.batch, t), 0, sizes.vocab)
    return src, tgt_in, jax.random.randint(keys[2], (sizes.batch, t), 0, sizes.vocab)


def loss_fn(graphdef) -> Callable:
    """``loss(params, src (B, m), tgt_in (B, t), tgt_out (B, t))``: mean token cross-entropy (float32)."""

    def loss(params, src, tgt_in, tgt_out):
        model = nnx.merge(graphdef, params)
        logits = jax.vmap(model)(src, tgt_in).astype(jnp.float32)  # (B, t, V)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, tgt_out[..., None], axis=-1))

    return loss


def train_step_fn(graphdef) -> Callable:
    """``step(params, src, tgt_in, tgt_out) -> (params', loss)``: one SGD step (forward, backward, update)."""
    loss = loss_fn(graphdef)

    def step(params, src, tgt_in, tgt_out):
        value, grads = jax.value_and_grad(loss)(params, src, tgt_in, tgt_out)
        return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads), value

    return step


def count(graphdef, params, src, tgt_in) -> dict:
    """Score and recurrent-step evaluations of one example's forward pass (src (m,), tgt_in (t,)),
    counted at run time: :func:`zoo.functional.counting.count_evaluations` around a program
    traced afresh inside the context, so that every scan iteration records its work."""
    model = lambda p: nnx.merge(graphdef, p)(src, tgt_in)
    with count_evaluations() as counts:
        jax.block_until_ready(jax.jit(model, compiler_options=FAST_COMPILE)(params))  # run once: compile cheaply
    return {"scores": counts["scores"], "recurrent_steps": counts["recurrent_steps"]}


def _measure(fn, args, repeats: int, warmup: int) -> dict:
    compiled = compile_program(fn, *args)
    return {"time": time_call(compiled, *args, repeats=repeats, warmup=warmup).as_dict(),
            "memory": memory_bytes(compiled)}


def run(sizes: Seq2SeqSizes, dtype, repeats: int, warmup: int, log: Callable = print) -> dict:
    """Time, count and fit the three models over ``sizes.grid``, then compare the additive
    attention's memory (broadcast, step, step with remat) at m = t = ``sizes.memory_length``.

    Returns:
      dict: ``sizes``, ``measurements`` (per model, m, t and pass: time, memory, and for the
      forward pass the counted and analytic scores and recurrent steps), ``fits`` and ``memory``
      (:func:`memory_comparison`). The fits are log time against log(m·t) and log(m+t) (and, for
      local attention, log(t·W)), every model and pass, over the whole grid (series
      "<model>/<pass> time") and over its points with m·t >= ``sizes.fit_from`` (series
      "<model>/<pass> time, large"), where the asymptotic term should dominate: O(m·t) with global
      attention, O(m + t) without; and against log m at the fixed t with the most grid points
      (series "<model>/<pass> time, t=T"): global attention's m·t scores against the other two,
      whose only cost growing with m is the encoder's m steps (local attention adds t·W scores,
      W = min(2D + 1, m): the same for every m >= 2D + 1).
    """
    measurements = []
    for attention in MODELS:
        graphdef, params = build(attention, sizes, dtype)
        for m, t in sizes.grid:
            data = batch(sizes, m, t)
            counts = count(graphdef, params, data[0][0], data[1][0])
            analytic = {"scores": sizes.scores(attention, m, t), "recurrent_steps": m + t}
            programs = (("forward", loss_fn(graphdef)), ("train", train_step_fn(graphdef)))
            for name, fn in programs[: 2 if sizes.train else 1]:
                row = {"model": attention, "m": m, "t": t, "pass": name, **_measure(fn, (params, *data), repeats, warmup)}
                if name == "forward":
                    row.update(scores_counted=counts["scores"], scores_analytic=analytic["scores"],
                               recurrent_steps_counted=counts["recurrent_steps"],
                               recurrent_steps_analytic=analytic["recurrent_steps"])
                measurements.append(row)
                log(f"seq2seq {attention:8s} m={m:4d} t={t:4d} {name:7s} {row['time']['median'] * 1e3:9.2f} ms")
    return {"sizes": asdict(sizes), "measurements": measurements, "fits": fits(measurements, sizes),
            "memory": memory_comparison(sizes, dtype, repeats, warmup, log)}


def fits(measurements: list, sizes: Seq2SeqSizes) -> list:
    """Exponents of time against m·t, m + t, t·W (local) and m at fixed t (see :func:`run`), as dicts."""
    t_values = [t for _, t in sizes.grid]
    fixed_t = max(t_values, key=lambda t: (t_values.count(t), t))  # the t with the most m (the largest on a tie)
    sizes_of = {"m*t": lambda r: r["m"] * r["t"], "m+t": lambda r: r["m"] + r["t"],
                "t*W": lambda r: sizes.scores("local", r["m"], r["t"]), "m": lambda r: r["m"]}
    out = []
    for attention in MODELS:
        for name in ("forward", "train") if sizes.train else ("forward",):
            rows = [r for r in measurements if r["model"] == attention and r["pass"] == name]
            large = [r for r in rows if r["m"] * r["t"] >= sizes.fit_from]
            series = [(f"{attention}/{name} time", rows, against) for against in ("m*t", "m+t")]
            series += [(f"{attention}/{name} time, large", large, against) for against in ("m*t", "m+t")]
            if attention == "local":
                series += [(f"{attention}/{name} time{suffix}", subset, "t*W")
                           for suffix, subset in (("", rows), (", large", large))]
            at_fixed_t = [r for r in rows if r["t"] == fixed_t]
            if len(at_fixed_t) >= 2:  # a grid with one m per t has no exponent in m
                series.append((f"{attention}/{name} time, t={fixed_t}", at_fixed_t, "m"))
            for label, subset, against in series:
                x, y = [sizes_of[against](r) for r in subset], [r["time"]["median"] for r in subset]
                out.append(fit_series(label, against, x, y).as_dict())
    return out


# (attention, scoring, remat, pass); the model without attention is the floor: what the encoder,
# the decoder's recurrence and the output layer need without any score.
MEMORY_VARIANTS = (("additive", "broadcast", False, "forward"), ("additive", "broadcast", False, "train"),
                   ("additive", "step", False, "forward"), ("additive", "step", False, "train"),
                   ("additive", "step", True, "train"), ("none", "step", False, "train"))


def memory_comparison(sizes: Seq2SeqSizes, dtype, repeats: int, warmup: int, log: Callable = print) -> list:
    """The additive attention at m = t = ``sizes.memory_length``: XLA's peak memory (and time) of
    the forward pass and the training step, naive broadcast against step by step, with and without
    rematerialisation, and the model without attention for reference (:data:`MEMORY_VARIANTS`).
    Each row has ``ratio_to_broadcast``: its peak over the broadcast version's peak for the same pass."""
    length = sizes.memory_length
    data = batch(sizes, length, length)
    rows = []
    for attention, scoring, remat, name in MEMORY_VARIANTS:
        graphdef, params = build(attention, sizes, dtype, scoring=scoring, remat=remat)
        fn = loss_fn(graphdef) if name == "forward" else train_step_fn(graphdef)
        row = {"model": attention, "scoring": scoring, "remat": remat, "pass": name, "m": length, "t": length,
               **_measure(fn, (params, *data), repeats, warmup)}
        rows.append(row)
        log(f"memory   {attention:8s} {scoring:9s} remat={remat!s:5s} {name:7s} {row['memory']['peak'] / 2**20:9.2f} MiB")
    for row in rows:
        naive = next(r for r in rows if r["scoring"] == "broadcast" and r["pass"] == row["pass"])
        row["ratio_to_broadcast"] = row["memory"]["peak"] / naive["memory"]["peak"]
    return rows
