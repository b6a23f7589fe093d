"""Import PyTorch weights into zoo: recurrent layers (``nn.RNN`` with tanh, ``nn.LSTM``,
``nn.GRU``), ``nn.MultiheadAttention`` and the layers of ``nn.Transformer``.

PyTorch is never imported here: a state dict comes in as NumPy arrays, e.g.
``{k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}``. Every array is
checked before anything is written: a missing, unexpected or wrongly shaped key is a
:class:`ValueError` naming the key (and both shapes, in torch's layout).

Recurrent layers
----------------
For layer k (``_reverse`` suffix: the backward direction of a bidirectional layer) the
torch parameters map onto a :class:`zoo.nn.RNNLayer` (layout of :mod:`zoo.functional.cells`)
as::

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

Multi-head attention
--------------------
``nn.MultiheadAttention(D, N)`` onto a :class:`zoo.nn.MultiHeadAttention` ``(D, N)``::

    torch                   shape          zoo                  shape
    in_proj_weight          (3D, D)     ->  w_query, w_key,      (D, D) each: rows [0:D], [D:2D],
                                            w_value                           [2D:3D], transposed
    in_proj_bias            (3D,)       ->  b_query, b_key,      (D,) each: the same thirds
                                            b_value
    out_proj.weight         (D, D)      ->  w_out                (D, D)   transposed
    out_proj.bias           (D,)        ->  b_out                (D,)

Both split the heads the same way (a projection (T, D) reshaped to (T, N, D/N)), so no column
is reordered; the number of heads is not in the state dict: build the zoo module with torch's
``num_heads``. Only the default layout is supported: ``kdim = vdim = embed_dim`` (one stacked
``in_proj_weight``; ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` keys are refused),
``bias=True`` and ``add_bias_kv=False`` (``bias_k``/``bias_v`` refused); and the zoo module
must have no relative positions (torch's has none).

Transformer
-----------
The layers of ``nn.Transformer(d_model, nhead, num_encoder_layers, num_decoder_layers,
dim_feedforward, dropout, activation="relu", norm_first=True)`` onto a pre-LN
:class:`zoo.models.transformer.Transformer` (``config.norm == "pre"``)::

    torch                                    zoo
    encoder.layers.{i}.self_attn.*       ->  encoder[i].self_attention.*     (as above)
    encoder.layers.{i}.linear1.weight    ->  encoder[i].ffn.hidden.kernel     (F, D) -> (D, F)
    encoder.layers.{i}.linear2.weight    ->  encoder[i].ffn.out.kernel        (D, F) -> (F, D)
    encoder.layers.{i}.linear{1,2}.bias  ->  encoder[i].ffn.{hidden,out}.bias
    encoder.layers.{i}.norm{k}.weight    ->  encoder[i].sublayers[k-1].norm.scale   (D,), k = 1, 2
    encoder.layers.{i}.norm{k}.bias      ->  encoder[i].sublayers[k-1].norm.bias
    encoder.norm.{weight,bias}           ->  encoder_norm.{scale,bias}
    decoder.layers.{i}.self_attn.*       ->  decoder[i].self_attention.*
    decoder.layers.{i}.multihead_attn.*  ->  decoder[i].cross_attention.*
    decoder.layers.{i}.linear{1,2}.*     ->  decoder[i].ffn.{hidden,out}.*    (as in the encoder)
    decoder.layers.{i}.norm{k}.*         ->  decoder[i].sublayers[k-1].norm.*      k = 1, 2, 3
    decoder.norm.{weight,bias}           ->  decoder_norm.{scale,bias}

torch's ``norm_first=True`` layer is x + sa(norm1(x)), x + ff(norm2(x)) (the decoder: self-
attention, cross-attention, feed-forward with norm1, norm2, norm3), then the stack's final
LayerNorm: exactly zoo's pre-LN sublayers and ``encoder_norm``/``decoder_norm`` (LayerNorm
ε = 1e-5 in both).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zoo.functional.cells import NUM_GATES


def _reversed(shape) -> tuple:
    """zoo shape -> torch shape of a transposed matrix or a vector (unchanged)."""
    return tuple(shape)[::-1]


def _stacked(shape) -> tuple:
    """zoo shape of one third of ``in_proj_weight``/``in_proj_bias`` -> the whole torch tensor's
    shape: (D_in, D) -> (3D, D_in), (D,) -> (3D,)."""
    return (3 * shape[-1],) + tuple(shape[:-1])


class _Entry(NamedTuple):
    """One zoo parameter taken from a torch tensor."""

    key: str  # the torch key
    value: jax.Array  # float32, in zoo's layout
    torch_shape: Callable = _reversed  # zoo shape -> the torch key's shape (for error messages)


def _array(value) -> jax.Array:
    return jnp.asarray(np.asarray(value), jnp.float32)


def _params(entries: dict) -> dict:
    """``{zoo path: _Entry}`` -> nested dict of the values (``nnx.to_pure_dict`` structure)."""
    return nnx.traversals.unflatten_mapping({path: entry.value for path, entry in entries.items()})


def _param_shapes(module) -> dict:
    """``{zoo path: array or ShapeDtypeStruct}`` of the module's parameters (abstract modules too)."""
    return nnx.traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(module, nnx.Param)))


