"""FLOPs of a traced program, and the peak FLOP/s they are measured against (MFU).

Model FLOPs utilisation (Chowdhery et al. 2022, PaLM, appendix B) is the FLOP/s a run achieves
on the model's matrix products over the device's peak. The count here is read off the program
itself: every ``dot_general`` and ``conv_general_dilated`` in its jaxpr, with ``scan`` bodies
counted once per iteration (which XLA's ``cost_analysis()`` does not do), a multiply-add
counting 2 FLOPs. Elementwise work is left out, as in the usual MFU accounting.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

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
