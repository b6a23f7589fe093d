"""FLOPs: read off a traced program, counted analytically for one layer, and the peak FLOP/s
they are measured against (MFU).

Model FLOPs utilisation (Chowdhery et al. 2022, PaLM, appendix B) is the FLOP/s a run achieves
on the model's matrix products over the device's peak. :func:`jaxpr_flops` reads the count off
the program itself: every ``dot_general`` and ``conv_general_dilated`` in its jaxpr, with ``scan``
bodies counted once per iteration (which XLA's ``cost_analysis()`` does not do), a multiply-add
counting 2 FLOPs. Elementwise work is left out, as in the usual MFU accounting.

The analytic counts (:func:`attention_flops`, :func:`rnn_flops`, :func:`conv1d_flops`) are the
leading terms of Vaswani et al. (2017), Table 1, for one sequence of length n and width d:
self-attention O(n²·d), recurrent O(n·d²), convolutional O(k·n·d²), exactly — the matrix
products, as XLA's ``cost_analysis()`` counts them; elementwise work (softmax, gates, biases) is
lower order (a fraction ~ 1/d_head, 1/d or 1/(k·C_in) of the total) and left out. The scaling
benchmark (:mod:`zoo.bench.layers`) checks XLA's counts against them.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

from zoo.functional.cells import NUM_GATES

# Dense (no sparsity) bfloat16 tensor-core peaks from the vendors' data sheets, FLOP/s, matched
# against ``jax.Device.device_kind`` in this order (the first substring found wins).
DENSE_BF16_PEAK = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("A100", 312e12),
    ("TPU v5 lite", 197e12),  # v5e
    ("TPU v5", 459e12),  # v5p
    ("TPU v4", 275e12),
)


def dense_bf16_peak(device_kind: str) -> float | None:
    """The chip's dense bfloat16 peak in FLOP/s (:data:`DENSE_BF16_PEAK`), or None if unknown."""
    for name, peak in DENSE_BF16_PEAK:
        if name in device_kind:
            return peak
    return None


def _eqn_flops(eqn) -> float:
    name = eqn.primitive.name
    if name == "dot_general":
        (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contracting)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape  # kernel: spatial dims and input features, by its layout
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature dim, in feature dim, spatial...)
        per_output = math.prod(rhs[d] for d in spec[1:])
        return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output / eqn.params["feature_group_count"]
    trips = eqn.params["length"] if name == "scan" else 1
    return trips * sum(jaxpr_flops(sub) for sub in jaxprs_in_params(eqn.params))


def jaxpr_flops(jaxpr) -> float:
    """Matrix-product FLOPs of a (closed) jaxpr: ``dot_general`` and ``conv_general_dilated``,
    recursing into sub-jaxprs (jit, custom_vjp, remat, cond branches summed) and multiplying a
    ``scan`` body by its length. A ``while`` loop's body is counted once (its trip count is
    not static).
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    return float(sum(_eqn_flops(eqn) for eqn in jaxpr.eqns))


def measured_matmul_peak(device, dtype=jnp.float32, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of an n×n matrix product on ``device``: the best of ``repeats`` timed runs.

    The CPU has no data-sheet peak that XLA reaches; this is the reference MFU is measured
    against there (in the same run, so that a loaded machine lowers both).
    """
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - tic)
    return 2.0 * n**3 / best


def peak_flops(device, dtype=jnp.bfloat16) -> float:
    """The peak MFU is measured against: the data-sheet dense bfloat16 peak of a known
    accelerator (for any compute dtype, the usual convention), else a measured matrix product
    in ``dtype`` (:func:`measured_matmul_peak`)."""
    return dense_bf16_peak(device.device_kind) or measured_matmul_peak(device, np.dtype(dtype))


def attention_flops(num_queries: int, num_keys: int, heads: int, key_dim: int, value_dim: int) -> int:
    """Scaled dot-product attention, softmax(Q Kᵀ/√d_k) V (Vaswani et al. 2017, eq. 1), all heads:

        2·N·Tq·Tk·d_k  (Q Kᵀ)  +  2·N·Tq·Tk·d_v  (weights · V)

    For self-attention (Tq = Tk = n, N·d_k = N·d_v = d) this is 4·n²·d: Table 1's O(n²·d). The
    input and output projections (O(n·d²)) are not part of it, as in Table 1.

    Args:
      num_queries, num_keys: Tq, Tk. heads: N. key_dim, value_dim: d_k, d_v per head.
    """
    return 2 * heads * num_queries * num_keys * (key_dim + value_dim)


def rnn_flops(cell: str, steps: int, input_dim: int, hidden_dim: int) -> int:
    """A recurrent layer over n steps (:func:`zoo.functional.cells.recurrent`):

        2·n·G·H·D  (input half W_i x)  +  2·n·G·H·H  (recurrent half W_h h)

    with G = 1 (Elman), 3 (GRU), 4 (LSTM) gates; for D = H = d this is 2·G·n·d²: Table 1's O(n·d²).

    Args:
      cell: "rnn", "lstm" or "gru". steps: n. input_dim, hidden_dim: D, H.

    Raises:
      KeyError: unknown cell.
    """
    return 2 * steps * NUM_GATES[cell] * hidden_dim * (input_dim + hidden_dim)


def conv1d_flops(steps: int, kernel_size: int, in_channels: int, out_channels: int) -> int:
    """A one-dimensional convolution that keeps the length n (:func:`zoo.functional.convolution.conv1d`):

        2·k·n·C_in·C_out        Table 1's O(k·n·d²)

    counting the taps on the zero padding too (XLA's count leaves them out for some batch sizes:
    at most k²/4 of the k·n taps of a sequence).

    Args:
      steps: n. kernel_size: k. in_channels, out_channels: C_in, C_out.
    """
    return 2 * kernel_size * steps * in_channels * out_channels


def loop_corrected(flops: float, body_flops: float, trips: int) -> float:
    """XLA's ``cost_analysis()`` counts a ``while`` loop's body once; add the other ``trips − 1``.

    Args:
      flops: XLA's count of the whole program. body_flops: XLA's count of one iteration,
        compiled on its own. trips: the loop's trip count.
    """
    return flops + (trips - 1) * body_flops
