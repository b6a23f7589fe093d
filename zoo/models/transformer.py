"""The Transformer: Vaswani et al. (2017), "Attention Is All You Need", NeurIPS.

Glossary of shapes: S source length, T target length, D d_model, N heads, d_head = D/N,
F the feed-forward width d_ff, L layers, V vocabulary, M ``max_length`` (the decoder's cache).

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
step. Dropout (``config.dropout``) acts on the embeddings and every sublayer's output.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import TransformerConfig
from zoo.functional import positional as pe
from zoo.functional.layers import dropout, split_keys
from zoo.functional.masks import causal_mask, length_mask
from zoo.nn import MultiHeadAttention

POSITIONAL = ("sinusoidal", "sinusoidal-concat", "learned", "shaw", "rope", "alibi")
ABSOLUTE = ("sinusoidal", "sinusoidal-concat", "learned")
NORMS = ("pre", "post")


class Memory(NamedTuple):
    """What the encoder leaves for the decoder (one sentence)."""

    cross_kv: list  # per decoder layer, (K, V) each (S, N, d_head): cross-attention keys and values
    mask: jax.Array  # (S,) True on real tokens


def layer_norm(d_model: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """Layer normalisation (Ba et al. 2016) with ε = 1e-5, PyTorch's, so imported weights agree."""
    return nnx.LayerNorm(d_model, epsilon=1e-5, rngs=rngs)


class FeedForward(nnx.Module):
    """Position-wise feed-forward network FFN(x) = max(0, x W_1 + b_1) W_2 + b_2 (eq. 2)."""

    def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_model, d_ff, rngs=rngs)
        self.out = nnx.Linear(d_ff, d_model, rngs=rngs)

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


def _relative(config: TransformerConfig):
    return None if config.positional in ABSOLUTE else config.positional


class EncoderLayer(nnx.Module):
    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs):
        self.self_attention = MultiHeadAttention(c.d_model, c.num_heads, relative=_relative(c),
                                                 max_relative_position=c.max_relative_position, rngs=rngs)
        self.ffn = FeedForward(c.d_model, c.d_ff, rngs=rngs)
        self.sublayers = nnx.List([Sublayer(c.d_model, c.norm, c.dropout, rngs=rngs) for _ in range(2)])
        self.rate = c.dropout

    def __call__(self, x, positions, mask, key=None):
        """x (S, D), positions int (S,), mask bool (S,) -> (S, D)."""
        k_att, k_ffn, k_ffn_in = split_keys(key, 3)
        h = self.sublayers[0].input(x)
        a, _ = self.self_attention(h, h, mask[None, None, :], positions, positions)
        x = self.sublayers[0](x, a, k_att)
        return self.sublayers[1](x, self.ffn(self.sublayers[1].input(x), k_ffn_in, self.rate), k_ffn)


class DecoderLayer(nnx.Module):
    def __init__(self, c: TransformerConfig, *, rngs: nnx.Rngs):
        self.self_attention = MultiHeadAttention(c.d_model, c.num_heads, relative=_relative(c),
                                                 max_relative_position=c.max_relative_position, rngs=rngs)
        self.cross_attention = MultiHeadAttention(c.d_model, c.num_heads, rngs=rngs)
        self.ffn = FeedForward(c.d_model, c.d_ff, rngs=rngs)
        self.sublayers = nnx.List([Sublayer(c.d_model, c.norm, c.dropout, rngs=rngs) for _ in range(3)])
        self.rate = c.dropout

    def __call__(self, x, positions, self_mask, cross_kv, src_mask, key=None, cache=None):
        """One decoder layer on targets x (Tq, D) at positions (Tq,).

        Args:
          self_mask: bool broadcastable to (N, Tq, Tk): the keys each query may read.
          cross_kv: (K, V) of the encoder output, each (S, N, d_head). src_mask: bool (S,).
          cache: None (teacher forcing: the keys are x's own), or this layer's cached
            ``(K, V)`` (M, N, d_head); x's keys are written at ``positions[0]``.

        Returns:
          ``(x' (Tq, D), (K, V) the keys read, cross-attention weights (N, Tq, S))``.
        """
        k_self, k_cross, k_ffn, k_ffn_in = split_keys(key, 4)
        first, second, third = self.sublayers
        h = first.input(x)
        keys, values = self.self_attention.keys_values(h, positions)
        key_positions = positions
        if cache is not None:
            keys = jax.lax.dynamic_update_slice_in_dim(cache[0], keys, positions[0], axis=0)
            values = jax.lax.dynamic_update_slice_in_dim(cache[1], values, positions[0], axis=0)
            key_positions = jnp.arange(keys.shape[0])
        a, _ = self.self_attention.attend(self.self_attention.queries(h, positions), keys, values, self_mask,
                                          positions, key_positions)
        x = first(x, a, k_self)
        h = second.input(x)
        a, weights = self.cross_attention.attend(self.cross_attention.queries(h, positions), *cross_kv,
                                                 src_mask[None, None, :], positions, None)
        x = second(x, a, k_cross)
        x = third(x, self.ffn(third.input(x), k_ffn_in, self.rate), k_ffn)
        return x, (keys, values), weights


