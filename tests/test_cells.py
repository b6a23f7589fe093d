"""Recurrent cells (Elman, LSTM, GRU as published), their masked scan, and the recurrent layers.

Expected numbers come from the papers' equations written out below in NumPy float64, with the
weights laid out as PyTorch does (``W_ih`` (G·H, D), gates stacked by rows); the zoo stores the
transpose (``x @ w``). The GRU with ``reset_after=True`` and ``run_rnn`` are covered in
tests/test_functional.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import FAST_COMPILE
from flax import nnx

from zoo.functional import cells, masks
from zoo.functional.counting import count_evaluations
from zoo.nn import Bidirectional, RNNLayer, StackedRNN

F32 = np.float32
# XLA options that make the CPU compile of small programs several times faster (same results).


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _zoo_params(w_ih, b_ih, w_hh, b_hh):
    """PyTorch layout (gates stacked by rows) -> the zoo's transposed layout."""
    return {"w_i": jnp.asarray(np.asarray(w_ih, F32).T), "b_i": jnp.asarray(b_ih, jnp.float32),
            "w_h": jnp.asarray(np.asarray(w_hh, F32).T), "b_h": jnp.asarray(b_hh, jnp.float32)}


def _random_params(seed, cell, d, h, scale=0.6):
    g = cells.NUM_GATES[cell]
    return {"w_i": _normal(seed, (d, g * h), scale), "b_i": _normal(seed + 1, (g * h,), scale),
            "w_h": _normal(seed + 2, (h, g * h), scale), "b_h": _normal(seed + 3, (g * h,), scale)}


def _random_carry(seed, cell, h):
    if cell == "lstm":
        return (_normal(seed, (h,), 0.5), _normal(seed + 1, (h,), 0.5))
    return _normal(seed, (h,), 0.5)


def _carry_close(a, b, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


# D = 2, H = 2. PyTorch layout: rows are gate units, columns input (or hidden) units.
X = np.array([1.0, -2.0])
H0 = np.array([0.5, -0.25])
C0 = np.array([-1.0, 2.0])

# ---- Elman: h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
EL_W_IH = np.array([[0.5, 0.25], [-0.75, 0.1]])
EL_B_IH = np.array([0.1, -0.2])
EL_W_HH = np.array([[1.0, -0.5], [0.3, 0.8]])
EL_B_HH = np.array([0.05, 0.4])


def test_elman_cell_hand_computed():
    params = _zoo_params(EL_W_IH, EL_B_IH, EL_W_HH, EL_B_HH)
    carry, y = cells.elman_cell(params, jnp.asarray(H0, jnp.float32), jnp.asarray(X, jnp.float32))
    assert carry.shape == (2,) and carry.dtype == jnp.float32
    np.testing.assert_array_equal(carry, y)
    # unit 0: 0.5·1 + 0.25·(−2) + 0.1 + 1·0.5 − 0.5·(−0.25) + 0.05 = 0.775
    # unit 1: −0.75 − 0.2 − 0.2 + 0.15 − 0.2 + 0.4 = −0.8
    np.testing.assert_allclose(carry, np.tanh([0.775, -0.8]), rtol=0, atol=1e-6)
    expected = np.tanh(EL_W_IH @ X + EL_B_IH + EL_W_HH @ H0 + EL_B_HH)
    np.testing.assert_allclose(carry, expected, rtol=0, atol=1e-6)


# ---- LSTM, rows [i0 i1 | f0 f1 | g0 g1 | o0 o1]
LS_W_IH = np.array([[0.2, -0.1], [0.4, 0.3], [-0.3, 0.5], [0.1, 0.1],
                    [0.6, -0.2], [-0.5, 0.25], [0.3, 0.3], [-0.2, 0.4]])
LS_B_IH = np.array([0.1, 0.0, 0.5, -0.3, 0.0, 0.2, -0.1, 0.3])
LS_W_HH = np.array([[0.5, 0.1], [-0.3, 0.2], [0.2, -0.4], [0.7, 0.1],
                    [-0.6, 0.3], [0.1, 0.9], [0.4, -0.2], [0.25, 0.5]])
LS_B_HH = np.array([0.0, 0.2, 0.1, 0.0, -0.3, 0.0, 0.2, -0.1])


def _lstm_reference(w_ih, b_ih, w_hh, b_hh, h, c, x):
    """Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000, gates [i, f, g, o]."""
    a = w_ih @ x + b_ih + w_hh @ h + b_hh
    i, f, g, o = a[0:2], a[2:4], a[4:6], a[6:8]
    c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c_new), c_new


