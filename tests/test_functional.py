"""Tests of the pure functions in zoo.functional against hand-computed values.

Runs under the strict settings of conftest.py (dtype promotion "strict", rank promotion
"raise"), so every test also checks that the code never relies on implicit promotion.
"""

import os

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest

from zoo.functional import attention, cells, convolution, layers, masks

F32 = np.float32


def _softmax(a):
    e = np.exp(a - a.max())
    return e / e.sum()


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _normal(seed, shape, scale=1.0):
    """float32 test data from NumPy (cheaper than compiling jax.random for every shape)."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _random_gru_params(seed, d, h, scale=0.5):
    return {
        "w_i": _normal(100 + 10 * seed + 1, (d, 3 * h), scale),
        "b_i": _normal(100 + 10 * seed + 2, (3 * h,), scale),
        "w_h": _normal(100 + 10 * seed + 3, (h, 3 * h), scale),
        "b_h": _normal(100 + 10 * seed + 4, (3 * h,), scale),
    }


# --------------------------------------------------------------------------- session config


def test_session_config_is_strict_float32():
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    assert jax.config.jax_numpy_rank_promotion == "raise"
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(3).dtype == jnp.float32
    with pytest.raises(Exception):  # strict promotion: f32 + i32 must not silently promote
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.int32)
    with pytest.raises(ValueError):  # no implicit rank promotion
        jnp.ones((2, 3)) + jnp.ones(3)


def test_session_has_four_cpu_devices():
    if "--xla_force_host_platform_device_count=4" not in os.environ.get("XLA_FLAGS", "").split():
        pytest.skip("XLA_FLAGS was overridden from outside")
    assert len(jax.devices("cpu")) == 4


# --------------------------------------------------------------------------- masks


def test_length_mask():
    np.testing.assert_array_equal(masks.length_mask(3, 5), [True, True, True, False, False])
    np.testing.assert_array_equal(masks.length_mask(0, 3), [False, False, False])
    np.testing.assert_array_equal(masks.length_mask(jnp.int32(4), 4), [True] * 4)


# --------------------------------------------------------------------------- GRU cell

# D = 2, H = 2. Columns of w_i / w_h / b_* are gates [r0 r1 | z0 z1 | n0 n1].
HAND_PARAMS = {
    "w_i": np.array([[0.5, -0.3, 0.2, 0.1, 0.4, -0.6],
                     [0.5, 0.2, 0.2, -0.4, 0.4, 0.3]], F32),
    "b_i": np.array([0.0, 0.1, 0.0, 0.0, 0.0, 0.2], F32),
    "w_h": np.array([[0.3, 0.7, -0.2, 0.5, 0.6, -0.8],
                     [0.3, -0.1, -0.2, 0.3, -0.4, 0.9]], F32),
    "b_h": np.array([0.0, 0.3, 0.0, -0.2, 0.5, 0.1], F32),
}
HAND_X = np.array([1.0, -1.0], F32)
HAND_H = np.array([0.5, -0.5], F32)


def _gru_reference(p, h, x, reset_after=True):
    """The gate equations of gru_cell's docstring, in NumPy float64, one gate at a time."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    H = h.shape[0]
    W_ir, W_iz, W_in = (p["w_i"][:, i * H:(i + 1) * H] for i in range(3))
    W_hr, W_hz, W_hn = (p["w_h"][:, i * H:(i + 1) * H] for i in range(3))
    b_ir, b_iz, b_in = (p["b_i"][i * H:(i + 1) * H] for i in range(3))
    b_hr, b_hz, b_hn = (p["b_h"][i * H:(i + 1) * H] for i in range(3))
    r = _sigmoid(x @ W_ir + b_ir + h @ W_hr + b_hr)
    z = _sigmoid(x @ W_iz + b_iz + h @ W_hz + b_hz)
    if reset_after:
        n = np.tanh(x @ W_in + b_in + r * (h @ W_hn + b_hn))
    else:  # Cho et al. 2014: W_hn (r ⊙ h)
        n = np.tanh(x @ W_in + b_in + (r * h) @ W_hn + b_hn)
    return (1.0 - z) * n + z * h


