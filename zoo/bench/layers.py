"""The layer study: Vaswani et al. (2017), Table 1, measured. Per layer, for a sequence of length
n and width d:

    self-attention      O(n²·d)     4·n²·d FLOPs      (:func:`zoo.flops.attention_flops`)
    recurrent (LSTM)    O(n·d²)     16·n·d² FLOPs     (:func:`zoo.flops.rnn_flops`, GRU 12·n·d²)
    convolution         O(k·n·d²)   2·k·n·d² FLOPs    (:func:`zoo.flops.conv1d_flops`)

Self-attention runs three ways on the same (B, n, N heads, d/N) query, key and value (the
projections, O(n·d²), are left out, as in Table 1):

* ``attention-reference``: :func:`zoo.functional.attention.scaled_dot_product_attention`, which
  materialises the (N, n, n) weights;
* ``attention-fused``: ``jax.nn.dot_product_attention`` (:func:`zoo.functional.attention.fused_attention`),
  through cuDNN's flash attention on a GPU in bfloat16, XLA's kernel otherwise;
* ``attention-blocked``: :func:`zoo.functional.attention.blocked_attention`, an online softmax over
  key blocks, memory linear in n.

The recurrent layers (``lstm``, ``gru``: :func:`zoo.functional.cells.recurrent`, D = H = d) and the
convolution (``conv``: :func:`zoo.functional.convolution.conv1d`, C_in = C_out = d, kernel k, "same"
padding) run vmapped over the batch, as the zoo's models do. Every kind is timed forward; the
recurrent layers also forward and backward (the gradient of the summed outputs with respect to
inputs and parameters), the pass PyTorch's nn.LSTM/nn.GRU are compared on.

XLA's ``cost_analysis()`` counts a ``lax.scan`` body once: the recurrent layers' count is corrected
with the cost of one step compiled on its own (:func:`zoo.flops.loop_corrected`); the blocked
attention's with a one-block program (which also repeats the O(n·d) scaling and division per
block, a relative overcount of about 1/(2·block_size)).
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp

from zoo import flops
from zoo.bench.fit import fit_series
from zoo.bench.measure import compile_program, memory_bytes, time_call, xla_flops
from zoo.functional import attention, cells
from zoo.functional.convolution import conv1d

ATTENTION_KINDS = ("attention-reference", "attention-fused", "attention-blocked")
RECURRENT_KINDS = ("lstm", "gru")
KINDS = ATTENTION_KINDS + RECURRENT_KINDS + ("conv",)


@dataclass(frozen=True)
class LayerSizes:
    """The study's sizes: n swept at ``fixed_d``, d swept at ``fixed_n``."""

    batch: int
    head_dim: int  # d/N: attention heads have this width
    kernel_size: int
    block_size: int  # blocked attention's keys per block
    fixed_d: int
    n_grid: tuple[int, ...]
    fixed_n: int
    d_grid: tuple[int, ...]
    fit_points: int  # exponents are fitted over this many of the largest sizes
    train: bool = True  # also time the recurrent layers forward and backward


def fused_implementation(device, dtype) -> str | None:
    """``implementation`` of ``jax.nn.dot_product_attention``: "cudnn" on an NVIDIA GPU in
    bfloat16 (flash attention), else None (XLA)."""
    return "cudnn" if device.platform == "gpu" and jnp.dtype(dtype) == jnp.bfloat16 else None


def _attention_fn(kind: str, block_size: int, implementation: str | None) -> Callable:
    if kind == "attention-reference":
        return lambda q, k, v: attention.scaled_dot_product_attention(q, k, v)[0]
    if kind == "attention-fused":
        return lambda q, k, v: attention.fused_attention(q, k, v, implementation=implementation)
    return lambda q, k, v: attention.blocked_attention(q, k, v, block_size=block_size)


def _recurrent_params(key, cell: str, d: int, dtype) -> dict:
    g = cells.NUM_GATES[cell] * d
    k1, k2 = jax.random.split(key)
    scale = d**-0.5
    return {"w_i": (scale * jax.random.normal(k1, (d, g))).astype(dtype), "b_i": jnp.zeros((g,), dtype),
            "w_h": (scale * jax.random.normal(k2, (d, g))).astype(dtype), "b_h": jnp.zeros((g,), dtype)}


def _recurrent_fn(cell: str) -> Callable:
    def layer(params, x):  # x (B, n, d) -> hs (B, n, d)
        n, d = x.shape[1], x.shape[2]
        run = lambda xs: cells.recurrent(cell, params, xs, n, cells.initial_carry(cell, d, xs.dtype))[1]
        return jax.vmap(run)(x)

    return layer


