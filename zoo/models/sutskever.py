"""Sequence to sequence learning with neural networks: Sutskever, Vinyals & Le (2014), NeurIPS.

A deep LSTM reads the (reversed) source; its final states (h, c) of every layer initialise a
deep LSTM decoder, and nothing else passes from encoder to decoder (section 2):

    (h_l, c_l) = LSTM_l over x_S, ..., x_1           encoder, layers l = 1..L
    (s_0,l, m_0,l) = (h_l, c_l)                     the only link
    p(y_t | y_<t, x) = softmax(W_o s_t,L),  s_t = LSTM(s_{t-1}, E y_{t-1})   (eq. 1)

Shapes: S source length, T target length, E embedding, H hidden, L layers, V vocabulary.
Dropout (``config.dropout``) acts on the embeddings, between layers and before W_o.
The model has no attention: its weights are all zero, and no score is evaluated.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import SutskeverConfig
from zoo.functional.layers import dropout, split_keys
from zoo.functional.masks import length_mask, reverse_padded
from zoo.nn import StackedRNN, compute_dtype


class Memory(NamedTuple):
    """What the encoder leaves for the decoder (one sentence)."""

    mask: jax.Array  # (S,) True on real tokens
    carries: list  # per layer (h, c), each (H,)


class Sutskever(nnx.Module):
    """The LSTM encoder-decoder on one example (``jax.vmap`` it over a batch)."""

    has_attention = False

    def __init__(self, config: SutskeverConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        dtype = compute_dtype(c.dtype)
        self.src_embed = nnx.Embed(c.src_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.tgt_embed = nnx.Embed(c.tgt_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.encoder = StackedRNN("lstm", c.embed_dim, c.hidden_dim, c.num_layers, dropout=c.dropout, dtype=dtype,
                                  rngs=rngs)
        self.decoder = StackedRNN("lstm", c.embed_dim, c.hidden_dim, c.num_layers, dropout=c.dropout, dtype=dtype,
                                  rngs=rngs)
        self.output = nnx.Linear(c.hidden_dim, c.tgt_vocab_size, dtype=dtype, rngs=rngs)

    def _logits(self, h, key):
        """Softmax logits W_o h, float32: h (..., H) -> (..., V)."""
        return self.output(dropout(key, h, self.config.dropout)).astype(jnp.float32)

    def encode(self, src, src_length, key=None) -> Memory:
        """src int32 (S,), src_length int scalar -> :class:`Memory`."""
        k_emb, k_rnn = split_keys(key, 2)
        if self.config.reverse_source:
            src = reverse_padded(src, src_length)
        x = dropout(k_emb, self.src_embed(src), self.config.dropout)
        _, carries = self.encoder(x, src_length, k_rnn)
        return Memory(mask=length_mask(src_length, src.shape[0]), carries=carries)

    def initial_decoder_state(self, memory: Memory):
        return memory.carries

    def decode_step(self, memory: Memory, state, y_prev, key=None):
        """One free-running step: previous token id y_prev (int) -> (state, logits (V,), zeros (S,))."""
        k_emb, k_rnn, k_out = split_keys(key, 3)
        x = dropout(k_emb, self.tgt_embed(y_prev), self.config.dropout)
        state, h = self.decoder.step(state, x, k_rnn)
        return state, self._logits(h, k_out), jnp.zeros(memory.mask.shape)

    def __call__(self, src, src_length, tgt_in, key=None):
        """Teacher forcing on tgt_in (T,) = [<bos>, y_1, ...]: ``(logits (T, V), zeros (T, S))``."""
        k_enc, k_emb, k_rnn, k_out = split_keys(key, 4)
        memory = self.encode(src, src_length, k_enc)
        y = dropout(k_emb, self.tgt_embed(tgt_in), self.config.dropout)
        hs, _ = self.decoder(y, tgt_in.shape[0], k_rnn, carries=memory.carries)
        return self._logits(hs, k_out), jnp.zeros((tgt_in.shape[0], src.shape[0]))
