"""One-dimensional convolutions over time and the gated linear unit (Gehring et al. 2017).

Glossary of shapes: T time steps, k kernel width, C_in / C_out input / output channels.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

PADDINGS = ("same", "causal")


def conv1d(x: Float[Array, "T C_in"], w: Float[Array, "k C_in C_out"], b: Float[Array, " C_out"],
           padding: str = "same") -> Float[Array, "T C_out"]:
    """One-dimensional convolution (cross-correlation, as every deep-learning library) over time:

        y_t = b + Σ_{i=0}^{k-1} x_{t + i − p} W_i        (x_s = 0 outside 0 <= s < T)

    with p = (k−1)/2 for ``"same"`` (k odd: the window is centred on t) and p = k−1 for
    ``"causal"`` (k−1 zeros on the left only, so y_t depends on x_{≤t}: the decoder's masked
    convolution of Gehring et al. 2017, section 3.2). Either way the output keeps length T.

    Implemented as one matmul of the k shifted copies of x laid side by side ("im2col"):
    [x_{t−p}; …; x_{t−p+k−1}] (T, k·C_in) @ w reshaped (k·C_in, C_out). Measured on a loaded
    2-core CPU, fwd+bwd, T=32, C_in=512, C_out=1024, k=3: one example 1.3 ms (sum of k shifted
    matmuls 1.4 ms, ``lax.conv_general_dilated`` 6.5 ms); vmapped over 128 examples 128 ms (138 ms,
    104 ms). But the gradient of ``conv_general_dilated`` vmapped inside a ``lax.scan`` (stacked
    layers) is pathological on CPU (5 layers, batch 8, T=24, H=256: 1000 ms against 17 ms
    unrolled), whereas the matmul form keeps its speed there: in ConvS2S's training step it is
    20-30× faster.

    Args:
      x: float array (T, C_in).
      w: float array (k, C_in, C_out): W_i = w[i].
      b: float array (C_out,).
      padding: ``"same"`` or ``"causal"``.

    Returns:
      float array (T, C_out).

    Raises:
      ValueError: unknown ``padding``, or an even kernel width with ``"same"``.
    """
    k = w.shape[0]
    if padding == "same":
        if k % 2 == 0:
            raise ValueError(f"'same' padding needs an odd kernel width, got {k}")
        pad = ((k - 1) // 2, (k - 1) // 2)
    elif padding == "causal":
        pad = (k - 1, 0)
    else:
        raise ValueError(f"unknown padding {padding!r}; choose from {', '.join(PADDINGS)}")
    T = x.shape[0]
    padded = jnp.pad(x, (pad, (0, 0)))  # (T + k − 1, C_in)
    windows = jnp.concatenate([padded[i : i + T] for i in range(k)], axis=-1)  # (T, k·C_in)
    return windows @ w.reshape(k * w.shape[1], w.shape[2]) + b[None, :]


def glu(x: Float[Array, "*batch C2"]) -> Float[Array, "*batch C"]:
    """Gated linear unit (Dauphin et al. 2017, eq. 1; Gehring et al. 2017, section 3.2):

        v([A; B]) = A ⊗ σ(B)

    where A is the first and B the second half of the last axis.

    Args:
      x: float array (..., 2C).

    Returns:
      float array (..., C).

    Raises:
      ValueError: odd last axis.
    """
    if x.shape[-1] % 2:
        raise ValueError(f"glu needs an even last axis, got {x.shape[-1]}")
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b)