def _conv_fn(params, x):  # x (B, n, d) -> (B, n, d)
    return jax.vmap(lambda xs: conv1d(xs, params["w"], params["b"], "same"))(x)


@dataclass(frozen=True)
class Layer:
    """One measurable layer: ``fn(*args)`` on ``args``, its analytic FLOPs, and (for programs with a
    loop) ``body`` / ``body_args`` / ``trips`` to correct XLA's count."""

    fn: Callable
    args: tuple
    analytic_flops: int
    body: Callable | None = None
    body_args: tuple = ()
    trips: int = 1


def make_layer(kind: str, n: int, d: int, sizes: LayerSizes, dtype, implementation: str | None = None,
               seed: int = 0) -> Layer:
    """The layer ``kind`` on a random batch (B, n, d) and random parameters.

    Args:
      kind: one of :data:`KINDS`. n, d: sequence length and width. sizes: batch, head width, kernel,
        block. dtype: of inputs and parameters. implementation: the fused attention's (see
        :func:`fused_implementation`). seed: of the random inputs.

    Returns:
      :class:`Layer`; attention inputs are q, k, v (B, n, d/head_dim, head_dim).

    Raises:
      ValueError: unknown kind, or d not a multiple of the head width for attention.
    """
    key_x, key_p = jax.random.split(jax.random.key(seed))
    b = sizes.batch
    if kind in ATTENTION_KINDS:
        if d % sizes.head_dim:
            raise ValueError(f"attention width d={d} is not a multiple of the head width {sizes.head_dim}")
        heads = d // sizes.head_dim
        q, k, v = (jax.random.normal(kk, (b, n, heads, sizes.head_dim)).astype(dtype) for kk in jax.random.split(key_x, 3))
        fn = _attention_fn(kind, sizes.block_size, implementation)
        analytic = b * flops.attention_flops(n, n, heads, sizes.head_dim, sizes.head_dim)
        if kind != "attention-blocked":
            return Layer(fn, (q, k, v), analytic)
        trips = -(-n // sizes.block_size)
        block = min(n, sizes.block_size)
        return Layer(fn, (q, k, v), analytic, fn, (q, k[:, :block], v[:, :block]), trips)
    x = jax.random.normal(key_x, (b, n, d)).astype(dtype)
    if kind in RECURRENT_KINDS:
        params = _recurrent_params(key_p, kind, d, dtype)
        update = cells.hidden_update(kind)
        carry = cells.initial_carry(kind, d, dtype)
        carries = jax.tree.map(lambda c: jnp.broadcast_to(c, (b,) + c.shape), carry)
        gates = jnp.zeros((b, cells.NUM_GATES[kind] * d), dtype)
        body = lambda p, c, g: jax.vmap(lambda c1, g1: update(p, c1, g1))(c, g)
        return Layer(_recurrent_fn(kind), (params, x), b * flops.rnn_flops(kind, n, d, d), body,
                     (params, carries, gates), n)
    if kind == "conv":
        k = sizes.kernel_size
        params = {"w": (jax.random.normal(key_p, (k, d, d)) * (k * d) ** -0.5).astype(dtype), "b": jnp.zeros((d,), dtype)}
        return Layer(_conv_fn, (params, x), b * flops.conv1d_flops(n, k, d, d))
    raise ValueError(f"unknown layer kind {kind!r}; choose from {', '.join(KINDS)}")


def _train_fn(fn: Callable) -> Callable:
    """Forward and backward: the gradient of the summed outputs with respect to every argument."""

    def train(*args):
        return jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32)), argnums=tuple(range(len(args))))(*args)

    return train


def measure(kind: str, n: int, d: int, pass_: str, sizes: LayerSizes, dtype, repeats: int, warmup: int,
            implementation: str | None = None, peak_flops: float | None = None) -> dict:
    """Time, memory and FLOPs of one layer at one size, for ``pass_`` "forward" or "train".

    Returns:
      dict: kind, n, d, pass, time (:class:`zoo.bench.measure.Timing` as a dict), memory (XLA's
      account, bytes), and for the forward pass flops_analytic, flops_xla (as XLA reports it),
      flops_xla_corrected (loop bodies counted per iteration), flops_per_s (analytic / median
      time) and, where the chip's peak is known, fraction_of_peak.
    """
    layer = make_layer(kind, n, d, sizes, dtype, implementation)
    fn = layer.fn if pass_ == "forward" else _train_fn(layer.fn)
    compiled = compile_program(fn, *layer.args)
    timing = time_call(compiled, *layer.args, repeats=repeats, warmup=warmup)
    row = {"kind": kind, "n": n, "d": d, "pass": pass_, "time": timing.as_dict(), "memory": memory_bytes(compiled)}
    if pass_ == "forward":
        raw = xla_flops(compiled)
        corrected = raw
        if layer.body is not None and layer.trips > 1:
            corrected = flops.loop_corrected(raw, xla_flops(compile_program(layer.body, *layer.body_args)), layer.trips)
        row.update(flops_analytic=layer.analytic_flops, flops_xla=raw, flops_xla_corrected=corrected,
                   flops_per_s=layer.analytic_flops / timing.median)
        if peak_flops:
            row["fraction_of_peak"] = row["flops_per_s"] / peak_flops
    return row