def _read_state_dict(state_dict, expected: dict, where: str, scope=None) -> dict:
    """The checked arrays of a torch state dict: every key of ``expected`` must be present with
    its shape, and no other key of ``scope`` may be.

    Args:
      state_dict: mapping torch parameter name -> NumPy array (any float dtype).
      expected: torch key -> its shape in torch's layout.
      where: what the state dict is, for the messages (e.g. "torch lstm state dict").
      scope: the keys that must all be expected (None: every key of ``state_dict``).

    Returns:
      ``{torch key: float32 jax array}``, torch's layout, for the keys of ``expected``.

    Raises:
      ValueError: a missing key (naming its expected shape), a key of another shape (naming both),
        or an unexpected key (naming its shape); the first in ``expected``'s order, then by name.
    """
    for key, shape in expected.items():
        if key not in state_dict:
            raise ValueError(f"missing key {key!r} (expected shape {shape}) in the {where}")
        if _shape(state_dict[key]) != shape:
            raise ValueError(f"key {key!r} has shape {_shape(state_dict[key])}, expected {shape}")
    extra = sorted(set(state_dict if scope is None else scope) - set(expected))
    if extra:
        raise ValueError(f"unexpected key {extra[0]!r} (shape {_shape(state_dict[extra[0]])}) in the {where}")
    return {key: _array(state_dict[key]) for key in expected}


def _assign(module, entries: dict) -> None:
    """Overwrite the module's parameters at the paths of ``entries`` (``{zoo path: _Entry}``) in
    place, each array cast to the dtype of the parameter it replaces. Every shape is checked
    before anything is written.

    Raises:
      ValueError: a shape that does not fit the module, naming the torch key and both shapes in
        torch's layout.
    """
    state = nnx.state(module, nnx.Param)
    current = nnx.traversals.flatten_mapping(nnx.to_pure_dict(state))
    new = {}
    for path, entry in entries.items():
        ours = current[path]
        if tuple(ours.shape) != tuple(entry.value.shape):
            raise ValueError(f"key {entry.key!r} has shape {entry.torch_shape(entry.value.shape)}, "
                             f"but the module expects {entry.torch_shape(ours.shape)}")
        new[path] = entry.value.astype(ours.dtype)
    nnx.replace_by_pure_dict(state, nnx.traversals.unflatten_mapping(new))
    nnx.update(module, state)


# ---------------------------------------------------------------- recurrent layers

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
    return _params(_rnn_entries(state_dict, cell, num_layers, bidirectional))


def _rnn_entries(state_dict, cell: str, num_layers: int, bidirectional: bool) -> dict:
    """``{zoo path: _Entry}`` of :func:`torch_rnn_params`, after all of its checks."""
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
    shapes, paths = {}, {}  # torch key -> its shape, and its zoo path
    for layer in range(num_layers):
        d_in = ih0[1] if layer == 0 else width
        layer_shapes = {"w_i": (gates * hidden, d_in), "b_i": (gates * hidden,),
                        "w_h": (gates * hidden, hidden), "b_h": (gates * hidden,)}
        for direction, reverse in _directions(bidirectional):
            for name, shape in layer_shapes.items():
                key = _torch_key(name, layer, reverse)
                shapes[key] = shape
                paths[key] = ("layers", layer) + (() if direction is None else (direction,)) + (name,)
    arrays = _read_state_dict(state_dict, shapes, f"torch {cell} state dict for num_layers={num_layers}, "
                                                  f"bidirectional={bidirectional}")
    return {path: _Entry(key, arrays[key].T if path[-1].startswith("w_") else arrays[key]) for key, path in paths.items()}


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
    entries = _rnn_entries(state_dict, module.cell, len(layers), bidirectional)
    if module.cell == "gru":
        first = layers[0].forward if bidirectional else layers[0]
        if not first.reset_after:
            raise ValueError("the module's GRU has reset_after=False; torch's nn.GRU is the reset_after=True form")
    _assign(module, entries)