def test_gru_cell_hand_computed():
    carry, y = cells.gru_cell(HAND_PARAMS, jnp.asarray(HAND_H), jnp.asarray(HAND_X))
    assert carry.shape == (2,) and carry.dtype == jnp.float32
    np.testing.assert_array_equal(carry, y)

    expected = _gru_reference(HAND_PARAMS, HAND_H.astype(np.float64), HAND_X.astype(np.float64))
    np.testing.assert_allclose(carry, expected, rtol=0, atol=1e-6)

    # Unit 0 by hand. x W_i + b_i = row0 - row1 + b_i = [0, -0.4 | 0, 0.5 | 0, -0.7];
    # h W_h + b_h = 0.5 (row0 - row1) + b_h = [0, 0.7 | 0, -0.1 | 1.0, -0.75].
    #   r0 = σ(0 + 0) = 0.5,  z0 = σ(0 + 0) = 0.5
    #   n0 = tanh(0 + r0 · 1.0) = tanh(0.5) = 0.46211716
    #   h0' = (1 - 0.5) · 0.46211716 + 0.5 · 0.5 = 0.48105858
    np.testing.assert_allclose(carry[0], 0.48105858, rtol=0, atol=1e-6)
    # Unit 1: r1 = σ(0.3), z1 = σ(0.4), n1 = tanh(-0.7 + r1 · -0.75).
    r1, z1 = _sigmoid(0.3), _sigmoid(0.4)
    n1 = np.tanh(-0.7 + r1 * -0.75)
    np.testing.assert_allclose(carry[1], (1 - z1) * n1 + z1 * -0.5, rtol=0, atol=1e-6)


def test_gru_cell_applies_reset_after_the_hidden_matmul():
    h64, x64 = HAND_H.astype(np.float64), HAND_X.astype(np.float64)
    after = _gru_reference(HAND_PARAMS, h64, x64, reset_after=True)
    before = _gru_reference(HAND_PARAMS, h64, x64, reset_after=False)
    # The case must tell the two forms apart (b_hn != 0 and r not uniform across units).
    assert np.all(np.abs(after - before) > 1e-2), (after, before)
    # Unit 0, reset-before by hand: r = [0.5, σ(0.3)], r⊙h = [0.25, -0.28722],
    # W_hn[:, 0] = [0.6, -0.4] -> 0.15 + 0.114888 + b_hn0 0.5 = 0.764888; n0 = tanh(0.764888).
    np.testing.assert_allclose(
        before[0], 0.5 * np.tanh(0.15 + 0.4 * 0.5 * _sigmoid(0.3) + 0.5) + 0.25, rtol=0, atol=1e-6
    )
    carry, _ = cells.gru_cell(HAND_PARAMS, jnp.asarray(HAND_H), jnp.asarray(HAND_X))
    np.testing.assert_allclose(carry, after, rtol=0, atol=1e-6)
    assert np.all(np.abs(np.asarray(carry) - before) > 1e-2)


