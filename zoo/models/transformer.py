"""The Transformer: Vaswani et al. (2017), "Attention Is All You Need", NeurIPS.

Glossary of shapes: S source length, T target length, D d_model, N heads, d_head = D/N,
F the feed-forward width d_ff, L layers, V vocabulary, M ``max_length`` (the decoder's cache)::

    x_0 = √D · E[tokens] (+ PE[positions])        embeddings (section 3.4), absolute positions (3.5)
    sublayer(x) = x + Dropout(f(LN(x)))            pre-LN (Xiong et al. 2020; ``norm="pre"``)
                = LN(x + Dropout(f(x)))            post-LN, the paper's (section 5.4; ``norm="post"``)
    encoder layer: self-attention, then FFN(x) = max(0, x W_1 + b_1) W_2 + b_2      (eq. 2)
    decoder layer: causal self-attention, cross-attention over the encoder output, then FFN
    p(y_t | y_<t, x) = softmax(z_t Eᵀ)              output weights shared with the target
                                                    embedding (section 3.4; ``share_embeddings``)

Positions (``config.positional``): sinusoidal (interleaved, as the paper's formula, or
"sinusoidal-concat": sines then cosines) or learned tables add to the embeddings; "shaw"
(relative position representations), "rope" and "alibi" act inside every self-attention
instead (cross-attention has no positions). A pre-LN model ends each stack with a LayerNorm.

Decoding runs one target position at a time with a cache of every decoder layer's self-attention
keys and values (M positions); the cross-attention keys and values are taken once in ``encode``.
Attention weights returned: the cross-attention of every decoder layer and head, (L, N, S) per
step, by ``decode_step`` and, when asked (``return_weights=True``), by the teacher-forced
``__call__``; the training loss never computes them and runs ``config.attention_impl`` (fused
XLA/cuDNN or blocked attention, padding given as lengths: see :class:`zoo.nn.MultiHeadAttention`).
Dropout (``config.dropout``) acts on the embeddings and every sublayer's output.

Mixed precision (``config.dtype``, :mod:`zoo.nn.precision`): embeddings, projections, attention
products and the FFN run in the compute dtype, the decoder cache holds it; layer-norm statistics,
softmax and the returned logits are float32.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import TransformerConfig
from zoo.functional import positional as pe
from zoo.functional.layers import dropout, split_keys
from zoo.nn import MultiHeadAttention, compute_dtype

ABSOLUTE = ("sinusoidal", "sinusoidal-concat", "learned")  # the positional encodings added to the embeddings


class Memory(NamedTuple):
    """What the encoder leaves for the decoder (one sentence)."""

    cross_kv: list  # per decoder layer, (K, V) each (S, N, d_head): cross-attention keys and values
    length: jax.Array  # int32 scalar: the real source tokens, the rest is padding


class LayerNorm(nnx.LayerNorm):
    """Layer normalisation (Ba et al. 2016) computed in float32 (statistics, scale and shift)
    whatever the input's dtype, and returned in the input's dtype. (Flax's own, given a bfloat16
    ``dtype``, promotes bfloat16 with float32 implicitly, which strict dtype promotion refuses.)"""

    def __call__(self, x):
        return super().__call__(x.astype(jnp.float32)).astype(x.dtype)


def layer_norm(d_model: int, rngs: nnx.Rngs) -> LayerNorm:
    """Layer normalisation with ε = 1e-5, PyTorch's, so imported weights agree."""
    return LayerNorm(d_model, epsilon=1e-5, rngs=rngs)


