"""Tests of zoo.interop: PyTorch nn.RNN/nn.LSTM/nn.GRU weights imported into zoo.

The mapping tests use hand-made NumPy arrays and always run; the comparisons with real torch
modules skip when torch is not installed (zoo itself never imports it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zoo.functional import cells
from zoo.interop import load_torch_rnn, torch_rnn_params
from zoo.nn import StackedRNN

F32 = np.float32
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _state_dict(cell, input_dim, hidden, num_layers, bidirectional, seed=0):
    """Random torch-layout state dict (NumPy float32), keys as torch names them."""
    rng = np.random.default_rng(seed)
    g = GATES[cell] * hidden
    sd = {}
    for k in range(num_layers):
        d_in = input_dim if k == 0 else hidden * (2 if bidirectional else 1)
        for suffix in ["", "_reverse"] if bidirectional else [""]:
            sd[f"weight_ih_l{k}{suffix}"] = rng.standard_normal((g, d_in)).astype(F32)
            sd[f"weight_hh_l{k}{suffix}"] = rng.standard_normal((g, hidden)).astype(F32)
            sd[f"bias_ih_l{k}{suffix}"] = rng.standard_normal((g,)).astype(F32)
            sd[f"bias_hh_l{k}{suffix}"] = rng.standard_normal((g,)).astype(F32)
    return sd


# ---------------------------------------------------------------- mapping, NumPy only


def test_gru_mapping_matches_torch_equations():
    """1-layer GRU, D = 2, H = 2: zoo params are the transposes, and one zoo step equals the
    torch equations (reset gate applied after the hidden product) computed in NumPy."""
    w_ih = (np.arange(12, dtype=F32).reshape(6, 2) - 6.0) / 10.0   # (3H, D), gates [r, z, n]
    w_hh = (np.arange(12, dtype=F32).reshape(6, 2)[::-1] - 5.0) / 8.0  # (3H, H)
    b_ih = np.linspace(-0.3, 0.3, 6).astype(F32)
    b_hh = np.linspace(0.2, -0.4, 6).astype(F32)
    sd = {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh, "bias_ih_l0": b_ih, "bias_hh_l0": b_hh}

    params = torch_rnn_params(sd, "gru", num_layers=1, bidirectional=False)
    assert set(params) == {"layers"} and set(params["layers"]) == {0}
    p = params["layers"][0]
    np.testing.assert_array_equal(p["w_i"], w_ih.T)
    np.testing.assert_array_equal(p["w_h"], w_hh.T)
    np.testing.assert_array_equal(p["b_i"], b_ih)
    np.testing.assert_array_equal(p["b_h"], b_hh)
    assert all(v.dtype == jnp.float32 for v in p.values())

    x, h = np.array([0.5, -1.0], F32), np.array([0.25, -0.75], F32)
    gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
    r = _sigmoid(gi[0:2] + gh[0:2])
    z = _sigmoid(gi[2:4] + gh[2:4])
    n = np.tanh(gi[4:6] + r * gh[4:6])
    expected = (1 - z) * n + z * h
    _, got = cells.gru_cell(p, jnp.asarray(h), jnp.asarray(x))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_lstm_and_rnn_steps_match_torch_equations():
    rng = np.random.default_rng(1)
    x, h, c = (rng.standard_normal(n).astype(F32) for n in (3, 2, 2))
    sd = _state_dict("lstm", 3, 2, 1, False, seed=2)
    p = torch_rnn_params(sd, "lstm", 1, False)["layers"][0]
    gates = sd["weight_ih_l0"] @ x + sd["bias_ih_l0"] + sd["weight_hh_l0"] @ h + sd["bias_hh_l0"]
    i, f, g, o = np.split(gates, 4)
    c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h_new = _sigmoid(o) * np.tanh(c_new)
    (h_got, c_got), _ = cells.lstm_cell(p, (jnp.asarray(h), jnp.asarray(c)), jnp.asarray(x))
    np.testing.assert_allclose(h_got, h_new, atol=1e-6)
    np.testing.assert_allclose(c_got, c_new, atol=1e-6)

    sd = _state_dict("rnn", 3, 2, 1, False, seed=3)
    p = torch_rnn_params(sd, "rnn", 1, False)["layers"][0]
    expected = np.tanh(sd["weight_ih_l0"] @ x + sd["bias_ih_l0"] + sd["weight_hh_l0"] @ h + sd["bias_hh_l0"])
    _, got = cells.elman_cell(p, jnp.asarray(h), jnp.asarray(x))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bidirectional_stack_placement_and_structure():
    """Every torch tensor lands where it should: layer k -> layers[k], _reverse -> backward;
    the result has exactly the structure of the module's own parameters."""
    sd = _state_dict("lstm", 3, 2, 2, True)
    params = torch_rnn_params(sd, "lstm", 2, True)
    module = nnx.eval_shape(lambda: StackedRNN("lstm", 3, 2, 2, bidirectional=True, rngs=nnx.Rngs(0)))
    ours = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    assert jax.tree.structure(params) == jax.tree.structure(ours)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ours)
    for k in range(2):
        for direction, suffix in [("forward", ""), ("backward", "_reverse")]:
            p = params["layers"][k][direction]
            np.testing.assert_array_equal(p["w_i"], sd[f"weight_ih_l{k}{suffix}"].T)
            np.testing.assert_array_equal(p["w_h"], sd[f"weight_hh_l{k}{suffix}"].T)
            np.testing.assert_array_equal(p["b_i"], sd[f"bias_ih_l{k}{suffix}"])
            np.testing.assert_array_equal(p["b_h"], sd[f"bias_hh_l{k}{suffix}"])