def test_gru_input_projection_and_update_compose_to_cell():
    params = _random_gru_params(0, 3, 4)
    h = _normal(1, (4,))
    x = _normal(2, (3,))
    h_cell, _ = cells.gru_cell(params, h, x)
    h_split = cells.gru_update(params, h, cells.input_projection(params, x))[0]
    np.testing.assert_allclose(h_cell, h_split, rtol=0, atol=1e-7)
    ref = _gru_reference({k: np.asarray(v) for k, v in params.items()}, np.asarray(h, np.float64),
                         np.asarray(x, np.float64))
    np.testing.assert_allclose(h_cell, ref, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- run_rnn / gru


def test_run_rnn_cumsum_hand_computed():
    # step: c' = c + x, y = c'. Four real steps of seven; padding holds garbage.
    xs = jnp.array([1.0, 2.0, 3.0, 4.0, 100.0, 200.0, 300.0])

    def step(c, x):
        return c + x, c + x

    carry, ys = cells.run_rnn(step, jnp.float32(10.0), xs, 4)
    np.testing.assert_array_equal(ys, [11.0, 13.0, 16.0, 20.0, 0.0, 0.0, 0.0])
    assert float(carry) == 20.0
    # Reverse: starts at the last *real* element (4), walks down to position 0.
    carry, ys = cells.run_rnn(step, jnp.float32(10.0), xs, 4, reverse=True)
    np.testing.assert_array_equal(ys, [20.0, 19.0, 17.0, 14.0, 0.0, 0.0, 0.0])
    assert float(carry) == 20.0


def test_run_rnn_pytree_carry():
    xs = {"a": jnp.arange(5.0), "b": jnp.ones((5, 2))}

    def step(c, x):
        c = (c[0] + x["a"], c[1] * 2.0 + x["b"])
        return c, {"sum": c[0]}

    (c0, c1), ys = cells.run_rnn(step, (jnp.float32(0.0), jnp.zeros(2)), xs, 3)
    assert float(c0) == 0.0 + 1.0 + 2.0
    np.testing.assert_array_equal(c1, [7.0, 7.0])  # 0 -> 1 -> 3 -> 7
    np.testing.assert_array_equal(ys["sum"], [0.0, 1.0, 3.0, 0.0, 0.0])


def test_gru_scan_equals_python_loop_over_cell():
    D, H, T = 4, 3, 5
    params = _random_gru_params(0, D, H)
    xs = _normal(1, (T, D))
    h0 = _normal(2, (H,))

    h, expected = h0, []
    for t in range(T):
        h, y = cells.gru_cell(params, h, xs[t])
        expected.append(y)
    h_last, hs = cells.recurrent("gru", params, xs, T, h0)
    np.testing.assert_allclose(hs, jnp.stack(expected), rtol=0, atol=1e-6)
    np.testing.assert_allclose(h_last, h, rtol=0, atol=1e-6)

    # reverse: the same loop from t = T-1 down to 0.
    h, expected = h0, [None] * T
    for t in reversed(range(T)):
        h, expected[t] = cells.gru_cell(params, h, xs[t])
    h_last, hs = cells.recurrent("gru", params, xs, T, h0, reverse=True)
    np.testing.assert_allclose(hs, jnp.stack(expected), rtol=0, atol=1e-6)
    np.testing.assert_allclose(h_last, h, rtol=0, atol=1e-6)
    # and reverse really differs from forward here
    assert not np.allclose(hs, cells.recurrent("gru", params, xs, T, h0)[1], atol=1e-3)


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_padding_invariance(reverse):
    D, H, L, T = 3, 4, 3, 6
    params = _random_gru_params(0, D, H)
    h0 = _normal(1, (H,))
    real = _normal(2, (L, D))
    garbage = _normal(3, (T - L, D), 100.0)
    padded = jnp.concatenate([real, garbage])

    h_ref, hs_ref = cells.recurrent("gru", params, real, L, h0, reverse=reverse)
    h_pad, hs_pad = cells.recurrent("gru", params, padded, L, h0, reverse=reverse)
    np.testing.assert_allclose(hs_pad[:L], hs_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h_pad, h_ref, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(hs_pad[L:], np.zeros((T - L, H)))
    # sanity: the garbage would change the result if it were read
    h_full, _ = cells.recurrent("gru", params, padded, T, h0, reverse=reverse)
    assert not np.allclose(h_full, h_ref, atol=1e-3)
    if reverse:  # the backward direction is the forward GRU over the flipped real tokens
        h_flip, hs_flip = cells.recurrent("gru", params, real[::-1], L, h0)
        np.testing.assert_allclose(hs_pad[:L], hs_flip[::-1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(h_pad, h_flip, rtol=0, atol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_gru_zero_length_returns_h0(reverse):
    params = _random_gru_params(0, 2, 3)
    h0 = jnp.array([0.1, -0.2, 0.3])
    xs = _normal(1, (4, 2))
    h, hs = cells.recurrent("gru", params, xs, 0, h0, reverse=reverse)
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(hs, np.zeros((4, 3)))


def test_gru_vmap_jit_over_lengths():
    D, H, T = 2, 3, 5
    params = _random_gru_params(0, D, H)
    xs = _normal(1, (3, T, D))
    lengths = jnp.array([5, 2, 0], jnp.int32)
    h0 = jnp.zeros(H)
    run = jax.jit(jax.vmap(lambda x, n: cells.recurrent("gru", params, x, n, h0, reverse=True)))
    h_b, hs_b = run(xs, lengths)
    for b, n in enumerate([5, 2, 0]):
        h, hs = cells.recurrent("gru", params, xs[b, :n], n, h0, reverse=True)
        np.testing.assert_allclose(h_b[b], h, rtol=0, atol=1e-6)
        np.testing.assert_allclose(hs_b[b, :n], hs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(hs_b[b, n:], 0.0)


# --------------------------------------------------------------------------- attention


def test_additive_score_hand_computed():
    query_proj = jnp.array([0.5, -0.5])
    keys_proj = jnp.array([[0.5, 0.5], [0.0, 1.0]])
    v = jnp.array([2.0, 3.0])
    # j=0: tanh([1.0, 0.0]) · v = 2 tanh(1) = 1.5231883
    # j=1: tanh([0.5, 0.5]) · v = 5 tanh(0.5) = 2.3105858
    # W_q = I, so W_q q = query_proj
    e = attention.additive_score({"w_query": jnp.eye(2), "v": v}, query_proj, keys_proj)
    assert e.shape == (2,)
    np.testing.assert_allclose(e, [1.5231883, 2.3105858], rtol=0, atol=1e-6)
    np.testing.assert_allclose(e, [2 * np.tanh(1.0), 5 * np.tanh(0.5)], rtol=0, atol=1e-6)


def test_masked_softmax_basic_properties():
    logits = _normal(0, (3, 5), 3.0)
    mask = jnp.array([[True, True, True, False, False],
                      [True, False, True, False, True],
                      [True, True, True, True, True]])
    w = attention.masked_softmax(logits, mask)
    np.testing.assert_allclose(w.sum(-1), np.ones(3), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(w)[~np.asarray(mask)], 0.0)  # exactly zero
    assert np.all(np.asarray(w)[np.asarray(mask)] > 0)
    for i in range(3):  # equals the plain softmax of the unmasked entries
        m = np.asarray(mask[i])
        np.testing.assert_allclose(np.asarray(w[i])[m], _softmax(np.asarray(logits[i])[m]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(w[2], jax.nn.softmax(logits[2]), rtol=0, atol=1e-6)  # all-True row


def test_masked_softmax_hand_computed_and_broadcast_mask():
    # mask (S,) broadcast over rows: [1, ln 3, masked] -> [1/4, 3/4, 0]
    logits = jnp.array([[0.0, np.log(3.0), 50.0], [2.0, 2.0, -1.0]])
    mask = jnp.array([True, True, False])
    w = attention.masked_softmax(logits, mask)
    np.testing.assert_allclose(w, [[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]], rtol=0, atol=1e-6)


def test_masked_softmax_fully_masked_row_is_zero_with_zero_grad():
    logits = jnp.array([[1.0, 2.0, 3.0], [4.0, -5.0, 6.0]])
    mask = jnp.array([[True, False, True], [False, False, False]])
    w = attention.masked_softmax(logits, mask)
    np.testing.assert_array_equal(w[1], [0.0, 0.0, 0.0])
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w[0].sum(), 1.0, rtol=0, atol=1e-6)

    c = jnp.array([[1.0, 2.0, -3.0], [0.5, -1.0, 2.0]])
    grad = jax.jit(jax.grad(lambda e, m: jnp.sum(attention.masked_softmax(e, m) * c)))
    g = np.asarray(grad(logits, mask))
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[1], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(g[0, 1], 0.0)  # masked entry of a partial row
    # partial row: d/dl Σ p c = p ⊙ (c − p·c), the softmax gradient on its real entries
    p = _softmax(np.array([1.0, 3.0]))
    cr = np.array([1.0, -3.0])
    np.testing.assert_allclose(g[0, [0, 2]], p * (cr - p @ cr), rtol=0, atol=1e-6)
    assert np.abs(g[0]).max() > 1e-3  # non-trivial

    # a single fully masked row (1-D input) too
    g1 = jax.grad(lambda e: jnp.sum(attention.masked_softmax(e, jnp.zeros(3, bool)) * c[0]))(logits[0])
    np.testing.assert_array_equal(g1, np.zeros(3))


def test_masked_softmax_large_and_nonfinite_logits():
    logits = jnp.array([1e4, 1e4 - 1.0, -1e4, 1e4])
    mask = jnp.array([True, True, True, False])
    w = attention.masked_softmax(logits, mask)
    p = 1.0 / (1.0 + np.exp(-1.0))  # [e^0, e^-1, ~0] / (1 + e^-1)
    np.testing.assert_allclose(w, [p, 1.0 - p, 0.0, 0.0], rtol=0, atol=1e-6)
    assert np.all(np.isfinite(w))
    # inf / nan at masked positions do not leak
    for bad in (np.inf, -np.inf, np.nan):
        w = attention.masked_softmax(jnp.array([0.0, bad, np.log(3.0)]), jnp.array([True, False, True]))
        np.testing.assert_allclose(w, [0.25, 0.0, 0.75], rtol=0, atol=1e-6)


def test_context_vector_hand_computed():
    values = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(attention.context_vector(jnp.array([0.25, 0.75]), values), [2.5, 3.5],
                               rtol=0, atol=1e-6)
    weights = jnp.array([[1.0, 0.0], [0.5, 0.5], [0.25, 0.75]])
    np.testing.assert_allclose(attention.context_vector(weights, values),
                               [[1.0, 2.0], [2.0, 3.0], [2.5, 3.5]], rtol=0, atol=1e-6)


def _additive_attention(query_proj, keys_proj, values, v, mask):
    logits = attention.additive_score({"w_query": jnp.eye(query_proj.shape[0]), "v": v}, query_proj, keys_proj)
    weights = attention.masked_softmax(logits, mask)
    return attention.context_vector(weights, values), weights


def test_additive_attention_weights_and_context():
    S, H, C, L = 5, 4, 3, 3
    query_proj = _normal(1, (H,))
    keys_proj = _normal(2, (S, H))
    values = _normal(3, (S, C))
    v = _normal(4, (H,))
    mask = masks.length_mask(L, S)

    context, weights = _additive_attention(query_proj, keys_proj, values, v, mask)
    assert context.shape == (C,) and weights.shape == (S,)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(weights[L:], 0.0)
    np.testing.assert_allclose(context, np.asarray(weights) @ np.asarray(values), rtol=0, atol=1e-6)
    # equals softmax of the scores on the real positions
    e = np.tanh(np.asarray(keys_proj[:L]) + np.asarray(query_proj)) @ np.asarray(v)
    np.testing.assert_allclose(weights[:L], np.exp(e) / np.exp(e).sum(), rtol=0, atol=1e-6)
    # garbage keys/values at padded positions change nothing
    keys_g = keys_proj.at[L:].set(1e3)
    values_g = values.at[L:].set(-1e3)
    context_g, weights_g = _additive_attention(query_proj, keys_g, values_g, v, mask)
    np.testing.assert_allclose(context_g, context, rtol=0, atol=1e-6)
    np.testing.assert_allclose(weights_g, weights, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- layers


def test_dropout_identity_without_key_or_rate():
    x = _normal(0, (4, 5))
    np.testing.assert_array_equal(layers.dropout(None, x, 0.5), x)
    np.testing.assert_array_equal(layers.dropout(jax.random.key(1), x, 0.0), x)


@pytest.mark.parametrize("rate, p", [(0.1, 26 / 256), (0.5, 0.5), (0.3, 77 / 256), (0.9999, 255 / 256)])
def test_dropout_statistics(rate, p):
    """p, the drop probability, is rate on the 1/256 grid; kept units are scaled by 1 / (1 - p)."""
    n = 200_000
    x = jnp.asarray(1.0 + np.random.default_rng(0).random(n), jnp.float32)  # in [1, 2), mean ~1.5
    y = np.asarray(layers.dropout(jax.random.key(1), x, rate))
    assert y.shape == (n,) and y.dtype == np.float32
    zero = y == 0.0
    assert abs(zero.mean() - p) < 4 * np.sqrt(p * (1 - p) / n), (zero.mean(), p)
    np.testing.assert_allclose(y[~zero], np.asarray(x)[~zero] / (1.0 - p), rtol=1e-6, atol=0)
    if p <= 0.5:  # expectation preserved (within 2%)
        assert abs(y.mean() / float(x.mean()) - 1.0) < 0.02, (y.mean(), float(x.mean()))
    # a different key drops different units
    y2 = np.asarray(layers.dropout(jax.random.key(2), x, rate))
    assert np.mean((y2 == 0.0) != zero) > 0.5 * min(p, 1 - p)


def test_dropout_below_half_a_step_of_the_grid_drops_nothing_and_odd_sizes_work():
    x = _normal(0, (3, 7))  # 21 units: not a multiple of the four bytes of one draw
    np.testing.assert_array_equal(layers.dropout(jax.random.key(1), x, 1 / 600), x)
    y = np.asarray(layers.dropout(jax.random.key(1), x, 0.5))
    assert y.shape == (3, 7) and 0 < np.sum(y == 0) < 21
    np.testing.assert_allclose(y[y != 0], 2 * np.asarray(x)[y != 0], rtol=1e-6)


def test_maxout_hand_computed():
    x = jnp.array([1.0, 5.0, -2.0, -3.0, 4.0, 4.0])
    np.testing.assert_array_equal(layers.maxout(x), [5.0, -2.0, 4.0])
    np.testing.assert_array_equal(layers.maxout(x, pool_size=3), [5.0, 4.0])
    xb = jnp.stack([x, -x])  # (2, 6): consecutive pairs, not strided
    np.testing.assert_array_equal(layers.maxout(xb), [[5.0, -2.0, 4.0], [-1.0, 3.0, -4.0]])
    # gradient goes to the winning unit of each pool
    g = jax.grad(lambda a: layers.maxout(a).sum())(jnp.array([1.0, 5.0, -2.0, -3.0, 0.0, 7.0]))
    np.testing.assert_array_equal(g, [0.0, 1.0, 1.0, 0.0, 0.0, 1.0])


def test_jaxtyping_refuses_a_wrong_shape(request):
    """The shape annotations are checked under the suite's jaxtyping hook (``addopts`` in pyproject.toml):
    a bias of width 1 for 3 output channels, which conv1d's ``+ b[None, :]`` would broadcast silently,
    is refused, naming the function and the parameter; the right shapes pass."""
    if not request.config.getoption("jaxtyping_packages", default=None):
        pytest.skip("run without jaxtyping's pytest hook (--jaxtyping-packages)")
    x, w = _normal(0, (5, 2)), _normal(1, (3, 2, 3))
    assert convolution.conv1d(x, w, jnp.zeros(3)).shape == (5, 3)
    with pytest.raises(jaxtyping.TypeCheckError, match=r"conv1d[\s\S]*parameter 'b'"):
        convolution.conv1d(x, w, jnp.zeros(1))
