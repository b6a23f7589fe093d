"""Recurrent layers (one example at a time): a layer of any cell, bidirectional, stacked."""

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from zoo.functional import cells
from zoo.functional.counting import record
from zoo.functional.layers import dropout, split_keys


def _orthogonal_gates(key, hidden_dim: int, num_gates: int):
    """``num_gates`` orthogonal (H, H) blocks side by side, one per gate: (H, G·H)."""
    keys = jax.random.split(key, num_gates)
    init = jax.nn.initializers.orthogonal()
    return jnp.concatenate([init(k, (hidden_dim, hidden_dim)) for k in keys], axis=1)


class RNNLayer(nnx.Module):
    """One recurrent layer of a named cell (:mod:`zoo.functional.cells`), unrolled by ``lax.scan``.

    Parameters (the layout of the cells module): ``w_i`` (D, G·H) Glorot-uniform, ``w_h``
    (H, G·H) orthogonal per gate (Saxe et al. 2014, as Bahdanau et al. 2015, appendix B.1),
    biases zero except the LSTM forget gate's input bias, set to ``forget_bias``
    (Jozefowicz et al. 2015 recommend 1, so that the cell remembers by default early in training).

    Args:
      cell: ``"rnn"`` (Elman, tanh), ``"lstm"`` or ``"gru"``.
      input_dim, hidden_dim: D and H.
      reset_after: GRU only: True is the cuDNN/PyTorch form, False Cho et al. (2014) as published.
      forget_bias: LSTM only: initial value of the forget gate's bias.
      unroll: time steps per loop iteration of :meth:`scan` (``lax.scan``'s ``unroll``; same values).
      dtype: the compute dtype (:mod:`zoo.nn.precision`): the parameters (float32) are cast to it
        at use, and the inputs and carries must have it.
    """

    def __init__(self, cell: str, input_dim: int, hidden_dim: int, *, reset_after: bool = True,
                 forget_bias: float = 1.0, unroll: int = 1, dtype=jnp.float32, rngs: nnx.Rngs):
        if cell not in cells.NUM_GATES:
            raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(cells.NUM_GATES)}")
        gates = cells.NUM_GATES[cell]
        self.cell, self.hidden_dim, self.reset_after, self.unroll, self.dtype = cell, hidden_dim, reset_after, unroll, dtype
        self.w_i = nnx.Param(jax.nn.initializers.glorot_uniform()(rngs.params(), (input_dim, gates * hidden_dim)))
        b_i = jnp.zeros((gates * hidden_dim,))
        if cell == "lstm":
            b_i = b_i.at[hidden_dim : 2 * hidden_dim].set(forget_bias)  # gates [i, f, g, o]
        self.b_i = nnx.Param(b_i)
        self.w_h = nnx.Param(_orthogonal_gates(rngs.params(), hidden_dim, gates))
        self.b_h = nnx.Param(jnp.zeros((gates * hidden_dim,)))

    @property
    def params(self) -> dict:
        """The cell's parameters in the compute dtype."""
        return {name: getattr(self, name)[...].astype(self.dtype) for name in ("w_i", "b_i", "w_h", "b_h")}

    def initial_carry(self) -> cells.Carry:
        """Zero carry in the compute dtype: h (H,), or ``(h, c)`` for the LSTM."""
        return cells.initial_carry(self.cell, self.hidden_dim, self.dtype)

    def __call__(self, carry: cells.Carry, x: Float[Array, " D"]) -> tuple[cells.Carry, Float[Array, " H"]]:
        """One step on x (D,): ``(carry, x) -> (carry', h')``."""
        record("recurrent_steps", 1)
        update = cells.hidden_update(self.cell, self.reset_after)
        return update(self.params, carry, cells.input_projection(self.params, x))

    def scan(self, xs: Float[Array, "T D"], seq_length: Int[ArrayLike, ""], carry: cells.Carry | None = None,
             reverse: bool = False) -> tuple[cells.Carry, Float[Array, "T H"]]:
        """Run over xs (T, D) with ``seq_length`` real steps: ``(carry_last, hs (T, H))``, hs zero at padding."""
        if carry is None:
            carry = self.initial_carry()
        return cells.recurrent(self.cell, self.params, xs, seq_length, carry, reverse, self.reset_after, self.unroll)


