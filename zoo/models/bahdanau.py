"""RNNsearch: Bahdanau, Cho & Bengio (2015), "Neural Machine Translation by Jointly Learning
to Align and Translate", ICLR.

Glossary of shapes: S source length, T target length, E embedding width, H hidden width
(per encoder direction, and of the decoder), A attention width, L maxout width, V vocabulary::

    h_j = [→h_j; ←h_j]                               bidirectional GRU annotations  (S, 2H)
    s_0 = tanh(W_init ←h_1)                          (appendix A.2.2)
    e_ij = vᵀ tanh(W_s s_{i-1} + W_h h_j)            the query is the previous state (eq. 6);
                                                     ``config.score`` picks another score
    α_ij = softmax_j(e_ij),  c_i = Σ_j α_ij h_j      (eqs. 5-6)
    s_i = GRU(s_{i-1}, [E y_{i-1}; c_i])             (eq. 4, appendix A.2.2)
    t_i = maxout(U_o s_i + C_o c_i + V_o E y_{i-1})  deep output, pool 2 (appendix A.2.2)
    p(y_i | y_<i, x) = softmax(W_o t_i)              (eq. 4: g(y_{i-1}, s_i, c_i))

The output layer reads the new state s_i, following eq. (4) of the main text. Dropout
(``config.dropout``) acts on the source and target embeddings and on t_i.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import BahdanauConfig
from zoo.functional.layers import dropout, maxout, scan_keys, split_keys
from zoo.functional.masks import length_mask
from zoo.nn import Attention, Bidirectional, RNNLayer, compute_dtype


class Memory(NamedTuple):
    """What the encoder leaves for the decoder (one sentence)."""

    annotations: jax.Array  # (S, 2H) h_j
    keys_proj: jax.Array  # (S, A) W_h h_j
    mask: jax.Array  # (S,) True on real tokens
    initial_state: jax.Array  # (H,) s_0


class Bahdanau(nnx.Module):
    """The RNNsearch encoder-decoder on one example (``jax.vmap`` it over a batch).

    Dropout takes an explicit PRNG ``key``; ``key=None`` means evaluation (no dropout).
    """

    has_attention = True

    def __init__(self, config: BahdanauConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        dtype = compute_dtype(c.dtype)
        self.src_embed = nnx.Embed(c.src_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.tgt_embed = nnx.Embed(c.tgt_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.encoder = Bidirectional("gru", c.embed_dim, c.hidden_dim, dtype=dtype, rngs=rngs)
        self.init_state = nnx.Linear(c.hidden_dim, c.hidden_dim, dtype=dtype, rngs=rngs)
        self.attention = Attention(c.score, c.hidden_dim, 2 * c.hidden_dim, c.attention_dim, hard=c.hard_attention,
                                   dtype=dtype, rngs=rngs)
        self.decoder = RNNLayer("gru", c.embed_dim + 2 * c.hidden_dim, c.hidden_dim, dtype=dtype, rngs=rngs)
        self.deep_output = nnx.Linear(3 * c.hidden_dim + c.embed_dim, 2 * c.maxout_dim, dtype=dtype, rngs=rngs)
        self.output = nnx.Linear(c.maxout_dim, c.tgt_vocab_size, dtype=dtype, rngs=rngs)

    def encode(self, src, src_length, key=None) -> Memory:
        """src int32 (S,), src_length int scalar -> :class:`Memory`."""
        x = dropout(key, self.src_embed(src), self.config.dropout)  # (S, E)
        annotations, _, h_backward_first = self.encoder(x, src_length)  # (S, 2H)
        return Memory(
            annotations=annotations,
            keys_proj=self.attention.project_keys(annotations),
            mask=length_mask(src_length, src.shape[0]),
            initial_state=jnp.tanh(self.init_state(h_backward_first)),
        )

    def _recur(self, memory: Memory, s_prev, y_prev_emb, key=None):
        """Attention with query s_{i-1}, then the GRU step: -> (s_i (H,), c_i (2H,), α_i (S,)).
        ``key`` samples hard attention in training."""
        context, weights = self.attention(s_prev, memory.keys_proj, memory.annotations, memory.mask, key)
        s, _ = self.decoder(s_prev, jnp.concatenate([y_prev_emb, context], axis=-1))
        return s, context, weights

    def _logits(self, s, context, y_prev_emb, key=None):
        """Deep output: softmax logits W_o maxout(U_o s + C_o c + V_o E y_{i-1}), float32; works on (..., ·)."""
        t = maxout(self.deep_output(jnp.concatenate([s, context, y_prev_emb], axis=-1)))
        return self.output(dropout(key, t, self.config.dropout)).astype(jnp.float32)

    def decode_step(self, memory: Memory, state, y_prev, key=None):
        """One free-running step: previous token id y_prev (int) -> (state, logits (V,), α (S,))."""
        k_emb, k_out, k_att = split_keys(key, 3)
        y_emb = dropout(k_emb, self.tgt_embed(y_prev), self.config.dropout)
        s, context, weights = self._recur(memory, state, y_emb, k_att)
        return s, self._logits(s, context, y_emb, k_out), weights

    def __call__(self, src, src_length, tgt_in, key=None):
        """Teacher forcing: the decoder reads the reference prefix tgt_in (T,) = [<bos>, y_1, ...].

        The recurrence runs in ``lax.scan``; the output layer is applied to all T steps at once.

        Returns:
          ``(logits (T, V), weights (T, S))``.
        """
        k_enc, k_emb, k_out, k_att = split_keys(key, 4)
        memory = self.encode(src, src_length, k_enc)
        y_emb = dropout(k_emb, self.tgt_embed(tgt_in), self.config.dropout)  # (T, E)
        att_keys = scan_keys(k_att, tgt_in.shape[0])

        def step(s_prev, inputs):
            y, k = inputs
            s, context, weights = self._recur(memory, s_prev, y, k)
            return s, (s, context, weights)

        _, (s, context, weights) = jax.lax.scan(step, memory.initial_state, (y_emb, att_keys))
        return self._logits(s, context, y_emb, k_out), weights

    def initial_decoder_state(self, memory: Memory):
        return memory.initial_state