class Transformer(nnx.Module):
    """The Transformer encoder-decoder on one example (``jax.vmap`` it over a batch).

    Dropout takes an explicit PRNG ``key``; ``key=None`` means evaluation (no dropout).

    Raises:
      ValueError: unknown ``positional`` or ``norm``, or d_model not divisible by num_heads.
    """

    has_attention = True

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        c = config
        if c.positional not in POSITIONAL:
            raise ValueError(f"unknown positional encoding {c.positional!r}; choose from {', '.join(POSITIONAL)}")
        if c.norm not in NORMS:
            raise ValueError(f"unknown norm {c.norm!r}; choose from pre, post")
        self.config = c
        self.src_embed = nnx.Embed(c.src_vocab_size, c.d_model, rngs=rngs)
        self.tgt_embed = nnx.Embed(c.tgt_vocab_size, c.d_model, rngs=rngs)
        if c.positional == "learned":
            init = nnx.initializers.normal(c.d_model**-0.5)
            self.src_positions = nnx.Embed(c.max_length, c.d_model, embedding_init=init, rngs=rngs)
            self.tgt_positions = nnx.Embed(c.max_length, c.d_model, embedding_init=init, rngs=rngs)
        self.encoder = nnx.List([EncoderLayer(c, rngs=rngs) for _ in range(c.num_encoder_layers)])
        self.decoder = nnx.List([DecoderLayer(c, rngs=rngs) for _ in range(c.num_decoder_layers)])
        if c.norm == "pre":
            self.encoder_norm = layer_norm(c.d_model, rngs)
            self.decoder_norm = layer_norm(c.d_model, rngs)
        if not c.share_embeddings:
            self.output = nnx.Linear(c.d_model, c.tgt_vocab_size, rngs=rngs)

    def _embed(self, tokens, positions, embed: nnx.Embed, table, key):
        """√D · E[tokens] plus the absolute position encoding, dropped out: (T, D)."""
        c = self.config
        x = embed(tokens) * jnp.sqrt(jnp.float32(c.d_model))
        if c.positional == "learned":
            x = x + table(positions)
        elif c.positional in ("sinusoidal", "sinusoidal-concat"):
            layout = "concat" if c.positional == "sinusoidal-concat" else "interleaved"
            x = x + pe.sinusoidal(positions, c.d_model, layout)
        return dropout(key, x, c.dropout)

    def encode(self, src, src_length, key=None) -> Memory:
        """src int32 (S,), src_length int scalar -> :class:`Memory`."""
        k_emb, *k_layers = split_keys(key, 1 + len(self.encoder))
        positions = jnp.arange(src.shape[0])
        mask = length_mask(src_length, src.shape[0])
        x = self._embed(src, positions, self.src_embed, getattr(self, "src_positions", None), k_emb)
        for layer, k in zip(self.encoder, k_layers):
            x = layer(x, positions, mask, k)
        if self.config.norm == "pre":
            x = self.encoder_norm(x)
        return Memory([layer.cross_attention.keys_values(x, positions) for layer in self.decoder], mask)

    def _decode(self, memory: Memory, y, positions, self_mask, caches, key):
        """The decoder stack on target tokens y (Tq,) -> (logits (Tq, V), caches, weights (Tq, L, N, S))."""
        k_emb, *k_layers = split_keys(key, 1 + len(self.decoder))
        x = self._embed(y, positions, self.tgt_embed, getattr(self, "tgt_positions", None), k_emb)
        new_caches, weights = [], []
        for layer, cross_kv, cache, k in zip(self.decoder, memory.cross_kv, caches, k_layers):
            x, kv, w = layer(x, positions, self_mask, cross_kv, memory.mask, k, cache)
            new_caches.append(kv)
            weights.append(w)
        if self.config.norm == "pre":
            x = self.decoder_norm(x)
        logits = self.tgt_embed.attend(x) if self.config.share_embeddings else self.output(x)
        return logits, new_caches, jnp.stack(weights, axis=1).swapaxes(0, 2)  # (N, L, Tq, S) -> (Tq, L, N, S)

    def initial_decoder_state(self, memory: Memory):
        """``(caches, t = 0)``: every decoder layer's self-attention (K, V), zeros (M, N, d_head)."""
        c = self.config
        shape = (c.max_length, c.num_heads, c.d_model // c.num_heads)
        return [(jnp.zeros(shape), jnp.zeros(shape)) for _ in self.decoder], jnp.zeros((), jnp.int32)

    def decode_step(self, memory: Memory, state, y_prev, key=None):
        """One step at position t: previous token y_prev (int) -> (state, logits (V,), weights (L, N, S)).

        Reads the cache at positions <= t; at most ``config.max_length`` steps.
        """
        caches, t = state
        self_mask = (jnp.arange(self.config.max_length) <= t)[None, None, :]
        logits, caches, weights = self._decode(memory, jnp.reshape(y_prev, (1,)), jnp.reshape(t, (1,)), self_mask,
                                               caches, key)
        return (caches, t + 1), logits[0], weights[0]

    def __call__(self, src, src_length, tgt_in, key=None):
        """Teacher forcing on tgt_in (T,) = [<bos>, y_1, ...], all positions at once under the causal mask.

        Returns:
          ``(logits (T, V), weights (T, L, N, S))``: the cross-attention of every layer and head.
        """
        k_enc, k_dec = split_keys(key, 2)
        memory = self.encode(src, src_length, k_enc)
        positions = jnp.arange(tgt_in.shape[0])
        logits, _, weights = self._decode(memory, tgt_in, positions, causal_mask(tgt_in.shape[0])[None],
                                          [None] * len(self.decoder), k_dec)
        return logits, weights