def test_lstm_cell_hand_computed():
    params = _zoo_params(LS_W_IH, LS_B_IH, LS_W_HH, LS_B_HH)
    (h, c), y = cells.lstm_cell(params, (jnp.asarray(H0, jnp.float32), jnp.asarray(C0, jnp.float32)),
                                jnp.asarray(X, jnp.float32))
    np.testing.assert_array_equal(h, y)
    h_ref, c_ref = _lstm_reference(LS_W_IH, LS_B_IH, LS_W_HH, LS_B_HH, H0, C0, X)
    np.testing.assert_allclose(c, c_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h, h_ref, rtol=0, atol=1e-6)
    # unit 0 by hand: i0 = 0.2+0.2+0.1 + 0.25−0.025 = 0.725, f0 = −0.3−1.0+0.5 + 0.1+0.1+0.1 = −0.5,
    # g0 = 0.6+0.4 + (−0.3−0.075−0.3) = 0.325, o0 = 0.3−0.6−0.1 + 0.2+0.05+0.2 = 0.05
    c0 = _sigmoid(-0.5) * -1.0 + _sigmoid(0.725) * np.tanh(0.325)
    np.testing.assert_allclose(c[0], c0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h[0], _sigmoid(0.05) * np.tanh(c0), rtol=0, atol=1e-6)


def test_lstm_gate_order_is_i_f_g_o():
    h0, c0 = jnp.asarray(H0, jnp.float32), jnp.asarray(C0, jnp.float32)
    zeros_ih, zeros_hh = np.zeros((8, 2)), np.zeros((8, 2))
    # A bias that saturates only the forget gate (and closes the input gate): the cell keeps c exactly.
    b = np.array([-30.0, -30.0, 30.0, 30.0, 0.7, 0.7, 0.0, 0.0])
    (h, c), _ = cells.lstm_cell(_zoo_params(zeros_ih, b, zeros_hh, np.zeros(8)), (h0, c0), jnp.zeros(2))
    np.testing.assert_allclose(c, C0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h, 0.5 * np.tanh(C0), rtol=0, atol=1e-6)
    # One distinct bias per gate slot: any other order of [i, f, g, o] gives other numbers.
    bi, bf, bg, bo = 0.3, -1.2, 0.8, 2.0
    b = np.repeat([bi, bf, bg, bo], 2)
    (h, c), _ = cells.lstm_cell(_zoo_params(zeros_ih, b, zeros_hh, np.zeros(8)), (h0, c0), jnp.zeros(2))
    c_ref = _sigmoid(bf) * C0 + _sigmoid(bi) * np.tanh(bg)
    np.testing.assert_allclose(c, c_ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(h, _sigmoid(bo) * np.tanh(c_ref), rtol=0, atol=1e-6)
    swapped = _sigmoid(bi) * C0 + _sigmoid(bf) * np.tanh(bg)  # [f, i, g, o]
    assert np.abs(np.asarray(c) - swapped).max() > 0.1


# ---- GRU as published (Cho et al. 2014, eq. 5-8), rows [r0 r1 | z0 z1 | n0 n1]
GR_W_IH = np.array([[0.3, -0.2], [0.1, 0.5], [-0.4, 0.2], [0.2, 0.2], [0.7, -0.3], [-0.1, 0.6]])
GR_B_IH = np.array([0.1, -0.1, 0.0, 0.2, 0.3, -0.2])
GR_W_HH = np.array([[0.6, -0.3], [0.2, 0.8], [0.5, 0.1], [-0.2, 0.4], [1.0, -0.7], [0.4, 0.9]])
GR_B_HH = np.array([0.0, 0.3, -0.1, 0.0, 0.5, -0.4])


def _gru_published(h, x):
    """r = σ(W_r x + U_r h), z = σ(W_z x + U_z h), h̃ = tanh(W x + U (r ⊙ h)), h' = z h + (1 − z) h̃."""
    def rows(w, k):
        return w[2 * k:2 * k + 2]
    r = _sigmoid(rows(GR_W_IH, 0) @ x + rows(GR_B_IH, 0) + rows(GR_W_HH, 0) @ h + rows(GR_B_HH, 0))
    z = _sigmoid(rows(GR_W_IH, 1) @ x + rows(GR_B_IH, 1) + rows(GR_W_HH, 1) @ h + rows(GR_B_HH, 1))
    h_tilde = np.tanh(rows(GR_W_IH, 2) @ x + rows(GR_B_IH, 2) + rows(GR_W_HH, 2) @ (r * h) + rows(GR_B_HH, 2))
    return z * h + (1.0 - z) * h_tilde


def test_gru_reset_before_hand_computed_and_differs_from_reset_after():
    params = _zoo_params(GR_W_IH, GR_B_IH, GR_W_HH, GR_B_HH)
    h0, x = jnp.asarray(H0, jnp.float32), jnp.asarray(X, jnp.float32)
    before, y = cells.gru_cell(params, h0, x, reset_after=False)
    np.testing.assert_array_equal(before, y)
    np.testing.assert_allclose(before, _gru_published(H0, X), rtol=0, atol=1e-6)
    # unit 0 by hand: r = σ([0.7 + 0.1 + 0.375, −0.9 − 0.1 − 0.1 + 0.3]) = σ([1.175, −0.8]),
    # z0 = σ(−0.8 + 0.225 − 0.1) = σ(−0.675), h̃0 = tanh(1.3 + 0.3 + 1.0·r0·0.5 − 0.7·r1·(−0.25) + 0.5)
    r0, r1, z0 = _sigmoid(1.175), _sigmoid(-0.8), _sigmoid(-0.675)
    n0 = np.tanh(2.1 + 0.5 * r0 + 0.175 * r1)
    np.testing.assert_allclose(before[0], z0 * 0.5 + (1 - z0) * n0, rtol=0, atol=1e-6)
    # reset after the product, r ⊙ (U h + b_hn), is another function here (b_hn != 0)
    after, _ = cells.gru_cell(params, h0, x, reset_after=True)
    n0_after = np.tanh(1.3 + 0.3 + r0 * (0.5 + 0.175 + 0.5))
    np.testing.assert_allclose(after[0], z0 * 0.5 + (1 - z0) * n0_after, rtol=0, atol=1e-6)
    assert np.abs(np.asarray(after - before)).max() > 1e-2
    # and hidden_update picks the form by name
    upd = cells.hidden_update("gru", reset_after=False)
    np.testing.assert_allclose(upd(params, h0, cells.input_projection(params, x))[0], before, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="rnn, lstm, gru"):
        cells.hidden_update("tanh")


# --------------------------------------------------------------------------- recurrent (scan)

CELLS = [("rnn", True), ("lstm", True), ("gru", False)]  # (cell, reset_after); GRU reset-after: test_functional
STEP = {"rnn": cells.elman_cell, "lstm": cells.lstm_cell,
        "gru": lambda p, c, x: cells.gru_cell(p, c, x, reset_after=False)}


@pytest.mark.parametrize("cell,reset_after", CELLS)
def test_recurrent_equals_python_loop_and_ignores_padding(cell, reset_after):
    D, H, L, T = 3, 2, 3, 5
    params = _random_params(10, cell, D, H)
    real = _normal(20, (L, D))
    padded = jnp.concatenate([real, _normal(21, (T - L, D), 50.0)])  # garbage after seq_length
    carry0 = _random_carry(30, cell, H)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)  # both directions, one compile per length
    def both(xs, n):
        return [cells.recurrent(cell, params, xs, n, carry0, reverse, reset_after) for reverse in (False, True)]

    for reverse, (c_all, hs_all), (c_ref, hs_ref), (c_pad, hs_pad) in zip(
            (False, True), both(padded, T), both(real, L), both(padded, L)):
        # all T steps real: the scan equals a Python loop of the one-step cell
        carry, ys = carry0, [None] * T
        for t in (reversed(range(T)) if reverse else range(T)):
            carry, ys[t] = STEP[cell](params, carry, padded[t])
        np.testing.assert_allclose(hs_all, jnp.stack(ys), rtol=0, atol=1e-6)
        _carry_close(c_all, carry)
        np.testing.assert_array_equal(cells.carry_output(cell, c_all), hs_all[0] if reverse else hs_all[-1])
        # L real steps of T: the same as the unpadded sequence, zeros at padding
        np.testing.assert_allclose(hs_pad[:L], hs_ref, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(hs_pad[L:], 0.0)
        _carry_close(c_pad, c_ref)
        # ... and the garbage would change the result if it were read
        assert np.abs(np.asarray(cells.carry_output(cell, c_all) - cells.carry_output(cell, c_ref))).max() > 1e-3
        if reverse:  # the backward pass over the real tokens is the forward pass over them flipped
            c_flip, hs_flip = both(real[::-1], L)[0]
            np.testing.assert_allclose(hs_ref, hs_flip[::-1], rtol=0, atol=1e-6)
            _carry_close(c_ref, c_flip)


def _plain_recurrent(cell, params, xs, n, carry, reverse, reset_after):
    """The reference: the masked scan of the whole update under plain autodiff (the pre-custom-VJP path)."""
    update = cells.hidden_update(cell, reset_after)
    return cells.run_rnn(lambda c, g: update(params, c, g), carry, cells.input_projection(params, xs), n, reverse)


@pytest.mark.parametrize("cell,reset_after", [("rnn", True), ("lstm", True), ("gru", True), ("gru", False)])
def test_recurrent_derivative_batched_equals_per_example_and_plain_autodiff(cell, reset_after):
    """The custom derivative of the recurrent scan, on a padded batch (lengths 5, 3, 1), both
    directions: the gradient of the vmapped loss (∂W_h one product over batch and time) equals the
    per-example gradients (vmap of grad) summed, to 1e-6, and plain autodiff of run_rnn; the
    program holds no per-example (H, block) weight gradient; values and forward-mode derivatives
    agree too, and so do the gradients with ``unroll=2`` (on the LSTM: unrolling is cell-independent)."""
    D, H, T, L = 3, 2, 5, 3
    params = _random_params(40, cell, D, H)
    xs = jnp.stack([_normal(41, (T, D)), jnp.concatenate([_normal(42, (L, D)), _normal(43, (T - L, D), 50.0)]),
                    jnp.concatenate([_normal(44, (1, D)), _normal(45, (T - 1, D), 50.0)])])  # garbage at padding
    lengths = jnp.array([T, L, 1])
    c0 = _random_carry(46, cell, H)
    carries = jax.tree.map(lambda c: jnp.stack([c, -c, 0.5 * c]), c0)
    w_out, w_last = _normal(47, (T, H)), _normal(48, (H,))
    d_params = _random_params(49, cell, D, H)  # a tangent for the forward-mode check

    def loss(run, reverse, p, x, n, c):  # every output and carry entry with its own weight
        last, hs = run(p, x, n, c, reverse)
        return jnp.sum(hs * w_out) + sum(jnp.sum(a * w_last) for a in jax.tree.leaves(last))

    def batched_grad(run, reverse):
        one = functools.partial(loss, run, reverse)
        return jax.grad(lambda p, x, c: jnp.sum(jax.vmap(one, (None, 0, 0, 0))(p, x, lengths, c)), argnums=(0, 1, 2))

    def results(run, reverse):  # the values are the primal outputs of the forward-mode derivative
        values = jax.vmap(lambda p, x, n, c: run(p, x, n, c, reverse), (None, 0, 0, 0))
        primal, tangent = jax.jvp(lambda p: values(p, xs, lengths, carries), (params,), (d_params,))
        return primal, batched_grad(run, reverse)(params, xs, carries), tangent

    custom = lambda p, x, n, c, r: cells.recurrent(cell, p, x, n, c, r, reset_after)
    unrolled = lambda p, x, n, c, r: cells.recurrent(cell, p, x, n, c, r, reset_after, unroll=2)
    plain = lambda p, x, n, c, r: _plain_recurrent(cell, p, x, n, c, r, reset_after)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def compute():
        per_example = [jax.vmap(jax.grad(functools.partial(loss, custom, reverse), argnums=(0, 1, 3)),
                                (None, 0, 0, 0))(params, xs, lengths, carries) for reverse in (False, True)]
        # unroll only repeats the loop bodies, whatever the cell: checked on the LSTM (a tuple carry)
        return ([results(custom, r) for r in (False, True)], per_example, [results(plain, r) for r in (False, True)],
                [batched_grad(unrolled, r)(params, xs, carries) for r in (False, True)] if cell == "lstm" else None)

    mine, per_example, reference, unrolled_grads = compute()
    widths = [g * H for g in cells._hidden_blocks(cell, reset_after)]
    for reverse in (False, True):
        program = str(jax.make_jaxpr(batched_grad(custom, reverse))(params, xs, carries))
        assert "custom_jvp" not in program  # the derivative rule ran (no differentiation left to do)
        for width in widths:  # no (B, H, width) block of per-example weight gradients
            assert f"f32[3,{H},{width}]" not in program
        (values, batched, tangent), each = mine[reverse], per_example[reverse]
        # one contraction over the batch equals the per-example gradients summed
        _carry_close(batched[0], jax.tree.map(lambda g: jnp.sum(g, axis=0), each[0]), atol=1e-6)
        _carry_close(batched[1:], each[1:], atol=1e-6)  # inputs and initial carries: per example
        if unrolled_grads is not None:
            _carry_close(batched, unrolled_grads[reverse], atol=1e-6)
        values_ref, batched_ref, tangent_ref = reference[reverse]
        _carry_close(values, values_ref, atol=1e-6)
        _carry_close(batched, batched_ref, atol=1e-5)
        _carry_close(tangent, tangent_ref, atol=1e-5)
        np.testing.assert_array_equal(batched[1][1, L:], 0.0)  # padding gets no gradient
        np.testing.assert_array_equal(values[1][1, L:], 0.0)
        assert all(float(jnp.abs(g).max()) > 1e-3 for g in jax.tree.leaves(batched))  # nothing trivially zero


def test_recurrent_nested_vmap_and_layer_unroll():
    """Two parameter sets (outer vmap: weights batched) over one padded batch (inner vmap: weights
    shared): the gradient is each set's own. RNNLayer(unroll=3) scans as unroll=1."""
    D, H, T = 3, 2, 4
    sets = [_random_params(50, "lstm", D, H), _random_params(60, "lstm", D, H)]
    xs, lengths, w_out = _normal(70, (3, T, D)), jnp.array([T, 2, 1]), _normal(71, (T, H))
    layers = [RNNLayer("gru", D, H, unroll=unroll, rngs=nnx.Rngs(3)) for unroll in (1, 3)]

    def loss(p):
        run = lambda x, n: cells.recurrent("lstm", p, x, n, cells.initial_carry("lstm", H))[1]
        return jnp.sum(jax.vmap(run)(xs, lengths) * w_out[None])

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def compute(stacked, layers):
        nested = jax.grad(lambda p: jnp.sum(jax.vmap(loss)(p)))(stacked)
        each = jax.lax.map(jax.grad(loss), stacked)  # one set at a time (a loop, unbatched weights)
        return nested, each, [layer.scan(xs[1], 2, reverse=True) for layer in layers]

    nested, each, (scan_1, scan_3) = compute(jax.tree.map(lambda *a: jnp.stack(a), *sets), layers)
    _carry_close(nested, each, atol=1e-6)
    assert float(jnp.abs(nested["w_h"][0] - nested["w_h"][1]).max()) > 1e-3
    assert layers[1].unroll == 3
    _carry_close(scan_3, scan_1, atol=1e-6)


def test_reverse_padded_hand_example():
    xs = jnp.array([10, 20, 30, 40, 0, 0], jnp.int32)
    np.testing.assert_array_equal(masks.reverse_padded(xs, 4), [40, 30, 20, 10, 0, 0])
    np.testing.assert_array_equal(masks.reverse_padded(xs, 6), [0, 0, 40, 30, 20, 10])
    np.testing.assert_array_equal(masks.reverse_padded(xs, 1), xs)
    np.testing.assert_array_equal(masks.reverse_padded(xs, 0), xs)
    rows = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [-1.0, -1.0]])  # (T, ...) reverses whole rows
    np.testing.assert_array_equal(masks.reverse_padded(rows, jnp.int32(3)), [[5, 6], [3, 4], [1, 2], [-1, -1]])


def test_count_evaluations_counts_every_scan_step():
    params = _random_params(70, "gru", 2, 2)
    for T, L in ((3, 3), (5, 2)):
        xs = _normal(71, (T, 2))
        run = jax.jit(lambda x, n: cells.recurrent("gru", params, x, n, jnp.zeros(2)), compiler_options=FAST_COMPILE)
        with count_evaluations() as counts:
            jax.block_until_ready(run(xs, L))
        # one per scan iteration: the padded steps are evaluated too (their result is discarded)
        assert counts == {"recurrent_steps": T}
        with count_evaluations() as eager:  # un-jitted: the same count
            cells.recurrent("gru", params, xs, L, jnp.zeros(2))
        assert eager == {"recurrent_steps": T}


def test_count_evaluations_stops_counting_when_the_context_closes():
    params = _random_params(70, "gru", 2, 2)
    xs = _normal(71, (3, 2))
    run = jax.jit(lambda x: cells.recurrent("gru", params, x, 3, jnp.zeros(2)), compiler_options=FAST_COMPILE)
    with count_evaluations() as counts:
        jax.block_until_ready(run(xs))
    assert counts == {"recurrent_steps": 3}
    jax.block_until_ready(run(xs))  # the same compiled program, after the context has closed
    jax.effects_barrier()
    assert counts == {"recurrent_steps": 3}  # "the evaluations recorded while the context is open"


# --------------------------------------------------------------------------- layers


# Layer tests use the widths of tests/test_recurrent_models.py (embedding 8, hidden 16, 3 real
# steps of 4), so that a joint run compiles the single-op programs of eager mode once.
D_L, H_L, T_L, L_L = 8, 16, 4, 3


def test_rnn_layer_lstm_forget_bias_and_shapes():
    D, H = D_L, H_L
    layer = RNNLayer("lstm", D, H, forget_bias=1.5, rngs=nnx.Rngs(0))
    p = layer.params
    assert p["w_i"].shape == (D, 4 * H) and p["w_h"].shape == (H, 4 * H)
    np.testing.assert_array_equal(p["b_i"][H:2 * H], 1.5)  # gates [i, f, g, o]: the f slice
    np.testing.assert_array_equal(p["b_i"][:H], 0.0)
    np.testing.assert_array_equal(p["b_i"][2 * H:], 0.0)
    np.testing.assert_array_equal(p["b_h"], 0.0)
    for g in range(4):  # each gate's recurrent block is orthogonal
        block = np.asarray(p["w_h"][:, H * g:H * (g + 1)])
        np.testing.assert_allclose(block.T @ block, np.eye(H), rtol=0, atol=1e-5)
    gru = RNNLayer("gru", D, H, forget_bias=1.5, rngs=nnx.Rngs(0))  # no forget gate: biases zero
    np.testing.assert_array_equal(gru.params["b_i"], 0.0)
    with pytest.raises(ValueError, match="rnn, lstm, gru"):
        RNNLayer("tanh", D, H, rngs=nnx.Rngs(0))


def test_stacked_rnn_equals_composed_layers_and_step_loop():
    D, H, T, L = D_L, H_L, T_L, L_L
    stack = StackedRNN("lstm", D, H, 2, dropout=0.5, rngs=nnx.Rngs(1))
    xs = _normal(80, (T, D))
    initial = [_random_carry(82, "lstm", H), _random_carry(84, "lstm", H)]  # as a decoder starts
    with jax.disable_jit():  # lax.scan as a Python loop: no compile per call
        out, carries = stack(xs, L, carries=initial)  # no key: no dropout
        c0, h0 = stack.layers[0].scan(xs, L, initial[0])
        c1, h1 = stack.layers[1].scan(h0, L, initial[1])
        # step(): one time step through every layer, looped by hand over the real steps
        state, ys = initial, []
        for t in range(L):
            state, y = stack.step(state, xs[t])
            ys.append(y)
        zero_start, _ = stack(xs, L)
    np.testing.assert_allclose(out, h1, rtol=0, atol=1e-6)
    _carry_close(carries, [c0, c1])
    np.testing.assert_array_equal(out[L:], 0.0)
    np.testing.assert_allclose(jnp.stack(ys), out[:L], rtol=0, atol=1e-6)
    _carry_close(state, carries)
    assert np.abs(np.asarray(zero_start - out)).max() > 1e-3  # the initial carries are used


def test_stacked_rnn_dropout_between_layers_only_with_a_key():
    D, H, T, L = D_L, H_L, T_L, L_L
    xs = _normal(81, (T, D))
    key = jax.random.key(0)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(stack):
        return (stack(xs, L), stack(xs, L, key=key),
                stack.step(stack.initial_carry(), xs[0]), stack.step(stack.initial_carry(), xs[0], key))

    two = StackedRNN("lstm", D, H, 2, dropout=0.5, rngs=nnx.Rngs(1))
    (out, carries), (out_k, carries_k), (state, _), (state_k, _) = run(two)
    _carry_close(carries_k[0], carries[0], atol=0)  # layer 0 reads the undropped input
    assert np.abs(np.asarray(carries_k[1][0] - carries[1][0])).max() > 1e-3  # layer 1 reads dropped units
    assert np.abs(np.asarray(out_k - out)).max() > 1e-3
    np.testing.assert_array_equal(out_k[L:], 0.0)
    _carry_close(state_k[0], state[0], atol=0)  # step(): the same rule
    assert np.abs(np.asarray(state_k[1][0] - state[1][0])).max() > 1e-3
    # nothing between layers in a one-layer stack: the key changes nothing (no dropout on input or output)
    (out1, c1), (out1_k, c1_k), _, _ = run(StackedRNN("lstm", D, H, 1, dropout=0.5, rngs=nnx.Rngs(1)))
    np.testing.assert_array_equal(out1_k, out1)
    _carry_close(c1_k, c1, atol=0)


def test_bidirectional_stack_second_layer_reads_both_directions():
    D, H, T, L = D_L, H_L, T_L, L_L
    stack = StackedRNN("gru", D, H, 2, bidirectional=True, rngs=nnx.Rngs(2), reset_after=False)
    assert isinstance(stack.layers[1], Bidirectional)
    assert stack.layers[0].forward.w_i[...].shape == (D, 3 * H)
    assert stack.layers[1].forward.w_i[...].shape == (2 * H, 3 * H)
    assert stack.layers[1].backward.w_i[...].shape == (2 * H, 3 * H)
    assert not stack.layers[1].forward.reset_after
    xs = _normal(90, (T, D))
    with jax.disable_jit():
        out, carries = stack(xs, L)
    assert out.shape == (T, 2 * H)
    first = stack.layers[0]
    with jax.disable_jit():
        c_f0, h_f0 = first.forward.scan(xs, L)
        c_b0, h_b0 = first.backward.scan(xs, L, reverse=True)
        h0 = jnp.concatenate([h_f0, h_b0], axis=-1)
        c_f1, h_f1 = stack.layers[1].forward.scan(h0, L)
        c_b1, h_b1 = stack.layers[1].backward.scan(h0, L, reverse=True)
    np.testing.assert_allclose(out, jnp.concatenate([h_f1, h_b1], axis=-1), rtol=0, atol=1e-6)
    _carry_close(carries, [(c_f0, c_b0), (c_f1, c_b1)])
    np.testing.assert_array_equal(out[L:], 0.0)
    # the backward carry is the state after reading the first token: the output at position 0
    np.testing.assert_allclose(carries[1][1], out[0, H:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(carries[1][0], out[L - 1, :H], rtol=0, atol=1e-6)
    # a bidirectional stack takes no initial carries
    with pytest.raises(ValueError, match="initial carry"):
        stack.initial_carry()
    with pytest.raises(ValueError, match="initial carry"):
        stack(xs, L, carries=[jnp.zeros(H), jnp.zeros(H)])

