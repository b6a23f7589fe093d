"""RNN encoder-decoder: Cho, van Merriënboer, Gulcehre, Bahdanau, Bougares, Schwenk & Bengio
(2014), "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
Translation", EMNLP.

A GRU reads the source into one summary C, which enters every decoder step and the output
layer (section 2.2 and appendix A):

    C = tanh(V h_N)                                   summary of the source   (A.1.1)
    h_0 = tanh(V' C)                                  decoder initial state   (A.1.2)
    h_t = GRU(h_{t-1}, [E y_{t-1}; C])                h_t = f(h_{t-1}, y_{t-1}, C)
    s_t = maxout(O_h h_t + O_y E y_{t-1} + O_c C)     deep output, pool 2     (A.1.2)
    p(y_t | y_<t, x) = softmax(G s_t)                 p = g(h_t, y_{t-1}, C)

The GRU applies the reset gate before the hidden product, as published (``config.reset_after``).
Shapes: S source, T target, E embedding, H hidden, L maxout, V vocabulary. Dropout acts on
the embeddings and on s_t. The model has no attention: its weights are all zero.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import ChoConfig
from zoo.functional.layers import dropout, maxout, split_keys
from zoo.functional.masks import length_mask
from zoo.nn import RNNLayer, compute_dtype


class Memory(NamedTuple):
    """What the encoder leaves for the decoder (one sentence)."""

    mask: jax.Array  # (S,) True on real tokens
    context: jax.Array  # (H,) C
    initial_state: jax.Array  # (H,) h_0


class Cho(nnx.Module):
    """The GRU encoder-decoder on one example (``jax.vmap`` it over a batch)."""

    has_attention = False

    def __init__(self, config: ChoConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        dtype = compute_dtype(c.dtype)
        self.src_embed = nnx.Embed(c.src_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.tgt_embed = nnx.Embed(c.tgt_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.encoder = RNNLayer("gru", c.embed_dim, c.hidden_dim, reset_after=c.reset_after, dtype=dtype, rngs=rngs)
        self.summary = nnx.Linear(c.hidden_dim, c.hidden_dim, dtype=dtype, rngs=rngs)
        self.init_state = nnx.Linear(c.hidden_dim, c.hidden_dim, dtype=dtype, rngs=rngs)
        self.decoder = RNNLayer("gru", c.embed_dim + c.hidden_dim, c.hidden_dim, reset_after=c.reset_after, dtype=dtype,
                                rngs=rngs)
        self.deep_output = nnx.Linear(2 * c.hidden_dim + c.embed_dim, 2 * c.maxout_dim, dtype=dtype, rngs=rngs)
        self.output = nnx.Linear(c.maxout_dim, c.tgt_vocab_size, dtype=dtype, rngs=rngs)

    def encode(self, src, src_length, key=None) -> Memory:
        """src int32 (S,), src_length int scalar -> :class:`Memory`."""
        x = dropout(key, self.src_embed(src), self.config.dropout)
        h_last, _ = self.encoder.scan(x, src_length)
        context = jnp.tanh(self.summary(h_last))
        return Memory(mask=length_mask(src_length, src.shape[0]), context=context,
                      initial_state=jnp.tanh(self.init_state(context)))

    def _logits(self, h, y_emb, context, key=None):
        """g(h_t, y_{t-1}, C) on (..., ·): G maxout(O [h; E y; C]), float32."""
        s = maxout(self.deep_output(jnp.concatenate([h, y_emb, context], axis=-1)))
        return self.output(dropout(key, s, self.config.dropout)).astype(jnp.float32)

    def initial_decoder_state(self, memory: Memory):
        return memory.initial_state

    def decode_step(self, memory: Memory, state, y_prev, key=None):
        """One free-running step: previous token id y_prev (int) -> (state, logits (V,), zeros (S,))."""
        k_emb, k_out = split_keys(key, 2)
        y_emb = dropout(k_emb, self.tgt_embed(y_prev), self.config.dropout)
        h, _ = self.decoder(state, jnp.concatenate([y_emb, memory.context], axis=-1))
        return h, self._logits(h, y_emb, memory.context, k_out), jnp.zeros(memory.mask.shape)

    def __call__(self, src, src_length, tgt_in, key=None):
        """Teacher forcing on tgt_in (T,) = [<bos>, y_1, ...]: ``(logits (T, V), zeros (T, S))``."""
        k_enc, k_emb, k_out = split_keys(key, 3)
        memory = self.encode(src, src_length, k_enc)
        num_steps = tgt_in.shape[0]
        y_emb = dropout(k_emb, self.tgt_embed(tgt_in), self.config.dropout)  # (T, E)
        context = jnp.broadcast_to(memory.context, (num_steps, memory.context.shape[0]))
        _, hs = self.decoder.scan(jnp.concatenate([y_emb, context], axis=-1), num_steps, memory.initial_state)
        return self._logits(hs, y_emb, context, k_out), jnp.zeros((num_steps, src.shape[0]))