def test_load_updates_module_in_place_and_casts():
    sd = {k: v.astype(np.float64) for k, v in _state_dict("gru", 3, 2, 2, False).items()}
    module = StackedRNN("gru", 3, 2, 2, rngs=nnx.Rngs(0))
    load_torch_rnn(module, sd)
    assert module.layers[1].w_h[...].dtype == jnp.float32
    np.testing.assert_allclose(module.layers[1].w_h[...], sd["weight_hh_l1"].T, rtol=1e-6)
    np.testing.assert_allclose(module.layers[0].b_i[...], sd["bias_ih_l0"], rtol=1e-6)


# ---------------------------------------------------------------- errors


def test_wrong_shape_names_key_and_shapes():
    sd = _state_dict("gru", 3, 2, 2, False)
    sd["weight_hh_l1"] = np.zeros((6, 3), F32)
    with pytest.raises(ValueError, match=r"'weight_hh_l1' has shape \(6, 3\), expected \(6, 2\)"):
        torch_rnn_params(sd, "gru", 2, False)


def test_wrong_cell_for_state_dict():
    with pytest.raises(ValueError, match=r"'weight_hh_l0' has shape \(6, 2\).*'lstm'"):
        torch_rnn_params(_state_dict("gru", 3, 2, 1, False), "lstm", 1, False)


def test_missing_and_extra_keys():
    sd = _state_dict("rnn", 3, 2, 1, True)
    del sd["bias_hh_l0_reverse"]
    with pytest.raises(ValueError, match=r"missing key 'bias_hh_l0_reverse' \(expected shape \(2,\)\)"):
        torch_rnn_params(sd, "rnn", 1, True)
    # a 2-layer state dict read as 1 layer
    with pytest.raises(ValueError, match=r"unexpected key 'bias_hh_l1' \(shape \(2,\)\)"):
        torch_rnn_params(_state_dict("rnn", 3, 2, 2, False), "rnn", 1, False)
    # a bidirectional state dict read as unidirectional
    with pytest.raises(ValueError, match=r"unexpected key 'bias_hh_l0_reverse'"):
        torch_rnn_params(_state_dict("rnn", 3, 2, 1, True), "rnn", 1, False)


def test_unsupported_variants_and_unknown_cell():
    sd = _state_dict("lstm", 3, 4, 1, False)
    with pytest.raises(ValueError, match=r"'weight_hr_l0'.*proj_size"):
        torch_rnn_params({**sd, "weight_hr_l0": np.zeros((2, 4), F32)}, "lstm", 1, False)
    no_bias = {k: v for k, v in sd.items() if not k.startswith("bias_")}
    with pytest.raises(ValueError, match="bias=False"):
        torch_rnn_params(no_bias, "lstm", 1, False)
    with pytest.raises(ValueError, match="unknown cell 'elman'"):
        torch_rnn_params(sd, "elman", 1, False)


def test_load_rejects_mismatched_module():
    sd = _state_dict("gru", 3, 2, 1, False)
    with pytest.raises(ValueError, match=r"'weight_ih_l0' has shape \(6, 3\), but the module expects \(6, 5\)"):
        load_torch_rnn(StackedRNN("gru", 5, 2, 1, rngs=nnx.Rngs(0)), sd)
    with pytest.raises(ValueError, match="reset_after=False"):
        load_torch_rnn(StackedRNN("gru", 3, 2, 1, reset_after=False, rngs=nnx.Rngs(0)), sd)
    with pytest.raises(ValueError, match="missing key 'weight_ih_l1'"):
        load_torch_rnn(StackedRNN("gru", 3, 2, 2, rngs=nnx.Rngs(0)), sd)


# ---------------------------------------------------------------- against torch

CONFIGS = [(cell, layers, bidir) for cell in ("rnn", "lstm", "gru") for layers in (1, 2) for bidir in (False, True)]
D, H, B, T = 3, 4, 3, 5


def _torch_module(torch, cell, num_layers, bidirectional, seed):
    torch.manual_seed(seed)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    return cls(D, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True).eval()


def _zoo_from_torch(tm, cell, num_layers, bidirectional):
    """An abstract StackedRNN (nnx.eval_shape: no random initialisation) filled from torch."""
    module = nnx.eval_shape(lambda: StackedRNN(cell, D, H, num_layers, bidirectional=bidirectional, rngs=nnx.Rngs(0)))
    load_torch_rnn(module, {k: v.detach().numpy() for k, v in tm.state_dict().items()})
    return module


def _zoo_final_states(cell, carries, bidirectional):
    """zoo carries -> torch's (h_n, c_n) layout: (num_layers·dirs, B, H) each (c_n None unless LSTM)."""
    per_direction = [c for layer in carries for c in (layer if bidirectional else (layer,))]
    if cell == "lstm":
        return np.stack([h for h, _ in per_direction]), np.stack([c for _, c in per_direction])
    return np.stack(per_direction), None


def _compare(torch, tm, module, cell, bidirectional, xs, lengths):
    """Run torch (packed when lengths are given) and zoo (vmapped with seq_length) on xs (B, T, D)."""
    x_t = torch.from_numpy(xs)
    with torch.no_grad():
        if lengths is None:
            out_t, state_t = tm(x_t)
        else:
            packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(lengths), batch_first=True,
                                                             enforce_sorted=False)
            out_p, state_t = tm(packed)
            out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True, total_length=T)
    h_t, c_t = state_t if cell == "lstm" else (state_t, None)

    seq_length = jnp.asarray(np.full(B, T) if lengths is None else np.asarray(lengths), jnp.int32)
    out_z, carries = jax.jit(jax.vmap(lambda x, n: module(x, n)))(jnp.asarray(xs, jnp.float32), seq_length)
    h_z, c_z = _zoo_final_states(cell, carries, bidirectional)

    np.testing.assert_allclose(np.asarray(out_z), out_t.numpy(), atol=1e-5)  # padding: zero in both
    np.testing.assert_allclose(h_z, h_t.numpy(), atol=1e-5)
    if cell == "lstm":
        np.testing.assert_allclose(c_z, c_t.numpy(), atol=1e-5)


@pytest.mark.parametrize("cell,num_layers,bidirectional", CONFIGS)
def test_matches_torch(cell, num_layers, bidirectional):
    torch = pytest.importorskip("torch")
    tm = _torch_module(torch, cell, num_layers, bidirectional, seed=10 + num_layers)
    module = _zoo_from_torch(tm, cell, num_layers, bidirectional)
    xs = np.random.default_rng(0).standard_normal((B, T, D)).astype(F32)
    _compare(torch, tm, module, cell, bidirectional, xs, None)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_matches_torch_packed_padded_batch(cell, bidirectional):
    """Unsorted lengths with padding: torch packs, zoo masks with seq_length under vmap; real
    positions and final states agree (torch pads its outputs with zeros, as zoo does)."""
    torch = pytest.importorskip("torch")
    tm = _torch_module(torch, cell, 2, bidirectional, seed=7)
    module = _zoo_from_torch(tm, cell, 2, bidirectional)
    xs = np.random.default_rng(1).standard_normal((B, T, D)).astype(F32)
    lengths = [3, T, 1]
    xs[0, 3:] = 100.0  # garbage in the padding must not leak into anything
    xs[2, 1:] = -100.0
    _compare(torch, tm, module, cell, bidirectional, xs, lengths)


def test_interop_never_imports_torch():
    import ast
    import zoo.interop

    tree = ast.parse(open(zoo.interop.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported
