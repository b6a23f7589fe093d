"""The attention scores of zoo.functional.attention.SCORES, hard (one-hot) attention and local
windows, against NumPy written from the papers' formulas, and the zoo.nn.Attention contract.

The additive score's hand case and masked_softmax live in tests/test_functional.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_options import FAST_COMPILE
from flax import nnx

from zoo.functional import attention
from zoo.functional.counting import count_evaluations
from zoo.functional.masks import length_mask
from zoo.nn import Attention


@pytest.fixture(autouse=True)
def _eager():
    """Run op by op: each test is a few dozen small operations, cheaper than compiling programs for them
    (and the single-op programs are shared with the eager model tests)."""
    with jax.disable_jit():
        yield


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _softmax(a):
    e = np.exp(a - a.max())
    return e / e.sum()


def _logits(name, params, query, keys):
    score = attention.get_score(name)
    return score.score(params, query, score.project_keys(params, keys))


# --------------------------------------------------------------------------- hand-computed scores

# Q = K = A = 2, S = 3.
Q = np.array([1.0, -0.5])
KEYS = np.array([[0.5, 1.0], [-1.0, 0.25], [2.0, 0.0]])
W_QUERY = np.array([[0.5, -1.0], [0.25, 2.0]])  # (Q, A)
W_KEY = np.array([[1.0, 0.5], [-0.5, 0.75]])  # (K, A)
V = np.array([1.5, -2.0])
B_1 = np.array([0.1, -0.2])
W_2 = np.array([[1.0, -0.5], [0.5, 2.0]])
B_2 = np.array([-0.3, 0.2])


def _relu(a):
    return np.maximum(a, 0.0)


HAND = {  # name: (params, expected logits e_j, one key at a time from the formula)
    "dot": ({}, [k @ Q for k in KEYS]),
    "general": ({"w": W_QUERY}, [Q @ W_QUERY @ k for k in KEYS]),
    "additive": ({"w_query": W_QUERY, "w_key": W_KEY, "v": V},
                 [V @ np.tanh(W_QUERY.T @ Q + W_KEY.T @ k) for k in KEYS]),
    "scaled_dot": ({"w_query": W_QUERY, "w_key": W_KEY},
                   [(W_QUERY.T @ Q) @ (W_KEY.T @ k) / math.sqrt(2.0) for k in KEYS]),
    "cosine": ({"log_beta": np.log(2.0)}, [2.0 * (Q @ k) / (np.linalg.norm(Q) * np.linalg.norm(k)) for k in KEYS]),
    "mlp": ({"w_query": W_QUERY, "w_key": W_KEY, "v": V, "b_1": B_1, "w_2": W_2, "b_2": B_2},
            [V @ _relu(W_2.T @ _relu(W_QUERY.T @ Q + W_KEY.T @ k + B_1) + B_2) for k in KEYS]),
}


def test_every_registered_score_has_a_hand_case():
    assert set(HAND) == set(attention.SCORES)


@pytest.mark.parametrize("name", sorted(HAND))
def test_score_hand_computed(name):
    params, expected = HAND[name]
    params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
    e = _logits(name, params, jnp.asarray(Q, jnp.float32), jnp.asarray(KEYS, jnp.float32))
    assert e.shape == (3,) and e.dtype == jnp.float32
    np.testing.assert_allclose(e, expected, rtol=0, atol=1e-5)
    assert np.ptp(np.asarray(expected)) > 0.1  # the case separates the keys


def test_dot_and_general_by_hand():
    keys = jnp.asarray(KEYS, jnp.float32)
    np.testing.assert_allclose(_logits("dot", {}, jnp.asarray(Q, jnp.float32), keys), [0.0, -1.125, 2.0],
                               rtol=0, atol=1e-6)
    # qᵀW = [0.5 − 0.125, −1 − 1] = [0.375, −2]
    e = _logits("general", {"w": jnp.asarray(W_QUERY, jnp.float32)}, jnp.asarray(Q, jnp.float32), keys)
    np.testing.assert_allclose(e, [-1.8125, -0.875, 0.75], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- the Attention contract

# The widths of tests/test_recurrent_models.py (H = A = 16, 3 real source positions of 4; the
# additive score as in Bahdanau: keys 2H), so that a joint run compiles fewer single-op programs.
S, L, A = 4, 3, 16


def _widths(name):
    return (16, 32) if name == "additive" else (16, 16)  # dot and cosine need Q = K


def _make(name, q_dim, k_dim, **kwargs):
    with jax.disable_jit(False):  # the initialisers' random programs are compiled once per shape
        return Attention(name, q_dim, k_dim, A, rngs=nnx.Rngs(0), **kwargs)


def _attention(name, **kwargs):
    return _make(name, *_widths(name), **kwargs)


@pytest.mark.parametrize("name", sorted(attention.SCORES))
def test_attention_contract(name):
    att = _attention(name)
    q_dim, k_dim = _widths(name)
    query, keys, values = _normal(1, (q_dim,)), _normal(2, (S, k_dim)), _normal(3, (S, 2))
    mask = length_mask(L, S)
    context, weights = att(query, att.project_keys(keys), values, mask)
    assert context.shape == (2,) and weights.shape == (S,)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(weights[L:], 0.0)
    assert np.all(np.asarray(weights[:L]) > 0)
    logits = _logits(name, att.params, query, keys)
    np.testing.assert_allclose(weights[:L], _softmax(np.asarray(logits[:L], np.float64)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(context, np.asarray(weights) @ np.asarray(values), rtol=0, atol=1e-6)
    # garbage keys and values at the padded positions change nothing
    keys_g = keys.at[L:].set(_normal(4, (S - L, k_dim), 1e3))
    values_g = values.at[L:].set(-1e3)
    context_g, weights_g = att(query, att.project_keys(keys_g), values_g, mask)
    np.testing.assert_array_equal(weights_g, weights)
    np.testing.assert_allclose(context_g, context, rtol=0, atol=1e-6)
    # finite, non-zero gradients with respect to the parameters and the query
    graphdef, params = nnx.split(att, nnx.Param)
    c = jnp.array([1.0, -2.0])

    def loss(p, q):
        context, _ = nnx.merge(graphdef, p)(q, att.project_keys(keys_g), values_g, mask)
        return context @ c

    g_params, g_query = jax.grad(loss, argnums=(0, 1))(params, query)
    leaves = jax.tree.leaves(g_params)
    assert len(leaves) == len(att.names) and all(np.all(np.isfinite(g)) for g in leaves)
    if leaves:
        assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    assert np.all(np.isfinite(g_query)) and float(jnp.abs(g_query).max()) > 0


@pytest.mark.parametrize("name", ["dot", "cosine"])
def test_parameter_free_scores_refuse_unequal_widths(name):
    with pytest.raises(ValueError, match="one width"):
        Attention(name, 3, 4, A, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="3 and 4"):
        attention.SCORES[name].init(jax.random.key(0), 3, 4, A)


def test_unknown_score_names_the_choices():
    for make in (lambda: attention.get_score("bilinear"), lambda: Attention("bilinear", 4, 4, A, rngs=nnx.Rngs(0))):
        with pytest.raises(ValueError, match="bilinear") as info:
            make()
        for name in attention.SCORES:
            assert name in str(info.value)


def test_scaled_dot_general_and_cosine_against_their_definitions():
    query, keys = _normal(5, (16,)), _normal(6, (S, 16))
    p = _attention("scaled_dot").params
    expected = (np.asarray(query) @ np.asarray(p["w_query"])) @ (np.asarray(keys) @ np.asarray(p["w_key"])).T
    np.testing.assert_allclose(_logits("scaled_dot", p, query, keys), expected / math.sqrt(A), rtol=1e-5, atol=1e-6)

    w = _attention("general").params["w"]  # (Q, K)
    np.testing.assert_allclose(_logits("general", {"w": w}, query, keys),
                               [np.asarray(query) @ np.asarray(w) @ np.asarray(k) for k in keys], rtol=1e-5, atol=1e-6)

    att = _attention("cosine")
    assert float(att.params["log_beta"]) == pytest.approx(math.log(10.0))  # β starts at 10
    params = {"log_beta": jnp.float32(math.log(3.0))}
    cos = (np.asarray(keys) @ np.asarray(query)) / (np.linalg.norm(keys, axis=-1) * np.linalg.norm(query))
    e = _logits("cosine", params, query, keys)
    np.testing.assert_allclose(e, 3.0 * cos, rtol=0, atol=1e-5)
    scales = jnp.array([[0.5], [2.0], [7.0], [0.1]])
    np.testing.assert_allclose(_logits("cosine", params, 3.7 * query, keys * scales), e, rtol=0, atol=1e-5)
    assert np.all(np.abs(np.asarray(e)) <= 3.0 + 1e-5)


def test_cosine_gradient_is_finite_for_zero_vectors():
    params = {"log_beta": jnp.float32(0.0)}
    keys = jnp.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])  # last row: padding, zero as encoders leave it
    mask = length_mask(2, 3)

    def loss(q, k):
        return attention.masked_softmax(attention.cosine_score(params, q, k), mask) @ jnp.array([1.0, -1.0, 2.0])

    g_q, g_k = jax.grad(loss, argnums=(0, 1))(jnp.array([1.0, 2.0]), keys)
    assert np.all(np.isfinite(g_k)), g_k
    g_q0, _ = jax.grad(loss, argnums=(0, 1))(jnp.zeros(2), keys)
    assert np.all(np.isfinite(g_q0)), g_q0


# --------------------------------------------------------------------------- hard attention


def test_hard_weights_without_key_is_one_hot_at_the_masked_argmax():
    logits = jnp.array([1.0, 5.0, 3.0, 9.0])
    w = attention.hard_weights(logits, jnp.array([True, True, True, False]))
    np.testing.assert_array_equal(w, [0.0, 1.0, 0.0, 0.0])  # 9 is masked
    np.testing.assert_array_equal(attention.hard_weights(logits, jnp.ones(4, bool)), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(attention.hard_weights(logits, jnp.zeros(4, bool)), [0.0, 0.0, 0.0, 0.0])


def test_hard_attention_is_soft_attention_with_a_one_hot_row():
    hard, soft = _make("dot", 16, 16, hard=True), _make("dot", 16, 16)
    query, keys, values = _normal(8, (16,)), _normal(9, (S, 16)), _normal(10, (S, 2))
    mask = length_mask(L, S)
    logits = np.asarray(keys @ query)
    best = int(np.argmax(np.where(np.asarray(mask), logits, -np.inf)))
    assert best != int(np.argmax(logits))  # the global argmax is on the padding here
    assert np.sort(logits[:L])[-1] - np.sort(logits[:L])[-2] > 0.05  # a clear winner (the fp bound below)
    context, weights = hard(query, keys, values, mask)
    one_hot = jax.nn.one_hot(best, S, dtype=jnp.float32)
    np.testing.assert_array_equal(weights, one_hot)
    np.testing.assert_array_equal(context, attention.context_vector(one_hot, values))
    np.testing.assert_array_equal(context, values[best])
    # soft attention with logits 1000× larger (the dot score is linear in q) has a one-hot row too, up to fp
    soft_context, soft_weights = soft(1000.0 * query, keys, values, mask)
    np.testing.assert_allclose(soft_weights, one_hot, rtol=0, atol=1e-6)
    np.testing.assert_allclose(soft_context, context, rtol=0, atol=1e-5)


def test_gumbel_straight_through_samples_softmax_and_has_the_relaxed_gradient():
    logits = jnp.array([0.5, -1.0, 1.5, 0.0, 3.0])
    mask = jnp.array([True, True, True, True, False])
    probs = _softmax(np.asarray(logits[:4], np.float64))
    with jax.disable_jit(False):  # one compiled program for the 4000 draws
        keys = jax.random.split(jax.random.key(0), 4000)
        draw = jax.jit(jax.vmap(lambda k: attention.hard_weights(logits, mask, k)), compiler_options=FAST_COMPILE)
        samples = np.asarray(draw(keys))
    # forward: exactly one-hot, on a real position
    assert set(np.unique(samples)) == {0.0, 1.0}
    np.testing.assert_array_equal(samples.sum(-1), 1.0)
    np.testing.assert_array_equal(samples[:, 4], 0.0)
    # a sample of softmax(e): the frequencies approach the probabilities
    np.testing.assert_allclose(samples[:, :4].mean(0), probs, rtol=0, atol=0.03)
    # gradient: that of the relaxed weights softmax((e + g)/τ) with the same Gumbel noise g
    c = np.array([1.0, -2.0, 0.5, 3.0, 4.0])
    for tau in (1.0, 0.5):
        key = keys[7]
        grad = jax.grad(lambda e: attention.hard_weights(e, mask, key, tau) @ jnp.asarray(c, jnp.float32))(logits)
        g = np.asarray(jax.random.gumbel(key, (5,), jnp.float32), np.float64)
        p = _softmax((np.asarray(logits[:4], np.float64) + g[:4]) / tau)
        expected = np.append(p * (c[:4] - p @ c[:4]) / tau, 0.0)
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
        assert np.abs(expected).max() > 1e-3


def test_hard_attention_module_with_a_key_is_one_hot():
    att = _make("general", 16, 16, hard=True)
    query, keys, values = _normal(11, (16,)), _normal(12, (S, 16)), _normal(13, (S, 2))
    mask = length_mask(L, S)
    context, weights = att(query, keys, values, mask, key=jax.random.key(3))
    assert set(np.unique(np.asarray(weights))) == {0.0, 1.0} and float(weights.sum()) == 1.0
    j = int(np.argmax(weights))
    assert j < L
    np.testing.assert_allclose(context, values[j], rtol=0, atol=1e-7)


# --------------------------------------------------------------------------- local attention


def test_local_window_and_gaussian_window_by_hand():
    def window(center, num_positions, d):
        start, positions, in_window = attention.local_window(jnp.float32(center), num_positions, d)
        return int(start), np.asarray(positions).tolist(), np.asarray(in_window).tolist()

    assert window(2.0, 6, 1) == (1, [1, 2, 3], [True, True, True])
    assert window(2.5, 6, 1) == (1, [1, 2, 3], [False, True, True])  # |s − 2.5| <= 1: s = 2, 3
    assert window(0.0, 4, 1) == (0, [0, 1, 2], [True, True, False])  # left edge: shifted inside [0, S)
    assert window(5.0, 6, 1) == (3, [3, 4, 5], [False, True, True])  # right edge
    assert window(6.0, 6, 1) == (3, [3, 4, 5], [False, False, True])  # p_t = S (local-p's sigmoid at 1)
    assert window(0.0, 4, 0) == (0, [0], [True])
    assert window(1.0, 3, 2) == (0, [0, 1, 2], [True, True, True])  # S < 2D + 1: the whole source
    # σ = D/2: D = 2 gives σ = 1, exp(−(s − 1)²/2)
    np.testing.assert_allclose(attention.gaussian_window(jnp.float32(1.0), jnp.arange(4), 2),
                               [np.exp(-0.5), 1.0, np.exp(-0.5), np.exp(-2.0)], rtol=0, atol=1e-7)
    # D = 4, σ = 2, p = 0.5: exp(−(s − 0.5)²/8)
    np.testing.assert_allclose(attention.gaussian_window(jnp.float32(0.5), jnp.arange(3), 4),
                               np.exp(-np.array([0.25, 0.25, 2.25]) / 8.0), rtol=0, atol=1e-7)


def _masked_local(att, query, keys, values, mask, center):
    """The reference local attention: score all S positions, then mask those outside |s − p_t| <= D
    (what zoo.nn.Attention computed before it gathered the window)."""
    s = jnp.arange(mask.shape[0], dtype=jnp.float32)
    logits = _logits(att.score_name, att.params, query, keys)
    weights = attention.masked_softmax(logits, mask & (jnp.abs(s - center) <= att.window))
    if att.gaussian:
        weights = weights * jnp.exp(-jnp.square(s - center) / (2.0 * (att.window / 2.0) ** 2))
    return weights @ values, weights


@pytest.mark.parametrize("num_positions", [9, 3])  # W = 2D + 1 = 5 < S, and S < 2D + 1
def test_gathered_window_equals_the_masked_reference(num_positions):
    query, keys, values = _normal(17, (16,)), _normal(18, (num_positions, 16)), _normal(19, (num_positions, 2))
    mask = length_mask(num_positions - 1, num_positions)  # the last position is padding
    centers = [0.0, 0.4, 1.0, 2.5, num_positions / 2 - 0.3, num_positions - 1.5, num_positions - 1.0, num_positions]
    for gaussian in (False, True):
        att = _make("general", 16, 16, window=2, gaussian=gaussian)
        for center in centers:
            center = jnp.float32(center)
            context, weights = att(query, keys, values, mask, center=center)
            ref_context, ref_weights = _masked_local(att, query, keys, values, mask, center)
            assert weights.shape == (num_positions,)
            np.testing.assert_allclose(weights, ref_weights, rtol=0, atol=1e-6, err_msg=f"p_t = {center}")
            np.testing.assert_allclose(context, ref_context, rtol=0, atol=1e-6)
            outside = np.abs(np.arange(num_positions) - float(center)) > 2
            np.testing.assert_array_equal(np.asarray(weights)[outside], 0.0)
            assert float(weights.sum()) > 0


def test_local_attention_scores_only_its_window():
    S9 = 9
    query, keys, values = _normal(20, (16,)), _normal(21, (S9, 16)), _normal(22, (S9, 2))
    for window, expected in ((1, 3), (2, 5), (6, S9)):  # 2D + 1 positions, at most S
        att = _make("general", 16, 16, window=window)
        with count_evaluations() as counts:
            att(query, keys, values, length_mask(S9, S9), center=jnp.float32(4.0))
        assert counts == {"scores": expected}


def test_local_attention_weights():
    S7 = 7
    query, keys, values = _normal(14, (16,)), _normal(15, (S7, 16)), _normal(16, (S7, 2))
    mask = length_mask(5, S7)
    local_m = _make("general", 16, 16, window=1)
    e = np.asarray(_logits("general", local_m.params, query, keys), np.float64)
    _, w = local_m(query, keys, values, mask, center=jnp.float32(3.0))
    expected = np.zeros(S7)
    expected[2:5] = _softmax(e[2:5])  # |s − 3| <= 1
    np.testing.assert_allclose(w, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(w)[[0, 1, 5, 6]], 0.0)
    # the window meets the padding: only real positions in it count
    _, w = local_m(query, keys, values, mask, center=jnp.float32(4.0))
    expected = np.zeros(S7)
    expected[3:5] = _softmax(e[3:5])
    np.testing.assert_allclose(w, expected, rtol=0, atol=1e-6)

    # local-p: softmax within the window, times exp(−(s − p)²/(2σ²)), σ = D/2
    local_p = _make("general", 16, 16, window=2, gaussian=True)
    p_t = 2.6
    _, w = local_p(query, keys, values, mask, center=jnp.float32(p_t))
    s = np.arange(S7)
    inside = (np.abs(s - p_t) <= 2) & np.asarray(mask)  # s = 1..4
    expected = np.zeros(S7)
    expected[inside] = _softmax(e[inside]) * np.exp(-np.square(s[inside] - p_t) / 2.0)
    np.testing.assert_allclose(w, expected, rtol=0, atol=1e-6)
    assert 0 < float(w.sum()) < 1


def test_attention_option_errors():
    with pytest.raises(ValueError, match="Gaussian"):
        Attention("dot", 4, 4, A, hard=True, window=2, gaussian=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="window"):
        Attention("dot", 4, 4, A, gaussian=True, rngs=nnx.Rngs(0))