# ---------------------------------------------------------------- multi-head attention

_ATTENTION_SHAPES = {"in_proj_weight": (3, 1), "in_proj_bias": (3,), "out_proj.weight": (1, 1), "out_proj.bias": (1,)}
_SEPARATE = "kdim/vdim different from embed_dim (separate q/k/v projection weights)"
_UNSUPPORTED_ATTENTION = {"q_proj_weight": _SEPARATE, "k_proj_weight": _SEPARATE, "v_proj_weight": _SEPARATE,
                          "bias_k": "add_bias_kv=True", "bias_v": "add_bias_kv=True"}


def _attention_entries(state_dict, prefix: str) -> dict:
    """``{zoo name: _Entry}`` of the ``nn.MultiheadAttention`` under ``prefix``, after the checks of
    :func:`torch_attention_params` (keys outside ``prefix`` are not looked at)."""
    scope = sorted(k for k in state_dict if k.startswith(prefix))
    for key in scope:
        what = _UNSUPPORTED_ATTENTION.get(key[len(prefix):])
        if what is not None:
            raise ValueError(f"state dict key {key!r}: nn.MultiheadAttention with {what} is not supported; only "
                             "the default layout (kdim = vdim = embed_dim, bias=True, add_bias_kv=False)")
    if f"{prefix}in_proj_bias" not in state_dict and f"{prefix}out_proj.bias" not in state_dict:
        raise ValueError(f"no {prefix}in_proj_bias or {prefix}out_proj.bias key: nn.MultiheadAttention built with "
                         "bias=False is not supported")
    first = f"{prefix}in_proj_weight"
    if first not in state_dict:
        raise ValueError(f"missing key {first!r} in the torch nn.MultiheadAttention state dict")
    shape = _shape(state_dict[first])
    if len(shape) != 2 or shape[0] != 3 * shape[1]:
        raise ValueError(f"key {first!r} has shape {shape}, expected (3·D, D) (the stacked query, key and "
                         "value projections)")
    width = shape[1]
    expected = {prefix + name: tuple(n * width for n in factors) for name, factors in _ATTENTION_SHAPES.items()}
    arrays = _read_state_dict(state_dict, expected, "torch nn.MultiheadAttention state dict", scope)
    w_in, b_in = arrays[prefix + "in_proj_weight"], arrays[prefix + "in_proj_bias"]
    entries = {}
    for i, name in enumerate(("query", "key", "value")):
        rows = slice(i * width, (i + 1) * width)
        entries[f"w_{name}"] = _Entry(prefix + "in_proj_weight", w_in[rows].T, _stacked)
        entries[f"b_{name}"] = _Entry(prefix + "in_proj_bias", b_in[rows], _stacked)
    entries["w_out"] = _Entry(prefix + "out_proj.weight", arrays[prefix + "out_proj.weight"].T)
    entries["b_out"] = _Entry(prefix + "out_proj.bias", arrays[prefix + "out_proj.bias"])
    return entries


def _check_no_relative(module, where: str) -> None:
    if module.relative is not None:
        raise ValueError(f"{where} uses relative positions ({module.relative!r}), which torch's "
                         "nn.MultiheadAttention lacks: its outputs would differ from torch's")


def torch_attention_params(state_dict, prefix: str = "") -> dict:
    """zoo parameters of a :class:`zoo.nn.MultiHeadAttention` from a PyTorch
    ``nn.MultiheadAttention`` state dict (see the module docstring for the mapping).

    The width D is read from ``in_proj_weight`` (3D, D); every other key is checked against it.

    Args:
      state_dict: mapping torch parameter name -> NumPy array (any float dtype). Only the keys
        that start with ``prefix`` are read, and they must be exactly those of the default
        layout: ``in_proj_weight`` (3D, D), ``in_proj_bias`` (3D,), ``out_proj.weight`` (D, D),
        ``out_proj.bias`` (D,).
      prefix: where the attention sits in a bigger state dict, with the trailing dot, e.g.
        ``"encoder.layers.0.self_attn."``; "" for the module's own state dict.

    Returns:
      dict of float32 jax arrays with the structure of
      ``nnx.to_pure_dict(nnx.state(attention, nnx.Param))`` (no relative positions):
      ``w_query``, ``w_key``, ``w_value`` (D, D), ``b_query``, ``b_key``, ``b_value`` (D,),
      ``w_out`` (D, D), ``b_out`` (D,). Ready for ``nnx.update`` (or use :func:`load_torch_attention`).

    Raises:
      ValueError: ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` keys (kdim or vdim !=
        embed_dim) or ``bias_k``/``bias_v`` keys (add_bias_kv=True), unsupported; no bias keys
        (bias=False, unsupported); a missing key, an unexpected key under ``prefix``, or a key of
        the wrong shape (naming the key, the expected and the actual shape).
    """
    return _params({(name,): entry for name, entry in _attention_entries(state_dict, prefix).items()})


def load_torch_attention(module, state_dict, prefix: str = "") -> None:
    """Overwrite the parameters of a :class:`zoo.nn.MultiHeadAttention` in place with the weights
    of a PyTorch ``nn.MultiheadAttention(D, N)`` (default layout, see :func:`torch_attention_params`).

    The module must be ``MultiHeadAttention(D, N)`` with torch's width D and number of heads N
    (N is not in the state dict and cannot be checked) and no relative positions. Each array is
    cast to the dtype of the parameter it replaces; ``module`` may be abstract
    (``nnx.eval_shape``). Afterwards ``module(x_q, x_kv, mask)`` equals torch's
    ``(attn_output, attn_weights)`` of ``mha(x_q, x_kv, x_kv, average_attn_weights=False)`` for
    unbatched inputs (T, D), with ``mask`` the negation of torch's boolean masks: a
    ``key_padding_mask`` (Tk,) becomes ``~key_padding_mask[None, None, :]``, an ``attn_mask``
    (Tq, Tk) becomes ``~attn_mask[None]``.

    Args:
      module: a :class:`zoo.nn.MultiHeadAttention`.
      state_dict: mapping torch parameter name -> NumPy array.
      prefix: as in :func:`torch_attention_params`.

    Raises:
      ValueError: every error of :func:`torch_attention_params`; a module with relative
        positions; a torch key whose shape does not fit the module (naming the key, the torch
        and the module's shape in torch's layout, e.g. ``in_proj_weight`` (48, 16) for a module
        that expects (24, 8)).
    """
    _check_no_relative(module, "the module")
    entries = _attention_entries(state_dict, prefix)
    _assign(module, {(name,): entry for name, entry in entries.items()})


# ---------------------------------------------------------------- Transformer

_FFN = {"linear1": "hidden", "linear2": "out"}  # torch -> zoo FeedForward
_LAYER_NORM = {"weight": "scale", "bias": "bias"}  # torch -> nnx.LayerNorm
_STACKS = {  # stack -> (torch attention -> zoo attention, number of sublayers)
    "encoder": ({"self_attn": "self_attention"}, 2),
    "decoder": ({"self_attn": "self_attention", "multihead_attn": "cross_attention"}, 3),
}


def _num_layers(state_dict, stack: str) -> int:
    """1 + the largest i of the keys ``{stack}.layers.{i}.*`` (0 if none)."""
    start = f"{stack}.layers."
    indices = [k[len(start):].split(".", 1)[0] for k in state_dict if k.startswith(start)]
    return 1 + max((int(i) for i in indices if i.isdigit()), default=-1)


def load_torch_transformer(model, state_dict) -> None:
    """Overwrite the layers of a pre-LN :class:`zoo.models.transformer.Transformer` in place with
    the weights of a PyTorch ``nn.Transformer`` built with ``norm_first=True`` (see the module
    docstring for the mapping).

    ``nn.Transformer`` has no embeddings, positional encodings or output layer: only its layers
    and the two final LayerNorms are imported; ``src_embed``, ``tgt_embed``, learned position
    tables and ``output`` keep their values. The state dict does not say ``norm_first``,
    ``activation`` or ``layer_norm_eps``: the importer expects ``norm_first=True``,
    ``activation="relu"`` and the default ``layer_norm_eps=1e-5`` (a ``norm_first=False`` state
    dict has the same keys and would load, but compute something else). The model must match
    torch's d_model, nhead (not in the state dict, cannot be checked), dim_feedforward and layer
    counts, and use an absolute positional encoding (``config.positional`` sinusoidal,
    sinusoidal-concat or learned). Each array is cast to the dtype of the parameter it replaces;
    ``model`` may be abstract (``nnx.eval_shape``). Nothing is written unless every check passes.

    Afterwards, on one example, the zoo layers equal torch's on the same (S, D) and (T, D) inputs:
    ``x = encoder_norm(encoder layers(x, positions, src_length))`` is ``nn.Transformer.encoder``
    with ``src_key_padding_mask`` True past ``src_length`` (on the real positions), and the
    decoder layers (causal self-attention, the cross-attention keys and values of x and
    ``src_length``) followed by ``decoder_norm`` are ``nn.Transformer.decoder`` with a causal
    ``tgt_mask`` and the same ``memory_key_padding_mask``.

    Args:
      model: a :class:`zoo.models.transformer.Transformer` with ``config.norm == "pre"``.
      state_dict: mapping torch parameter name -> NumPy array, exactly the keys of
        ``nn.Transformer(...).state_dict()`` (``encoder.layers.{i}.*``, ``encoder.norm.*``,
        ``decoder.layers.{i}.*``, ``decoder.norm.*``).

    Raises:
      ValueError: a post-LN model (``config.norm == "post"``: torch's ``nn.Transformer`` always
        ends each stack with a LayerNorm, ``encoder.norm``/``decoder.norm``, which the paper's
        post-LN model lacks); a model with relative positions (``shaw``, ``rope``, ``alibi``:
        torch's attention has none); a different number of encoder or decoder layers; every error
        of :func:`torch_attention_params` for each attention; a missing key, an unexpected key, or
        a key whose shape does not fit the model (naming the key and both shapes in torch's
        layout).
    """
    config = model.config
    if config.norm != "pre":
        raise ValueError(f"the model is post-LN (config.norm={config.norm!r}), the paper's layout, which has no final "
                         "LayerNorm; torch's nn.Transformer always adds a final LayerNorm (encoder.norm, decoder.norm) "
                         "after its layers, so post-LN (norm_first=False) torch weights have no zoo counterpart. Import "
                         "a norm_first=True nn.Transformer into a model with norm='pre'")
    entries, paths = {}, {}  # zoo path -> _Entry of the attentions; torch key -> zoo path of the rest
    for stack, (attentions, num_sublayers) in _STACKS.items():
        layers = list(getattr(model, stack))
        found = _num_layers(state_dict, stack)
        if found != len(layers):
            raise ValueError(f"the state dict has {found} {stack} layer(s) ({stack}.layers.{{i}}.*), but the model has "
                             f"{len(layers)} (config.num_{stack}_layers)")
        for i, layer in enumerate(layers):
            prefix = f"{stack}.layers.{i}."
            for torch_name, zoo_name in attentions.items():
                _check_no_relative(getattr(layer, zoo_name), f"{stack}[{i}].{zoo_name}")
                for name, entry in _attention_entries(state_dict, f"{prefix}{torch_name}.").items():
                    entries[(stack, i, zoo_name, name)] = entry
            for torch_name, zoo_name in _FFN.items():
                paths[f"{prefix}{torch_name}.weight"] = (stack, i, "ffn", zoo_name, "kernel")
                paths[f"{prefix}{torch_name}.bias"] = (stack, i, "ffn", zoo_name, "bias")
            for k in range(num_sublayers):
                for torch_name, zoo_name in _LAYER_NORM.items():
                    paths[f"{prefix}norm{k + 1}.{torch_name}"] = (stack, i, "sublayers", k, "norm", zoo_name)
        for torch_name, zoo_name in _LAYER_NORM.items():
            paths[f"{stack}.norm.{torch_name}"] = (f"{stack}_norm", zoo_name)

    shapes = _param_shapes(model)
    arrays = _read_state_dict(state_dict, {key: _reversed(shapes[path].shape) for key, path in paths.items()},
                              "torch nn.Transformer state dict", set(state_dict) - {e.key for e in entries.values()})
    for key, path in paths.items():  # kernels (D_in, D_out) are torch's weights (D_out, D_in) transposed
        entries[path] = _Entry(key, arrays[key].T if path[-1] == "kernel" else arrays[key])
    _assign(model, entries)