class FeedForward(nnx.Module):
    """Position-wise feed-forward network FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (eq. 2)."""

    def __init__(self, d_model: int, d_ff: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_model, d_ff, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(d_ff, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, x, key=None, rate: float = 0.0):
        return self.out(dropout(key, jax.nn.relu(self.hidden(x)), rate))


class Sublayer(nnx.Module):
    """A residual connection around f with layer normalisation, pre-LN or post-LN (see the module doc)."""

    def __init__(self, d_model: int, norm: str, rate: float, *, rngs: nnx.Rngs):
        self.norm, self.pre, self.rate = layer_norm(d_model, rngs), norm == "pre", rate

    def input(self, x):
        """What f reads: LN(x) for pre-LN, x for post-LN."""
        return self.norm(x) if self.pre else x

    def __call__(self, x, fx, key=None):
        """The sublayer's output from its input x and f's output fx."""
        y = x + dropout(key, fx, self.rate)
        return y if self.pre else self.norm(y)


def _attention(c: TransformerConfig, positional: bool) -> dict:
    """MultiHeadAttention's options: relative positions in self-attention (``positional``) only."""
    relative = None if c.positional in ABSOLUTE or not positional else c.positional
    return dict(relative=relative, max_relative_position=c.max_relative_position, dtype=compute_dtype(c.dtype),
                implementation=c.attention_impl, block_size=c.attention_block_size)


def _sublayers(c: TransformerConfig, num: int, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([Sublayer(c.d_model, c.norm, c.dropout, rngs=rngs) for _ in range(num)])


class EncoderLayer(nnx.Module):
    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs):
        self.self_attention = MultiHeadAttention(c.d_model, c.num_heads, **_attention(c, True), rngs=rngs)
        self.ffn = FeedForward(c.d_model, c.d_ff, dtype=compute_dtype(c.dtype), rngs=rngs)
        self.sublayers = _sublayers(c, 2, rngs)
        self.rate = c.dropout

    def __call__(self, x, positions, length, key=None):
        """x (S, D), positions int (S,), length int scalar: the real tokens (the rest padding) -> (S, D)."""
        k_att, k_ffn, k_ffn_in = split_keys(key, 3)
        h = self.sublayers[0].input(x)
        a, _ = self.self_attention(h, h, length, False, positions, positions)
        x = self.sublayers[0](x, a, k_att)
        return self.sublayers[1](x, self.ffn(self.sublayers[1].input(x), k_ffn_in, self.rate), k_ffn)


class DecoderLayer(nnx.Module):
    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs):
        self.self_attention = MultiHeadAttention(c.d_model, c.num_heads, **_attention(c, True), rngs=rngs)
        self.cross_attention = MultiHeadAttention(c.d_model, c.num_heads, **_attention(c, False), rngs=rngs)
        self.ffn = FeedForward(c.d_model, c.d_ff, dtype=compute_dtype(c.dtype), rngs=rngs)
        self.sublayers = _sublayers(c, 3, rngs)
        self.rate = c.dropout

    def __call__(self, x, positions, cross_kv, src_length, key=None, cache=None, return_weights: bool = False):
        """One decoder layer on targets x (Tq, D) at positions (Tq,).

        Args:
          cross_kv: (K, V) of the encoder output, each (S, N, d_head). src_length: int scalar,
            the real source tokens.
          cache: None (teacher forcing: the keys are x's own, under the causal mask), or this
            layer's cached ``(K, V)`` (M, N, d_head) for one step (Tq = 1): x's keys are written at
            ``positions[0]`` and the keys at positions <= ``positions[0]`` are read.
          return_weights: compute the cross-attention weights (the reference path).

        Returns:
          ``(x' (Tq, D), (K, V) the keys read, cross-attention weights (N, Tq, S) or None)``.
        """
        k_self, k_cross, k_ffn, k_ffn_in = split_keys(key, 4)
        first, second, third = self.sublayers
        h = first.input(x)
        keys, values = self.self_attention.keys_values(h, positions)
        key_positions, key_length = positions, None
        if cache is not None:
            keys = jax.lax.dynamic_update_slice_in_dim(cache[0], keys, positions[0], axis=0)
            values = jax.lax.dynamic_update_slice_in_dim(cache[1], values, positions[0], axis=0)
            key_positions, key_length = jnp.arange(keys.shape[0]), positions[0] + 1
        a, _ = self.self_attention.attend(self.self_attention.queries(h, positions), keys, values, positions,
                                          key_positions, key_length, causal=cache is None)
        x = first(x, a, k_self)
        h = second.input(x)
        a, weights = self.cross_attention.attend(self.cross_attention.queries(h, positions), *cross_kv, positions, None,
                                                 src_length, return_weights=return_weights)
        x = second(x, a, k_cross)
        x = third(x, self.ffn(third.input(x), k_ffn_in, self.rate), k_ffn)
        return x, (keys, values), weights


