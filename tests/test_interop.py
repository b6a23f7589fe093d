"""Tests of zoo.interop: PyTorch nn.RNN/nn.LSTM/nn.GRU, nn.MultiheadAttention and nn.Transformer
weights imported into zoo.

The mapping tests use hand-made NumPy arrays and always run; the comparisons with real torch
modules skip when torch is not installed (zoo itself never imports it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zoo
from zoo.functional import cells
from zoo.interop import load_torch_attention, load_torch_rnn, load_torch_transformer, torch_attention_params, torch_rnn_params
from zoo.nn import MultiHeadAttention, StackedRNN

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
    """Run torch (packed) and zoo (vmapped with seq_length) on xs (B, T, D) with ``lengths``."""
    x_t = torch.from_numpy(xs)
    with torch.no_grad():
        packed = torch.nn.utils.rnn.pack_padded_sequence(x_t, torch.tensor(lengths), batch_first=True,
                                                         enforce_sorted=False)
        out_p, state_t = tm(packed)
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, batch_first=True, total_length=T)
    h_t, c_t = state_t if cell == "lstm" else (state_t, None)

    seq_length = jnp.asarray(np.asarray(lengths), jnp.int32)
    out_z, carries = jax.jit(jax.vmap(lambda x, n: module(x, n)))(jnp.asarray(xs, jnp.float32), seq_length)
    h_z, c_z = _zoo_final_states(cell, carries, bidirectional)

    np.testing.assert_allclose(np.asarray(out_z), out_t.numpy(), atol=1e-5)  # padding: zero in both
    np.testing.assert_allclose(h_z, h_t.numpy(), atol=1e-5)
    if cell == "lstm":
        np.testing.assert_allclose(c_z, c_t.numpy(), atol=1e-5)


@pytest.mark.parametrize("cell,num_layers,bidirectional", CONFIGS)
def test_matches_torch_on_a_packed_padded_batch(cell, num_layers, bidirectional):
    """Unsorted lengths with padding, one row full-length: torch packs, zoo masks with seq_length
    under vmap; real positions and final states agree (torch pads its outputs with zeros, as zoo does)."""
    torch = pytest.importorskip("torch")
    tm = _torch_module(torch, cell, num_layers, bidirectional, seed=10 + num_layers)
    module = _zoo_from_torch(tm, cell, num_layers, bidirectional)
    xs = np.random.default_rng(1).standard_normal((B, T, D)).astype(F32)
    lengths = [3, T, 1]
    xs[0, 3:] = 100.0  # garbage in the padding must not leak into anything
    xs[2, 1:] = -100.0
    _compare(torch, tm, module, cell, bidirectional, xs, lengths)


# ---------------------------------------------------------------- multi-head attention and Transformer

DM, HEADS, FF, S_LEN, T_LEN = 16, 4, 32, 5, 4


def _attention_state_dict(d, prefix="", rng=None):
    """Random nn.MultiheadAttention(d, ·) state dict (NumPy float32), default layout."""
    rng = np.random.default_rng(0) if rng is None else rng
    return {prefix + "in_proj_weight": rng.standard_normal((3 * d, d)).astype(F32),
            prefix + "in_proj_bias": rng.standard_normal(3 * d).astype(F32),
            prefix + "out_proj.weight": rng.standard_normal((d, d)).astype(F32),
            prefix + "out_proj.bias": rng.standard_normal(d).astype(F32)}


def _transformer_state_dict(num_encoder=2, num_decoder=2, d=DM, ff=FF, seed=0):
    """Random nn.Transformer(d, ·, num_encoder, num_decoder, ff) state dict, keys as torch names them."""
    rng = np.random.default_rng(seed)
    sd = {}
    for stack, n, attentions, norms in (("encoder", num_encoder, ["self_attn"], 2),
                                        ("decoder", num_decoder, ["self_attn", "multihead_attn"], 3)):
        for i in range(n):
            prefix = f"{stack}.layers.{i}."
            for name in attentions:
                sd.update(_attention_state_dict(d, f"{prefix}{name}.", rng))
            sd[prefix + "linear1.weight"] = rng.standard_normal((ff, d)).astype(F32)
            sd[prefix + "linear1.bias"] = rng.standard_normal(ff).astype(F32)
            sd[prefix + "linear2.weight"] = rng.standard_normal((d, ff)).astype(F32)
            sd[prefix + "linear2.bias"] = rng.standard_normal(d).astype(F32)
            for k in range(1, norms + 1):
                sd[f"{prefix}norm{k}.weight"] = rng.standard_normal(d).astype(F32)
                sd[f"{prefix}norm{k}.bias"] = rng.standard_normal(d).astype(F32)
        sd[f"{stack}.norm.weight"] = rng.standard_normal(d).astype(F32)
        sd[f"{stack}.norm.bias"] = rng.standard_normal(d).astype(F32)
    return sd


def _transformer(**overrides):
    sizes = {"src_vocab_size": 11, "tgt_vocab_size": 13, "d_model": DM, "num_heads": HEADS, "d_ff": FF,
             "num_encoder_layers": 2, "num_decoder_layers": 2, "max_length": 8, "dropout": 0.0}
    return zoo.build("transformer", **{**sizes, **overrides})


def test_attention_mapping_and_structure():
    sd = _attention_state_dict(DM, "attn.")
    params = torch_attention_params(sd, prefix="attn.")
    module = nnx.eval_shape(lambda: MultiHeadAttention(DM, HEADS, rngs=nnx.Rngs(0)))
    ours = nnx.to_pure_dict(nnx.state(module, nnx.Param))
    assert jax.tree.structure(params) == jax.tree.structure(ours)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ours)
    w, b = sd["attn.in_proj_weight"], sd["attn.in_proj_bias"]
    for i, name in enumerate(("query", "key", "value")):
        np.testing.assert_array_equal(params[f"w_{name}"], w[i * DM:(i + 1) * DM].T)
        np.testing.assert_array_equal(params[f"b_{name}"], b[i * DM:(i + 1) * DM])
    np.testing.assert_array_equal(params["w_out"], sd["attn.out_proj.weight"].T)
    np.testing.assert_array_equal(params["b_out"], sd["attn.out_proj.bias"])

    module = MultiHeadAttention(DM, HEADS, rngs=nnx.Rngs(0))
    load_torch_attention(module, {k: v.astype(np.float64) for k, v in sd.items()}, prefix="attn.")
    assert module.w_key[...].dtype == jnp.float32
    np.testing.assert_allclose(module.w_key[...], w[DM:2 * DM].T, rtol=1e-6)


def test_attention_errors():
    sd = _attention_state_dict(DM)
    with pytest.raises(ValueError, match=r"'q_proj_weight'.*kdim/vdim"):
        torch_attention_params({**sd, "q_proj_weight": np.zeros((DM, 8), F32)})
    with pytest.raises(ValueError, match=r"'bias_k'.*add_bias_kv=True"):
        torch_attention_params({**sd, "bias_k": np.zeros((1, 1, DM), F32)})
    with pytest.raises(ValueError, match="bias=False"):
        torch_attention_params({k: v for k, v in sd.items() if "bias" not in k})
    with pytest.raises(ValueError, match=r"missing key 'out_proj.bias' \(expected shape \(16,\)\)"):
        torch_attention_params({k: v for k, v in sd.items() if k != "out_proj.bias"})
    with pytest.raises(ValueError, match=r"'in_proj_weight' has shape \(40, 16\), expected \(3·D, D\)"):
        torch_attention_params({**sd, "in_proj_weight": np.zeros((40, DM), F32)})
    with pytest.raises(ValueError, match=r"'out_proj.weight' has shape \(16, 8\), expected \(16, 16\)"):
        torch_attention_params({**sd, "out_proj.weight": np.zeros((DM, 8), F32)})
    with pytest.raises(ValueError, match=r"unexpected key 'extra'"):
        torch_attention_params({**sd, "extra": np.zeros(3, F32)})
    with pytest.raises(ValueError, match=r"'in_proj_weight' has shape \(48, 16\), but the module expects \(24, 8\)"):
        load_torch_attention(MultiHeadAttention(8, 2, rngs=nnx.Rngs(0)), sd)
    with pytest.raises(ValueError, match=r"relative positions \('rope'\)"):
        load_torch_attention(MultiHeadAttention(DM, HEADS, relative="rope", rngs=nnx.Rngs(0)), sd)


def test_transformer_mapping():
    """Every torch tensor lands where it should; the embeddings are left alone."""
    sd = _transformer_state_dict()
    model = _transformer()
    embedding = np.asarray(model.src_embed.embedding[...])
    load_torch_transformer(model, sd)
    np.testing.assert_array_equal(model.src_embed.embedding[...], embedding)
    enc, dec = model.encoder[1], model.decoder[1]
    np.testing.assert_array_equal(enc.ffn.hidden.kernel[...], sd["encoder.layers.1.linear1.weight"].T)
    np.testing.assert_array_equal(enc.ffn.out.bias[...], sd["encoder.layers.1.linear2.bias"])
    np.testing.assert_array_equal(enc.sublayers[1].norm.scale[...], sd["encoder.layers.1.norm2.weight"])
    np.testing.assert_array_equal(enc.self_attention.w_value[...], sd["encoder.layers.1.self_attn.in_proj_weight"][2 * DM:].T)
    np.testing.assert_array_equal(dec.cross_attention.w_out[...], sd["decoder.layers.1.multihead_attn.out_proj.weight"].T)
    np.testing.assert_array_equal(dec.self_attention.b_query[...], sd["decoder.layers.1.self_attn.in_proj_bias"][:DM])
    np.testing.assert_array_equal(dec.sublayers[2].norm.bias[...], sd["decoder.layers.1.norm3.bias"])
    np.testing.assert_array_equal(model.encoder_norm.scale[...], sd["encoder.norm.weight"])
    np.testing.assert_array_equal(model.decoder_norm.bias[...], sd["decoder.norm.bias"])
    # an abstract model (no random initialisation) loads too
    abstract = nnx.eval_shape(_transformer)
    load_torch_transformer(abstract, sd)
    np.testing.assert_array_equal(abstract.decoder[0].ffn.hidden.bias[...], sd["decoder.layers.0.linear1.bias"])


def test_transformer_errors():
    sd = _transformer_state_dict()
    model = _transformer()
    with pytest.raises(ValueError, match=r"3 encoder layer\(s\).*model has 2 \(config.num_encoder_layers\)"):
        load_torch_transformer(model, _transformer_state_dict(num_encoder=3))
    with pytest.raises(ValueError, match=r"1 decoder layer\(s\).*model has 2 \(config.num_decoder_layers\)"):
        load_torch_transformer(model, _transformer_state_dict(num_decoder=1))
    with pytest.raises(ValueError, match=r"post-LN.*final LayerNorm"):
        load_torch_transformer(_transformer(norm="post"), sd)
    with pytest.raises(ValueError, match=r"encoder\[0\].self_attention uses relative positions \('alibi'\)"):
        load_torch_transformer(_transformer(positional="alibi"), sd)
    with pytest.raises(ValueError, match=r"missing key 'decoder.norm.bias' \(expected shape \(16,\)\)"):
        load_torch_transformer(model, {k: v for k, v in sd.items() if k != "decoder.norm.bias"})
    with pytest.raises(ValueError, match=r"missing key 'encoder.layers.1.self_attn.in_proj_weight'"):
        load_torch_transformer(model, {k: v for k, v in sd.items() if k != "encoder.layers.1.self_attn.in_proj_weight"})
    with pytest.raises(ValueError, match=r"unexpected key 'encoder.layers.0.norm3.weight'"):
        load_torch_transformer(model, {**sd, "encoder.layers.0.norm3.weight": np.zeros(DM, F32)})
    # a different dim_feedforward; nothing is written when a check fails
    before = np.asarray(model.encoder[0].self_attention.w_query[...])
    with pytest.raises(ValueError, match=r"'encoder.layers.0.linear1.weight' has shape \(64, 16\), expected \(32, 16\)"):
        load_torch_transformer(model, _transformer_state_dict(ff=64))
    np.testing.assert_array_equal(model.encoder[0].self_attention.w_query[...], before)


def _numpy_state_dict(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def test_attention_matches_torch():
    """nn.MultiheadAttention, unbatched: cross-attention with a key_padding_mask, and
    self-attention with a causal attn_mask; outputs and per-head weights (N, Tq, Tk)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.MultiheadAttention(DM, HEADS).eval()
    module = nnx.eval_shape(lambda: MultiHeadAttention(DM, HEADS, rngs=nnx.Rngs(0)))
    load_torch_attention(module, _numpy_state_dict(tm))
    rng = np.random.default_rng(0)
    q, kv = rng.standard_normal((T_LEN, DM)).astype(F32), rng.standard_normal((S_LEN, DM)).astype(F32)
    padding = np.zeros(S_LEN, bool)
    padding[-1] = True  # torch: True = ignore
    causal = ~np.tril(np.ones((S_LEN, S_LEN), bool))
    cases = [(q, kv, {"key_padding_mask": torch.from_numpy(padding)}, (S_LEN - 1, False)),
             (kv, kv, {"attn_mask": torch.from_numpy(causal)}, (None, True))]
    graphdef, state = nnx.split(module)

    @jax.jit  # both cases in one program
    def zoo_cases(state):
        attention = nnx.merge(graphdef, state)
        return [attention(jnp.asarray(x_q), jnp.asarray(x_kv), key_length, is_causal, return_weights=True)
                for x_q, x_kv, _, (key_length, is_causal) in cases]

    for (x_q, x_kv, torch_masks, _), (out_z, w_z) in zip(cases, zoo_cases(state), strict=True):
        with torch.no_grad():
            out_t, w_t = tm(torch.from_numpy(x_q), torch.from_numpy(x_kv), torch.from_numpy(x_kv),
                            average_attn_weights=False, **torch_masks)
        assert w_z.shape == tuple(w_t.shape) == (HEADS, x_q.shape[0], x_kv.shape[0])
        np.testing.assert_allclose(np.asarray(out_z), out_t.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(w_z), w_t.numpy(), atol=1e-5)


