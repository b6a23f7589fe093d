"""Recurrent cells as pure functions, and a masked `lax.scan` runner.

A cell has the signature ``cell(params, carry, x) -> (carry, y)``; ``params`` is a dict of
arrays. Sequences are unrolled with :func:`run_rnn`, which honours ``seq_length`` so that
padding never changes the outputs or the final carry of the real positions.

Shapes: D input width, H hidden width, T time steps.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from zoo.functional.masks import length_mask


def gru_input_projection(params, x):
    """Input half of the GRU gates, W_i x + b_i, for one step (D,) or a whole sequence (T, D).

    Computing it for all T steps at once, outside the scan, turns T matrix-vector products
    into one matrix product; only the hidden half stays inside the recurrence.

    Args:
      params: dict with ``w_i`` (D, 3H) and ``b_i`` (3H,), gate order [r, z, n].
      x: float array (..., D).

    Returns:
      float array (..., 3H).
    """
    bias = params["b_i"]
    return x @ params["w_i"] + bias.reshape((1,) * (x.ndim - 1) + bias.shape)


def gru_hidden_update(params, h, gates_x):
    """One GRU step given the precomputed input gates (see :func:`gru_cell` for the equations).

    Args:
      params: dict with ``w_h`` (H, 3H) and ``b_h`` (3H,), gate order [r, z, n].
      h: previous hidden state (H,).
      gates_x: W_i x + b_i for this step (3H,).

    Returns:
      the new hidden state (H,).
    """
    gates_h = h @ params["w_h"] + params["b_h"]
    xr, xz, xn = jnp.split(gates_x, 3, axis=-1)
    hr, hz, hn = jnp.split(gates_h, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def gru_cell(params, carry, x):
    """Gated recurrent unit (Cho et al. 2014, eqs. 5-8), cuDNN/PyTorch ``reset_after`` form.

        r = σ(W_ir x + b_ir + W_hr h + b_hr)
        z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    The reset gate multiplies the hidden matmul *after* it is taken (r ⊙ (W_hn h + b_hn)), as
    cuDNN and ``torch.nn.GRU`` do; Cho et al. apply it before, W_hn (r ⊙ h). The two differ
    only in where r enters; this form lets all three hidden matmuls run as one.

    Args:
      params: dict with ``w_i`` (D, 3H), ``b_i`` (3H,), ``w_h`` (H, 3H), ``b_h`` (3H,), float32;
        the 3H axis is ordered [r, z, n] as in PyTorch.
      carry: previous hidden state h (H,).
      x: input (D,).

    Returns:
      ``(h', h')``: the new carry and the output, both (H,).
    """
    h = gru_hidden_update(params, carry, gru_input_projection(params, x))
    return h, h


def run_rnn(step: Callable, carry, xs, seq_length, reverse: bool = False):
    """Unroll ``step(carry, x) -> (carry, y)`` over time with ``lax.scan``, skipping padding.

    At a padded position (t >= seq_length) the carry passes through unchanged and the output
    is zero. With ``reverse=True`` the scan runs from t = T-1 down to 0, so the backward
    direction starts at the last *real* token: its outputs equal those of the unpadded
    sequence.

    Args:
      step: function ``(carry, x_t) -> (carry, y_t)``.
      carry: initial carry (any pytree).
      xs: inputs (T, ...) (any pytree with leading axis T).
      seq_length: int scalar, number of real steps.
      reverse: run from the end of the sequence to its start.

    Returns:
      ``(final_carry, ys)``: the carry after the last real step, and outputs (T, ...) with
      zeros at padded positions.
    """
    num_steps = jax.tree.leaves(xs)[0].shape[0]
    mask = length_mask(seq_length, num_steps)

    def masked_step(carry, inputs):
        x, real = inputs
        new_carry, y = step(carry, x)
        new_carry = jax.tree.map(lambda n, o: jnp.where(real, n, o), new_carry, carry)
        y = jax.tree.map(lambda a: jnp.where(real, a, jnp.zeros_like(a)), y)
        return new_carry, y

    return jax.lax.scan(masked_step, carry, (xs, mask), reverse=reverse)


def gru(params, xs, seq_length, h0, reverse: bool = False):
    """Run a GRU over a sequence (see :func:`gru_cell`), honouring ``seq_length``.

    Args:
      params: GRU parameters (see :func:`gru_cell`).
      xs: inputs (T, D).
      seq_length: int scalar, number of real steps.
      h0: initial hidden state (H,).
      reverse: read the sequence from its last real token to its first.

    Returns:
      ``(h_last, hs)``: final hidden state (H,) and hidden states (T, H), zero at padding.
    """
    gates_x = gru_input_projection(params, xs)  # (T, 3H)

    def step(h, g):
        h = gru_hidden_update(params, h, g)
        return h, h

    return run_rnn(step, h0, gates_x, seq_length, reverse=reverse)