def passes(kind: str, sizes: LayerSizes) -> tuple[str, ...]:
    """The passes a kind is timed on: forward, and for the recurrent layers also train (if ``sizes.train``)."""
    return ("forward", "train") if kind in RECURRENT_KINDS and sizes.train else ("forward",)


def points(sizes: LayerSizes) -> list[tuple[int, int]]:
    """The (n, d) sizes of both sweeps, each once."""
    sweep = [(n, sizes.fixed_d) for n in sizes.n_grid] + [(sizes.fixed_n, d) for d in sizes.d_grid]
    return list(dict.fromkeys(sweep))


def run(sizes: LayerSizes, dtype, device, repeats: int, warmup: int, kinds=KINDS, peer=None,
        log: Callable = print) -> dict:
    """Measure every kind at every size of both sweeps, compare with the peer if given, and fit.

    Args:
      peer: None, or a callable ``(kind, n, d, pass) -> Timing | None`` timing the same layer in
        another framework (see :mod:`zoo.bench.peer_torch`); its median and the ratio zoo / peer
        are added to each row.

    Returns:
      dict: ``sizes``, ``implementation`` (of the fused attention), ``measurements`` and ``fits``.
    """
    implementation = fused_implementation(device, dtype)
    peak = flops.dense_bf16_peak(device.device_kind) if jnp.dtype(dtype) == jnp.bfloat16 else None
    measurements = []
    for kind in kinds:
        for n, d in points(sizes):
            for pass_ in passes(kind, sizes):
                row = measure(kind, n, d, pass_, sizes, dtype, repeats, warmup, implementation, peak)
                line = f"layer {kind:19s} n={n:5d} d={d:5d} {pass_:7s} {row['time']['median'] * 1e3:10.3f} ms"
                if peer is not None:
                    theirs = peer(kind, n, d, pass_)
                    if theirs is not None:
                        row["peer_time"] = theirs.as_dict()
                        row["ratio_to_peer"] = row["time"]["median"] / theirs.median
                        line += f"  peer {theirs.median * 1e3:10.3f} ms  ratio {row['ratio_to_peer']:5.2f}"
                measurements.append(row)
                log(line)
    return {"sizes": asdict(sizes), "implementation": implementation or "xla", "measurements": measurements,
            "fits": fits(measurements, sizes)}


def fits(measurements: list, sizes: LayerSizes) -> list:
    """Exponents over the ``sizes.fit_points`` largest sizes of each sweep: time against n and
    memory against n at ``fixed_d``, time against d at ``fixed_n``, per kind and pass."""
    out = []
    lowest_n = sorted(sizes.n_grid)[-min(sizes.fit_points, len(sizes.n_grid))]
    lowest_d = sorted(sizes.d_grid)[-min(sizes.fit_points, len(sizes.d_grid))]
    for kind in dict.fromkeys(r["kind"] for r in measurements):
        for pass_ in passes(kind, sizes):
            rows = [r for r in measurements if r["kind"] == kind and r["pass"] == pass_]
            by_n = [r for r in rows if r["d"] == sizes.fixed_d and r["n"] in sizes.n_grid]
            by_d = [r for r in rows if r["n"] == sizes.fixed_n and r["d"] in sizes.d_grid]
            n, d = [r["n"] for r in by_n], [r["d"] for r in by_d]
            out.append(fit_series(f"{kind}/{pass_} time", "n", n, [r["time"]["median"] for r in by_n], lowest_n))
            out.append(fit_series(f"{kind}/{pass_} memory", "n", n, [r["memory"]["peak"] for r in by_n], lowest_n))
            out.append(fit_series(f"{kind}/{pass_} time", "d", d, [r["time"]["median"] for r in by_d], lowest_d))
    return [f.as_dict() for f in out]