# nn.Transformer builds its encoder with enable_nested_tensor=True, which torch itself turns off for norm_first
@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True:UserWarning")
def test_transformer_matches_torch():
    """nn.Transformer(norm_first=True) on one padded source and a causal target: the encoder
    output (real positions) and the decoder output equal zoo's layers run directly."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Transformer(DM, HEADS, 2, 2, FF, dropout=0.0, batch_first=True, norm_first=True).eval()
    model = nnx.eval_shape(_transformer)
    load_torch_transformer(model, _numpy_state_dict(tm))

    rng = np.random.default_rng(1)
    src, tgt = rng.standard_normal((S_LEN, DM)).astype(F32), rng.standard_normal((T_LEN, DM)).astype(F32)
    src_mask = np.arange(S_LEN) < S_LEN - 1  # the last source position is padding
    with torch.no_grad():
        padding = torch.from_numpy(~src_mask)[None]
        tgt_mask = torch.nn.Transformer.generate_square_subsequent_mask(T_LEN)
        memory_t = tm.encoder(torch.from_numpy(src)[None], src_key_padding_mask=padding)[0]
        out_t = tm(torch.from_numpy(src)[None], torch.from_numpy(tgt)[None], tgt_mask=tgt_mask, tgt_is_causal=True,
                   src_key_padding_mask=padding, memory_key_padding_mask=padding)[0]

    graphdef, state = nnx.split(model)

    @jax.jit  # the layers in one program
    def zoo_layers(state):
        model = nnx.merge(graphdef, state)
        positions, tgt_positions, src_length = jnp.arange(S_LEN), jnp.arange(T_LEN), S_LEN - 1
        x = jnp.asarray(src)
        for layer in model.encoder:
            x = layer(x, positions, src_length)
        x = model.encoder_norm(x)
        cross_kv = [layer.cross_attention.keys_values(x, positions) for layer in model.decoder]
        y = jnp.asarray(tgt)
        for layer, kv in zip(model.decoder, cross_kv):
            y, _, _ = layer(y, tgt_positions, kv, src_length)
        return x, model.decoder_norm(y)

    x, y = zoo_layers(state)

    np.testing.assert_allclose(np.asarray(x)[src_mask], memory_t.numpy()[src_mask], atol=1e-5)
    np.testing.assert_allclose(np.asarray(y), out_t.numpy(), atol=1e-5)


def test_interop_never_imports_torch():
    import ast

    import zoo.interop

    tree = ast.parse(open(zoo.interop.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported
