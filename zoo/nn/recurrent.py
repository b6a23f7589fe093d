"""Recurrent layers (one example at a time)."""

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.functional import cells


def _orthogonal_gates(key, hidden_dim: int):
    """Three orthogonal (H, H) blocks side by side, one per gate: (H, 3H)."""
    keys = jax.random.split(key, 3)
    init = jax.nn.initializers.orthogonal()
    return jnp.concatenate([init(k, (hidden_dim, hidden_dim)) for k in keys], axis=1)


class GRU(nnx.Module):
    """A GRU layer (:func:`zoo.functional.cells.gru_cell`), unrolled by ``lax.scan``.

    Parameters: ``w_i`` (D, 3H) Glorot-uniform, ``w_h`` (H, 3H) orthogonal per gate (as
    Bahdanau et al. 2015, appendix B.1), biases zero; gate order [r, z, n].
    """

    def __init__(self, input_dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
        self.hidden_dim = hidden_dim
        self.w_i = nnx.Param(jax.nn.initializers.glorot_uniform()(rngs.params(), (input_dim, 3 * hidden_dim)))
        self.b_i = nnx.Param(jnp.zeros((3 * hidden_dim,)))
        self.w_h = nnx.Param(_orthogonal_gates(rngs.params(), hidden_dim))
        self.b_h = nnx.Param(jnp.zeros((3 * hidden_dim,)))

    @property
    def params(self):
        return {"w_i": self.w_i[...], "b_i": self.b_i[...], "w_h": self.w_h[...], "b_h": self.b_h[...]}

    def __call__(self, carry, x):
        """One step: ``(h (H,), x (D,)) -> (h', h')``."""
        return cells.gru_cell(self.params, carry, x)

    def scan(self, xs, seq_length, h0=None, reverse: bool = False):
        """Run over xs (T, D) with ``seq_length`` real steps; returns ``(h_last (H,), hs (T, H))``."""
        if h0 is None:
            h0 = jnp.zeros((self.hidden_dim,), xs.dtype)
        return cells.gru(self.params, xs, seq_length, h0, reverse=reverse)


class BidirectionalGRU(nnx.Module):
    """Forward and backward GRUs over the same sequence; annotations h_j = [→h_j; ←h_j]
    (Bahdanau et al. 2015, section 3.2)."""

    def __init__(self, input_dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
        self.forward = GRU(input_dim, hidden_dim, rngs=rngs)
        self.backward = GRU(input_dim, hidden_dim, rngs=rngs)

    def __call__(self, xs, seq_length):
        """Encode xs (T, D) with ``seq_length`` real steps.

        Returns:
          ``(annotations, h_forward_last, h_backward_first)``: (T, 2H) zero at padding, the
          forward state after the last real token (H,), the backward state at the first token (H,).
        """
        h_fwd, hs_fwd = self.forward.scan(xs, seq_length)
        h_bwd, hs_bwd = self.backward.scan(xs, seq_length, reverse=True)
        return jnp.concatenate([hs_fwd, hs_bwd], axis=-1), h_fwd, h_bwd