class Transformer(nnx.Module):
    """The Transformer encoder-decoder on one example (``jax.vmap`` it over a batch).

    Dropout takes an explicit PRNG ``key``; ``key=None`` means evaluation (no dropout).

    Raises:
      ValueError: d_model not divisible by num_heads, or Shaw's positions with a fused or blocked
        ``attention_impl`` (the config, :class:`~zoo.config.TransformerConfig`, has checked the choices).
    """

    has_attention = True

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        c = config
        self.config, self.dtype = c, compute_dtype(c.dtype)
        self.src_embed = nnx.Embed(c.src_vocab_size, c.d_model, dtype=self.dtype, rngs=rngs)
        self.tgt_embed = nnx.Embed(c.tgt_vocab_size, c.d_model, dtype=self.dtype, rngs=rngs)
        if c.positional == "learned":
            init = nnx.initializers.normal(c.d_model**-0.5)
            self.src_positions = nnx.Embed(c.max_length, c.d_model, embedding_init=init, dtype=self.dtype, rngs=rngs)
            self.tgt_positions = nnx.Embed(c.max_length, c.d_model, embedding_init=init, dtype=self.dtype, rngs=rngs)
        # Layers in a list run by a Python loop, where ConvS2S scans stacked parameters: each decoder
        # layer keeps its own key/value cache and cross-attention keys, PyTorch's state dicts import
        # layer by layer, and at 3-6 layers the unrolled program compiles in seconds.
        self.encoder = nnx.List([EncoderLayer(c, rngs=rngs) for _ in range(c.num_encoder_layers)])
        self.decoder = nnx.List([DecoderLayer(c, rngs=rngs) for _ in range(c.num_decoder_layers)])
        if c.norm == "pre":
            self.encoder_norm = layer_norm(c.d_model, rngs)
            self.decoder_norm = layer_norm(c.d_model, rngs)
        if not c.share_embeddings:
            self.output = nnx.Linear(c.d_model, c.tgt_vocab_size, dtype=self.dtype, rngs=rngs)

    def _embed(self, tokens, positions, embed: nnx.Embed, table, key):
        """√D · E[tokens] plus the absolute position encoding, dropped out: (T, D) in the compute dtype."""
        c = self.config
        x = embed(tokens) * math.sqrt(c.d_model)
        if c.positional == "learned":
            x = x + table(positions)
        elif c.positional in ("sinusoidal", "sinusoidal-concat"):
            layout = "concat" if c.positional == "sinusoidal-concat" else "interleaved"
            x = x + pe.sinusoidal(positions, c.d_model, layout).astype(self.dtype)
        return dropout(key, x, c.dropout)

    def encode(self, src, src_length, key=None) -> Memory:
        """src int32 (S,), src_length int scalar -> :class:`Memory`."""
        k_emb, *k_layers = split_keys(key, 1 + len(self.encoder))
        positions = jnp.arange(src.shape[0])
        x = self._embed(src, positions, self.src_embed, getattr(self, "src_positions", None), k_emb)
        for layer, k in zip(self.encoder, k_layers):
            x = layer(x, positions, src_length, k)
        if self.config.norm == "pre":
            x = self.encoder_norm(x)
        return Memory([layer.cross_attention.keys_values(x, positions) for layer in self.decoder],
                      jnp.asarray(src_length, jnp.int32))

    def _decode(self, memory: Memory, y, positions, caches, key, return_weights: bool):
        """The decoder stack on target tokens y (Tq,) -> (logits float32 (Tq, V), caches,
        weights (Tq, L, N, S) or None); without caches the self-attention is causal."""
        k_emb, *k_layers = split_keys(key, 1 + len(self.decoder))
        x = self._embed(y, positions, self.tgt_embed, getattr(self, "tgt_positions", None), k_emb)
        new_caches, weights = [], []
        for layer, cross_kv, cache, k in zip(self.decoder, memory.cross_kv, caches, k_layers):
            x, kv, w = layer(x, positions, cross_kv, memory.length, k, cache, return_weights)
            new_caches.append(kv)
            weights.append(w)
        if self.config.norm == "pre":
            x = self.decoder_norm(x)
        logits = (self.tgt_embed.attend(x) if self.config.share_embeddings else self.output(x)).astype(jnp.float32)
        if not return_weights:
            return logits, new_caches, None
        return logits, new_caches, jnp.stack(weights, axis=1).swapaxes(0, 2)  # (N, L, Tq, S) -> (Tq, L, N, S)

    def initial_decoder_state(self, memory: Memory):
        """``(caches, t = 0)``: every decoder layer's self-attention (K, V), zeros (M, N, d_head)
        in the compute dtype."""
        c = self.config
        shape = (c.max_length, c.num_heads, c.d_model // c.num_heads)
        zeros = jnp.zeros(shape, self.dtype)
        return [(zeros, zeros) for _ in self.decoder], jnp.zeros((), jnp.int32)

    def decode_step(self, memory: Memory, state, y_prev, key=None):
        """One step at position t: previous token y_prev (int) -> (state, logits (V,), weights (L, N, S)).

        Reads the cache at positions <= t; at most ``config.max_length`` steps.
        """
        caches, t = state
        logits, caches, weights = self._decode(memory, jnp.reshape(y_prev, (1,)), jnp.reshape(t, (1,)), caches, key,
                                               return_weights=True)
        return (caches, t + 1), logits[0], weights[0]

    def __call__(self, src, src_length, tgt_in, key=None, return_weights: bool = False):
        """Teacher forcing on tgt_in (T,) = [<bos>, y_1, ...], all positions at once under the causal mask.

        Returns:
          ``(logits float32 (T, V), weights)``: with ``return_weights`` the cross-attention of every
          layer and head (T, L, N, S), by the reference path; otherwise None, and no attention
          weights are computed (the training loss: ``config.attention_impl`` runs).
        """
        k_enc, k_dec = split_keys(key, 2)
        memory = self.encode(src, src_length, k_enc)
        positions = jnp.arange(tgt_in.shape[0])
        logits, _, weights = self._decode(memory, tgt_in, positions, [None] * len(self.decoder), k_dec, return_weights)
        return logits, weights