class Bidirectional(nnx.Module):
    """Forward and backward layers over the same sequence; outputs h_j = [→h_j; ←h_j]
    (Schuster & Paliwal 1997; Bahdanau et al. 2015, section 3.2)."""

    def __init__(self, cell: str, input_dim: int, hidden_dim: int, *, rngs: nnx.Rngs, **cell_options):
        self.forward = RNNLayer(cell, input_dim, hidden_dim, rngs=rngs, **cell_options)
        self.backward = RNNLayer(cell, input_dim, hidden_dim, rngs=rngs, **cell_options)

    def __call__(self, xs: Float[Array, "T D"],
                 seq_length: Int[ArrayLike, ""]) -> tuple[Float[Array, "T H2"], cells.Carry, cells.Carry]:
        """Encode xs (T, D) with ``seq_length`` real steps.

        Returns:
          ``(outputs, carry_forward_last, carry_backward_first)``: (T, 2H) zero at padding, the
          forward carry after the last real token, the backward carry after reading the first token.
        """
        c_fwd, hs_fwd = self.forward.scan(xs, seq_length)
        c_bwd, hs_bwd = self.backward.scan(xs, seq_length, reverse=True)
        return jnp.concatenate([hs_fwd, hs_bwd], axis=-1), c_fwd, c_bwd


class StackedRNN(nnx.Module):
    """``num_layers`` recurrent layers, each reading the outputs of the one below, with dropout
    between layers (not after the last), as ``torch.nn.LSTM(num_layers=..., dropout=...)``.

    With ``bidirectional=True`` every layer is :class:`Bidirectional` and the layers above the
    first read 2H-wide inputs, as in PyTorch.
    """

    def __init__(self, cell: str, input_dim: int, hidden_dim: int, num_layers: int = 1, *,
                 bidirectional: bool = False, dropout: float = 0.0, rngs: nnx.Rngs, **cell_options):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.cell, self.hidden_dim, self.bidirectional, self.dropout = cell, hidden_dim, bidirectional, dropout
        width = 2 * hidden_dim if bidirectional else hidden_dim
        layer = Bidirectional if bidirectional else RNNLayer
        self.layers = nnx.List([
            layer(cell, input_dim if i == 0 else width, hidden_dim, rngs=rngs, **cell_options) for i in range(num_layers)
        ])

    def initial_carry(self) -> list:
        """Zero carries, one per layer (unidirectional stacks only; raises ValueError otherwise)."""
        if self.bidirectional:
            raise ValueError("a bidirectional stack starts from zero carries; it takes no initial carry")
        return [layer.initial_carry() for layer in self.layers]

    def __call__(self, xs: Float[Array, "T D"], seq_length: Int[ArrayLike, ""], key: PRNGKeyArray | None = None,
                 carries: list | None = None) -> tuple[Float[Array, "T W"], list]:
        """Encode xs (T, D) with ``seq_length`` real steps; ``key`` for dropout between layers;
        ``carries``: initial carry per layer (unidirectional stacks; default zeros).

        Returns:
          ``(outputs, carries)``: the top layer's outputs (T, H or 2H), zero at padding, and each
          layer's final carry (for a bidirectional layer the pair (forward last, backward first)).

        Raises:
          ValueError: initial ``carries`` for a bidirectional stack.
        """
        if self.bidirectional and carries is not None:
            raise ValueError("a bidirectional stack starts from zero carries; it takes no initial carry")
        keys = split_keys(key, len(self.layers))
        initial, carries = carries, []
        for i, layer in enumerate(self.layers):
            if i > 0:
                xs = dropout(keys[i], xs, self.dropout)
            if self.bidirectional:
                xs, c_fwd, c_bwd = layer(xs, seq_length)
                carries.append((c_fwd, c_bwd))
            else:
                c, xs = layer.scan(xs, seq_length, None if initial is None else initial[i])
                carries.append(c)
        return xs, carries

    def step(self, carries: list, x: Float[Array, " D"], key: PRNGKeyArray | None = None) -> tuple[list, Float[Array, " H"]]:
        """One time step through every layer (unidirectional stacks; decoders).

        Args:
          carries: one carry per layer; x: input (D,); key: dropout between layers, or None.

        Returns:
          ``(carries', h_top)``.
        """
        keys = split_keys(key, len(self.layers))
        new = []
        for i, (layer, carry) in enumerate(zip(self.layers, carries)):
            if i > 0:
                x = dropout(keys[i], x, self.dropout)
            carry, x = layer(carry, x)
            new.append(carry)
        return new, x
