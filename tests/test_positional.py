"""Positional encodings against their papers' formulas and properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo.functional import positional as pe


def test_sinusoidal_values_follow_the_paper():
    # PE(pos, 2i) = sin(pos / 10000^{2i/d}), PE(pos, 2i+1) = cos(...); d = 4: frequencies 1 and 1/100
    table = pe.sinusoidal(jnp.arange(3), 4)
    for pos in range(3):
        np.testing.assert_allclose(table[pos], [math.sin(pos), math.cos(pos), math.sin(pos / 100), math.cos(pos / 100)],
                                   rtol=1e-6, atol=1e-7)
    concat = pe.sinusoidal(jnp.arange(3), 4, layout="concat")
    np.testing.assert_allclose(concat[2], [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)], rtol=1e-6)


def test_sinusoidal_layouts_are_a_permutation_of_each_other():
    positions = jnp.arange(50)
    interleaved, concat = pe.sinusoidal(positions, 16), pe.sinusoidal(positions, 16, "concat")
    order = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])
    np.testing.assert_array_equal(interleaved[:, order], concat)


def test_sinusoidal_refuses_bad_arguments():
    with pytest.raises(ValueError, match="even width"):
        pe.sinusoidal(jnp.arange(3), 5)
    with pytest.raises(ValueError, match="unknown layout 'halves'"):
        pe.sinusoidal(jnp.arange(3), 4, "halves")


def test_rope_rotates_pairs_by_position_times_frequency():
    # d = 4: pair 0 turns by m rad, pair 1 by m/100 rad
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(pe.rotary(x, jnp.array([2]))[0],
                               [math.cos(2), math.sin(2), -math.sin(0.02), math.cos(0.02)], rtol=1e-6)
    np.testing.assert_array_equal(pe.rotary(x, jnp.array([0])), x)  # position 0: identity


def test_rope_score_depends_only_on_the_offset():
    kq, kk = jax.random.split(jax.random.key(0))
    q, k = jax.random.normal(kq, (1, 2, 8)), jax.random.normal(kk, (1, 2, 8))  # (T, N, d)

    def score(m, n):
        return jnp.sum(pe.rotary(q, jnp.array([m])) * pe.rotary(k, jnp.array([n])), axis=-1)

    for m, n in [(0, 3), (5, 8), (40, 43)]:  # offset 3 everywhere
        np.testing.assert_allclose(score(m, n), score(0, 3), rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(score(0, 4) - score(0, 3))).max() > 1e-3  # another offset: another score


def test_alibi_slopes_and_bias():
    np.testing.assert_allclose(pe.alibi_slopes(8), [2.0**-k for k in range(1, 9)])  # 1/2 ... 1/256
    # 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope: 2^-1, 2^-3
    np.testing.assert_allclose(pe.alibi_slopes(6), [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])
    bias = pe.alibi_bias(jnp.array([0.5, 0.25]), jnp.arange(3), jnp.arange(3))
    np.testing.assert_allclose(bias[0], [[0, -0.5, -1.0], [-0.5, 0, -0.5], [-1.0, -0.5, 0]])
    np.testing.assert_allclose(bias[1, 2, 0], -0.5)


def test_shaw_relative_positions_are_clipped():
    idx = pe.relative_positions(jnp.arange(4), jnp.arange(4), max_distance=2)
    # idx = clip(j − i, −2, 2) + 2
    np.testing.assert_array_equal(idx, [[2, 3, 4, 4], [1, 2, 3, 4], [0, 1, 2, 3], [0, 0, 1, 2]])
    step = pe.relative_positions(jnp.array([3]), jnp.arange(5), max_distance=2)  # a decoding step at t = 3
    np.testing.assert_array_equal(step, [[0, 0, 1, 2, 3]])


def test_shaw_terms_by_hand():
    table = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # a_{-1}, a_0, a_{+1} with k = 1
    idx = pe.relative_positions(jnp.arange(2), jnp.arange(2), 1)  # [[1, 2], [0, 1]]
    query = jnp.array([[[2.0, 3.0]], [[4.0, 5.0]]])  # (Tq=2, N=1, d=2)
    np.testing.assert_allclose(pe.relative_logits(query, table, idx)[0],
                               np.array([[3.0, 5.0], [4.0, 5.0]]) / math.sqrt(2), rtol=1e-6)
    weights = jnp.array([[[0.25, 0.75], [0.5, 0.5]]])  # (N, Tq, Tk)
    np.testing.assert_allclose(pe.relative_values(weights, table, idx)[:, 0],
                               [[0.75, 1.0], [0.5, 0.5]], rtol=1e-6)
