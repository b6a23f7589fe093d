"""Effective approaches to attention-based neural machine translation: Luong, Pham & Manning
(2015), EMNLP.

Stacked LSTMs; the decoder attends with its *current* top state h_t (not the previous one, as
Bahdanau et al.) over the encoder's top states h̄_s:

    h_t = LSTM(h_{t-1}, [E y_{t-1}; h̃_{t-1}])          input feeding (section 3.3)
    a_t(s) = softmax_s(score(h_t, h̄_s))                 (eq. 7; score from the registry, eq. 8)
    c_t = Σ_s a_t(s) h̄_s
    h̃_t = tanh(W_c [c_t; h_t])                          attentional hidden state (eq. 5)
    p(y_t | y_<t, x) = softmax(W_s h̃_t)                  (eq. 6)

Local attention (section 3.2) reads only [p_t − D, p_t + D]: local-m sets p_t = t (clipped to
the last source position); local-p predicts p_t = S · sigmoid(v_pᵀ tanh(W_p h_t)) (eq. 9) with
S the source length, and multiplies the weights by exp(−(s − p_t)²/(2σ²)), σ = D/2 (eq. 10).
The window's 2D + 1 positions are gathered and only they are scored (:class:`zoo.nn.Attention`):
t·(2D + 1) scores over t target steps, however long the source.
Decoder states: encoder final states of every layer (as Sutskever et al. 2014), h̃_0 = 0;
``decoder_init="zeros"`` starts the decoder from zero carries instead, so that the source reaches
it only through the attention's context vectors.

``bidirectional_encoder`` (OpenNMT-py's ``brnn``, not the paper) reads the source both ways with
H/2 cells a direction in every layer: h̄_s = [→h_s; ←h_s] and the decoder's layer l starts from
the concatenated carries [→(h, c)_S; ←(h, c)_1], so the widths and the decoder are unchanged.

Shapes: S source, T target, E embedding, H hidden, V vocabulary. Dropout acts on the
embeddings, between LSTM layers and on h̃_t before W_s.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import LuongConfig
from zoo.functional.layers import dropout, scan_keys, split_keys
from zoo.functional.masks import length_mask, reverse_padded
from zoo.nn import Attention, StackedRNN, compute_dtype


class Memory(NamedTuple):
    """What the encoder leaves for the decoder (one sentence)."""

    states: jax.Array  # (S, H) h̄_s, top encoder layer
    keys_proj: jax.Array  # (S, ·) the score's key projection of h̄_s
    mask: jax.Array  # (S,) True on real tokens
    length: jax.Array  # int32 scalar: the source length S
    carries: list  # per layer (h, c): the decoder's initial states


class Luong(nnx.Module):
    """Luong attention encoder-decoder on one example (``jax.vmap`` it over a batch). Its config
    (:class:`~zoo.config.LuongConfig`) has checked every choice."""

    has_attention = True

    def __init__(self, config: LuongConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.dtype = dtype = compute_dtype(c.dtype)
        self.src_embed = nnx.Embed(c.src_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.tgt_embed = nnx.Embed(c.tgt_vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.encoder = StackedRNN("lstm", c.embed_dim, c.hidden_dim // 2 if c.bidirectional_encoder else c.hidden_dim,
                                  c.num_layers, bidirectional=c.bidirectional_encoder, dropout=c.dropout, dtype=dtype,
                                  rngs=rngs)
        decoder_input = c.embed_dim + (c.hidden_dim if c.input_feeding else 0)
        self.decoder = StackedRNN("lstm", decoder_input, c.hidden_dim, c.num_layers, dropout=c.dropout, dtype=dtype,
                                  rngs=rngs)
        self.attention = Attention(c.score, c.hidden_dim, c.hidden_dim, c.attention_dim, hard=c.hard_attention,
                                   window=None if c.attention == "global" else c.window,
                                   gaussian=c.attention == "local-p", dtype=dtype, rngs=rngs)
        if c.attention == "local-p":
            self.position = nnx.Linear(c.hidden_dim, c.hidden_dim, use_bias=False, dtype=dtype, rngs=rngs)  # W_p
            self.position_v = nnx.Linear(c.hidden_dim, 1, use_bias=False, dtype=dtype, rngs=rngs)  # v_p
        self.combine = nnx.Linear(2 * c.hidden_dim, c.hidden_dim, use_bias=False, dtype=dtype, rngs=rngs)  # W_c
        self.output = nnx.Linear(c.hidden_dim, c.tgt_vocab_size, dtype=dtype, rngs=rngs)  # W_s

    def encode(self, src, src_length, key=None) -> Memory:
        """src int32 (S,), src_length int scalar -> :class:`Memory`."""
        k_emb, k_rnn = split_keys(key, 2)
        if self.config.reverse_source:
            src = reverse_padded(src, src_length)
        x = dropout(k_emb, self.src_embed(src), self.config.dropout)
        states, carries = self.encoder(x, src_length, k_rnn)
        if self.config.bidirectional_encoder:  # per layer (→carry_S, ←carry_1) -> one carry of width H
            carries = [jax.tree.map(lambda f, b: jnp.concatenate([f, b], axis=-1), *pair) for pair in carries]
        return Memory(states=states, keys_proj=self.attention.project_keys(states),
                      mask=length_mask(src_length, src.shape[0]), length=jnp.asarray(src_length, jnp.int32),
                      carries=carries)

    def initial_decoder_state(self, memory: Memory):
        """``(carries, h̃_0 = 0, t = 0)``."""
        carries = memory.carries
        if self.config.decoder_init == "zeros":
            carries = jax.tree.map(jnp.zeros_like, carries)
        return carries, jnp.zeros((self.config.hidden_dim,), self.dtype), jnp.zeros((), jnp.int32)

    def _center(self, memory: Memory, h, t):
        """p_t for local attention (None for global)."""
        if self.config.attention == "local-m":
            return jnp.minimum(t, memory.length - 1).astype(jnp.float32)
        if self.config.attention == "local-p":
            score = self.position_v(jnp.tanh(self.position(h)))[0].astype(jnp.float32)
            return memory.length.astype(jnp.float32) * jax.nn.sigmoid(score)
        return None

    def _step(self, memory: Memory, state, y_emb, key=None):
        """Decoder step on an embedded input: -> (state', h̃_t (H,), a_t (S,))."""
        carries, h_tilde, t = state
        k_rnn, k_att = split_keys(key, 2)
        x = jnp.concatenate([y_emb, h_tilde], axis=-1) if self.config.input_feeding else y_emb
        carries, h = self.decoder.step(carries, x, k_rnn)
        context, weights = self.attention(h, memory.keys_proj, memory.states, memory.mask, k_att,
                                          self._center(memory, h, t))
        h_tilde = jnp.tanh(self.combine(jnp.concatenate([context, h], axis=-1)))
        if self.config.reverse_source:  # report the weights in the source's own word order
            weights = reverse_padded(weights, memory.length)
        return (carries, h_tilde, t + 1), h_tilde, weights

    def decode_step(self, memory: Memory, state, y_prev, key=None):
        """One free-running step: previous token id y_prev (int) -> (state, logits (V,), a_t (S,))."""
        k_emb, k_step, k_out = split_keys(key, 3)
        y_emb = dropout(k_emb, self.tgt_embed(y_prev), self.config.dropout)
        state, h_tilde, weights = self._step(memory, state, y_emb, k_step)
        return state, self._logits(h_tilde, k_out), weights

    def __call__(self, src, src_length, tgt_in, key=None):
        """Teacher forcing on tgt_in (T,) = [<bos>, y_1, ...]: ``(logits (T, V), weights (T, S))``.

        The recurrence runs in ``lax.scan``; W_s is applied to all T steps at once.
        """
        k_enc, k_emb, k_steps, k_out = split_keys(key, 4)
        memory = self.encode(src, src_length, k_enc)
        y_emb = dropout(k_emb, self.tgt_embed(tgt_in), self.config.dropout)  # (T, E)
        step_keys = scan_keys(k_steps, tgt_in.shape[0])

        def step(state, inputs):
            y, k = inputs
            state, h_tilde, weights = self._step(memory, state, y, k)
            return state, (h_tilde, weights)

        _, (h_tilde, weights) = jax.lax.scan(step, self.initial_decoder_state(memory), (y_emb, step_keys))
        return self._logits(h_tilde, k_out), weights

    def _logits(self, h_tilde, key):
        """Softmax logits W_s h̃_t, float32: (..., H) -> (..., V)."""
        return self.output(dropout(key, h_tilde, self.config.dropout)).astype(jnp.float32)
