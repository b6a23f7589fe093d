"""Greedy and beam search on a model whose probabilities are written out by hand."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from zoo.data.vocab import BOS_ID, EOS_ID, UNK_ID
from zoo.decoding import beam_search, decode, greedy
from zoo.models import build

A, B = 4, 5  # two ordinary tokens after <pad> <unk> <bos> <eos>


def _table():
    p = np.full((6, 6), 1e-9, np.float32)
    p[BOS_ID, A], p[BOS_ID, B] = 0.6, 0.4  # greedy takes A ...
    p[A, EOS_ID], p[A, A], p[A, B], p[A, UNK_ID] = 0.3, 0.25, 0.25, 0.2  # ... and ends with p = 0.6·0.3 = 0.18
    p[B, EOS_ID] = 0.99  # B then <eos>: p = 0.4·0.99 = 0.396, found by a beam of 2
    p[EOS_ID, EOS_ID] = 1.0
    return jnp.log(p)


class Memory(NamedTuple):
    mask: jax.Array


class TableModel:
    """p(y_i | y_{i-1}) from a fixed table; attention is uniform over 3 source positions."""

    def initial_decoder_state(self, memory):
        return jnp.zeros(())

    def decode_step(self, memory, state, y_prev, key=None):
        return state, _table()[y_prev], jnp.full((3,), 1.0 / 3.0)


def test_greedy_follows_the_argmax():
    tokens, logits, weights = greedy(TableModel(), Memory(jnp.ones((3,), bool)), 4)
    assert tokens.tolist()[:2] == [A, EOS_ID]
    assert logits.shape == (4, 6) and weights.shape == (4, 3)


def test_beam_finds_the_more_probable_hypothesis_that_greedy_misses():
    tokens, weights = beam_search(TableModel(), Memory(jnp.ones((3,), bool)), beam_size=2, max_length=4)
    assert tokens.tolist() == [B, EOS_ID, 0, 0]  # finished beams are padded
    np.testing.assert_allclose(weights[:2], 1.0 / 3.0)


def test_beam_of_one_is_greedy_on_a_real_model():
    model = build("bahdanau", src_vocab_size=20, tgt_vocab_size=15, embed_dim=8, hidden_dim=8, attention_dim=8, maxout_dim=8,
                  seed=1)
    memory = model.encode(jnp.array([5, 9, 7, EOS_ID, 0, 0], jnp.int32), jnp.int32(4))
    g_tokens, _, g_weights = greedy(model, memory, 7)
    b_tokens, b_weights = beam_search(model, memory, beam_size=1, max_length=7)
    first_eos = g_tokens.tolist().index(EOS_ID) if EOS_ID in g_tokens.tolist() else 7
    assert b_tokens.tolist()[: first_eos + 1] == g_tokens.tolist()[: first_eos + 1]
    np.testing.assert_allclose(b_weights[: first_eos + 1], g_weights[: first_eos + 1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_weights)[:, 4:], 0.0)  # padding gets no attention


def test_decode_reading_every_reference_token_is_teacher_forcing():
    model = build("bahdanau", src_vocab_size=20, tgt_vocab_size=15, embed_dim=8, hidden_dim=8, attention_dim=8, maxout_dim=8,
                  seed=2)
    src, tgt_in = jnp.array([5, 9, 7, EOS_ID], jnp.int32), jnp.array([BOS_ID, 6, 11, 4, 9], jnp.int32)
    expected_logits, expected_weights = model(src, jnp.int32(4), tgt_in)
    memory = model.encode(src, jnp.int32(4))
    _, logits, weights = decode(model, memory, tgt_in, jnp.ones((5,), bool))
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-6)
    # reading the reference only at step 2: steps 0-1 are greedy, step 2 sees token 11
    tokens, mixed, _ = decode(model, memory, tgt_in, jnp.arange(5) == 2)
    g_tokens, g_logits, _ = greedy(model, memory, 5)
    np.testing.assert_allclose(mixed[:2], g_logits[:2], rtol=1e-6)
    assert tokens[:2].tolist() == g_tokens[:2].tolist()
    if g_tokens[1] != 11:
        assert not np.allclose(mixed[2], g_logits[2])
