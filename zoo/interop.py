"""Import PyTorch recurrent weights (``nn.RNN`` with tanh, ``nn.LSTM``, ``nn.GRU``) into zoo.

PyTorch is never imported here: a state dict comes in as NumPy arrays, e.g.
``{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}``.

For layer k (``_reverse`` suffix: the backward direction of a bidirectional layer) the
torch parameters map onto a :class:`zoo.nn.RNNLayer` (layout of :mod:`zoo.functional.cells`)
as

    torch                   shape          zoo     shape
    weight_ih_l{k}          (G·H, D_k)  ->  w_i     (D_k, G·H)   transposed
    bias_ih_l{k}            (G·H,)      ->  b_i     (G·H,)
    weight_hh_l{k}          (G·H, H)    ->  w_h     (H, G·H)     transposed
    bias_hh_l{k}            (G·H,)      ->  b_h     (G·H,)

with G = 1 (rnn), 4 (lstm) or 3 (gru), D_0 the input width and D_k = H (unidirectional) or
2H (bidirectional) above the first layer. Gate orders are already PyTorch's ([i, f, g, o],
[r, z, n]) and torch's GRU is zoo's ``reset_after=True`` form, so no block is reordered.
In a :class:`zoo.nn.StackedRNN` layer k is ``layers[k]`` (unidirectional) or
``layers[k].forward`` / ``layers[k].backward`` (bidirectional).

Not supported (a :class:`ValueError` says so): LSTMs with ``proj_size > 0`` (``weight_hr_*``
keys) and modules built with ``bias=False``. ``nn.RNN(nonlinearity="relu")`` has the same
state dict as the tanh one and cannot be told apart; zoo's Elman cell is tanh only.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo.functional.cells import NUM_GATES

# zoo parameter name -> torch parameter prefix
_TORCH_NAMES = {"w_i": "weight_ih", "b_i": "bias_ih", "w_h": "weight_hh", "b_h": "bias_hh"}


def _torch_key(name: str, layer: int, reverse: bool) -> str:
    """torch key of zoo parameter ``name`` of layer ``layer``: ``w_i, 1, True -> weight_ih_l1_reverse``."""
    return f"{_TORCH_NAMES[name]}_l{layer}" + ("_reverse" if reverse else "")


def _directions(bidirectional: bool) -> list:
    """``(zoo sub-module name or None, torch reverse flag)`` per direction."""
    return [("forward", False), ("backward", True)] if bidirectional else [(None, False)]


def _check_cell(cell: str) -> int:
    if cell not in NUM_GATES:
        raise ValueError(f"unknown cell {cell!r}; choose from {', '.join(NUM_GATES)}")
    return NUM_GATES[cell]


def _shape(value) -> tuple:
    return tuple(np.shape(value))


def torch_rnn_params(state_dict, cell: str, num_layers: int, bidirectional: bool) -> dict:
    """zoo parameters of a :class:`zoo.nn.StackedRNN` from a PyTorch ``nn.RNN``/``nn.LSTM``/``nn.GRU``
    state dict (see the module docstring for the mapping).

    The hidden width H is read from ``weight_hh_l0`` and the input width D from
    ``weight_ih_l0``; every other key is checked against them.

    Args:
      state_dict: mapping torch parameter name -> NumPy array (any float dtype), exactly the
        keys of a torch module with this ``num_layers`` and ``bidirectional`` and ``bias=True``.
      cell: ``"rnn"`` (``nn.RNN``, tanh), ``"lstm"`` or ``"gru"``.
      num_layers: torch's ``num_layers`` (>= 1).
      bidirectional: torch's ``bidirectional``.

    Returns:
      nested dict of float32 jax arrays with the structure of
      ``nnx.to_pure_dict(nnx.state(stacked_rnn, nnx.Param))``:
      ``{"layers": {k: {"w_i", "b_i", "w_h", "b_h"}}}``, or
      ``{"layers": {k: {"forward": {...}, "backward": {...}}}}`` when bidirectional.
      Ready for ``nnx.update`` (or use :func:`load_torch_rnn`).

    Raises:
      ValueError: unknown cell; ``num_layers`` < 1; ``weight_hr_*`` keys (LSTM ``proj_size``,
        unsupported); no ``bias_*`` keys (``bias=False``, unsupported); a missing key, an
        unexpected key, or a key of the wrong shape (naming the key, the expected and the
        actual shape).
    """
    gates = _check_cell(cell)
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    projections = sorted(k for k in state_dict if k.startswith("weight_hr_"))
    if projections:
        raise ValueError(f"state dict key {projections[0]!r}: LSTMs with proj_size > 0 are not supported")
    for key in ("weight_hh_l0", "weight_ih_l0"):
        if key not in state_dict:
            raise ValueError(f"missing key {key!r} in the torch {cell} state dict")
    if not any(k.startswith("bias_") for k in state_dict):
        raise ValueError("state dict has no bias_* keys: torch modules built with bias=False are not supported")
    hh0, ih0 = _shape(state_dict["weight_hh_l0"]), _shape(state_dict["weight_ih_l0"])
    if len(hh0) != 2 or hh0[0] != gates * hh0[1]:
        raise ValueError(f"key 'weight_hh_l0' has shape {hh0}, but cell {cell!r} has {gates} gate(s), "
                         f"so it expects (G·H, H) = ({gates}·H, H)")
    hidden = hh0[1]
    if len(ih0) != 2:
        raise ValueError(f"key 'weight_ih_l0' has shape {ih0}, expected a matrix ({gates * hidden}, D)")
    width = 2 * hidden if bidirectional else hidden
    expected = {}  # torch key -> (shape, layer, direction, zoo name)
    for layer in range(num_layers):
        d_in = ih0[1] if layer == 0 else width
        shapes = {"w_i": (gates * hidden, d_in), "b_i": (gates * hidden,),
                  "w_h": (gates * hidden, hidden), "b_h": (gates * hidden,)}
        for direction, reverse in _directions(bidirectional):
            for name, shape in shapes.items():
                expected[_torch_key(name, layer, reverse)] = (shape, layer, direction, name)

    for key, (shape, *_) in expected.items():
        if key not in state_dict:
            raise ValueError(f"missing key {key!r} (expected shape {shape}) in the torch {cell} state dict "
                             f"for num_layers={num_layers}, bidirectional={bidirectional}")
        if _shape(state_dict[key]) != shape:
            raise ValueError(f"key {key!r} has shape {_shape(state_dict[key])}, expected {shape}")
    extra = sorted(set(state_dict) - set(expected))
    if extra:
        raise ValueError(f"unexpected key {extra[0]!r} (shape {_shape(state_dict[extra[0]])}) in the torch "
                         f"{cell} state dict for num_layers={num_layers}, bidirectional={bidirectional}")

    layers = {}
    for key, (_, layer, direction, name) in expected.items():
        value = jnp.asarray(np.asarray(state_dict[key]), jnp.float32)
        value = value.T if name.startswith("w_") else value
        target = layers.setdefault(layer, {})
        if direction is not None:
            target = target.setdefault(direction, {})
        target[name] = value
    return {"layers": layers}


def load_torch_rnn(module, state_dict) -> None:
    """Overwrite the parameters of a :class:`zoo.nn.StackedRNN` in place with PyTorch weights.

    The cell, ``num_layers`` and ``bidirectional`` are the module's; the state dict must come
    from the torch module of the same shape (``nn.RNN``/``nn.LSTM``/``nn.GRU`` with the same
    ``input_size``, ``hidden_size``, ``num_layers``, ``bidirectional``, and ``bias=True``).
    Each array is cast to the dtype of the parameter it replaces. ``module`` may be abstract,
    ``nnx.eval_shape(lambda: StackedRNN(...))``, which skips the random initialisation. Afterwards
    ``module(x, seq_length)`` equals the torch module on the same input (for a batch:
    ``jax.vmap`` over examples; torch's ``h_n`` is the module's final carries, layer by layer,
    forward before backward).

    Args:
      module: a :class:`zoo.nn.StackedRNN`.
      state_dict: mapping torch parameter name -> NumPy array (see :func:`torch_rnn_params`).

    Raises:
      ValueError: every error of :func:`torch_rnn_params`; a torch key whose shape does not fit
        the module (naming the key, the module's and the torch shape, e.g. a different
        ``input_size``); a GRU module built with ``reset_after=False`` (torch's GRU is
        ``reset_after=True``).
    """
    layers = list(module.layers)
    bidirectional = bool(module.bidirectional)
    params = torch_rnn_params(state_dict, module.cell, len(layers), bidirectional)
    if module.cell == "gru":
        first = layers[0].forward if bidirectional else layers[0]
        if not first.reset_after:
            raise ValueError("the module's GRU has reset_after=False; torch's nn.GRU is the reset_after=True form")
    state = nnx.state(module, nnx.Param)
    current = nnx.to_pure_dict(state)
    for layer in range(len(layers)):
        for direction, reverse in _directions(bidirectional):
            ours = current["layers"][layer] if direction is None else current["layers"][layer][direction]
            new = params["layers"][layer] if direction is None else params["layers"][layer][direction]
            for name in _TORCH_NAMES:
                if ours[name].shape != new[name].shape:
                    key = _torch_key(name, layer, reverse)
                    torch_shape, module_shape = new[name].shape[::-1], ours[name].shape[::-1]  # torch layout
                    raise ValueError(f"key {key!r} has shape {torch_shape}, but the module expects {module_shape}")
                new[name] = new[name].astype(ours[name].dtype)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(module, state)
