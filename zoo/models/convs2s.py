"""Convolutional sequence to sequence learning: Gehring, Auli, Grangier, Yarats & Dauphin (2017), ICML.

Glossary of shapes: S source length, T target length, E embedding width, H hidden (convolution)
width, k kernel width, L decoder layers, V vocabulary.

Encoder (sections 3.1-3.2), with w_j the token and p_j the learned position embedding:

    e_j = w_j + p_j                                          (S, E)
    h⁰ = W_in e + b_in                                       (S, H)
    hˡ = (GLU(conv(hˡ⁻¹)) + hˡ⁻¹) · √0.5                     "same" convolution H → 2H, GLU → H
    z_j = W_out hᴸ_j + b_out                                 (S, E) the attention keys
    (z_j + e_j) · √0.5                                       (S, E) the attention values (section 3.3)

Positions j >= src_length are set to zero before every convolution, so that whatever sits after
the source length never reaches a real position, and they are masked out of the attention.

Decoder, with g_i = w_i + p_i the target embedding (T, E):

    h⁰ = W_in' g + b_in'                                     (T, H)
    h̃ˡ_i = GLU(conv(hˡ⁻¹))_i                                 causal convolution: reads h_{≤i} only
    d_i = (W_d h̃ˡ_i + b_d + g_i) · √0.5                      (E,)  multi-step attention (section 3.3)
    a_ij = softmax_j(d_i · z_j)                              over the real source positions
    c_i = Σ_j a_ij (z_j + e_j) · √0.5
    hˡ_i = ((h̃ˡ_i + W_c c_i + b_c) · √0.5 + hˡ⁻¹_i) · √0.5   attention, then the residual
    p(y_{i+1} | y_≤i, x) = softmax(W_o dropout(W_out' hᴸ_i + b_out') + b_o)

Each decoder layer has its own attention (W_d, W_c): a single head of width E, unscaled (the
logits are d_i · z_j, not divided by √E), values (z_j + e_j)·√0.5 apart from the keys z_j. The
weights returned are those of every layer, shaped (L, 1, S) per step: one "head" per layer, by
``decode_step`` and, when asked (``return_weights=True``), by the teacher-forced ``__call__``,
both through the reference path (``masked_softmax``). The training loss never computes them: it
runs ``config.attention_impl`` (:func:`zoo.nn.attention.attention_implementation`, as the
Transformer's), XLA's or cuDNN's fused kernel (:func:`zoo.functional.attention.fused_attention`) or
the blocked one (:func:`~zoo.functional.attention.blocked_attention`) with one head, scale 1
and the source length as the key length (``key_value_seq_lengths``). cuDNN takes head widths up
to 128 on any NVIDIA GPU (256 from Hopper on), so ``auto`` picks XLA at the default E = 256.

Dropout (``config.dropout``) acts on the embeddings, on the input of every convolution and
before the output layer; the residual connections take the block input before dropout (as
fairseq's ``fconv``).

Not reproduced from the paper: the scaling of the encoder's gradients by 1/(2L) (section 3.4),
the context's scaling by S·√(1/S), weight normalisation (section 3.5).

Initialisation (section 3.5, keeping it simple): embeddings N(0, 0.1); the convolutions that feed
a GLU N(0, √(4(1−p)/n_in)) and every linear layer N(0, √((1−p)/n_in)), with p the dropout rate
and n_in the fan-in (k·H for a convolution); biases zero.

The decoder runs step by step in O(1) per step: its state holds, for every layer, the last k−1
inputs of the convolution (L, k−1, H) and the step index i (for the position embedding). The
layers are stacked parameters run by ``lax.scan`` (a compact program however deep the model).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from zoo.config import ConvS2SConfig
from zoo.functional.attention import blocked_attention, fused_attention, masked_softmax
from zoo.functional.convolution import conv1d, glu
from zoo.functional.layers import dropout, scan_keys, split_keys
from zoo.functional.masks import length_mask
from zoo.nn import compute_dtype
from zoo.nn.attention import attention_implementation

SCALE = math.sqrt(0.5)


class Memory(NamedTuple):
    """What the encoder leaves for the decoder (one sentence)."""

    keys: jax.Array  # (S, E) z_j
    values: jax.Array  # (S, E) (z_j + e_j)·√0.5
    mask: jax.Array  # (S,) True on real tokens
    length: jax.Array  # int32 scalar: the real source tokens (the fused attention's key length)


class DecoderState(NamedTuple):
    """The incremental decoder's state."""

    buffer: jax.Array  # (L, k−1, H) the last k−1 inputs of every decoder convolution
    step: jax.Array  # int32 scalar: the position i of the next input token


def _normal(rngs: nnx.Rngs, shape, std: float) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


def _zeros(shape) -> nnx.Param:
    return nnx.Param(jnp.zeros(shape, jnp.float32))


class ConvS2S(nnx.Module):
    """The convolutional encoder-decoder on one example (``jax.vmap`` it over a batch).

    Dropout takes an explicit PRNG ``key``; ``key=None`` means evaluation (no dropout). Its config
    (:class:`~zoo.config.ConvS2SConfig`) has checked the kernel size and every choice.
    """

    has_attention = True

    def __init__(self, config: ConvS2SConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        self.dtype = dtype = compute_dtype(c.dtype)
        self.attention_impl = attention_implementation(c.attention_impl, dtype, c.embed_dim)  # "auto" resolved
        E, H, k, keep = c.embed_dim, c.hidden_dim, c.kernel_size, 1.0 - c.dropout

        def embed(n):
            return nnx.Embed(n, E, embedding_init=nnx.initializers.normal(0.1), dtype=dtype, rngs=rngs)

        def linear(n_in, n_out):
            return nnx.Linear(n_in, n_out, kernel_init=nnx.initializers.normal(math.sqrt(keep / n_in)), dtype=dtype,
                              rngs=rngs)

        conv_std, Le, Ld = math.sqrt(4 * keep / (k * H)), c.num_encoder_layers, c.num_decoder_layers
        self.src_embed, self.src_position = embed(c.src_vocab_size), embed(c.max_length)
        self.encoder_in = linear(E, H)
        self.encoder_conv_w = _normal(rngs, (Le, k, H, 2 * H), conv_std)
        self.encoder_conv_b = _zeros((Le, 2 * H))
        self.encoder_out = linear(H, E)

        self.tgt_embed, self.tgt_position = embed(c.tgt_vocab_size), embed(c.max_length)
        self.decoder_in = linear(E, H)
        self.decoder_conv_w = _normal(rngs, (Ld, k, H, 2 * H), conv_std)
        self.decoder_conv_b = _zeros((Ld, 2 * H))
        self.attention_in_w = _normal(rngs, (Ld, H, E), math.sqrt(keep / H))  # W_d
        self.attention_in_b = _zeros((Ld, E))
        self.attention_out_w = _normal(rngs, (Ld, E, H), math.sqrt(keep / E))  # W_c
        self.attention_out_b = _zeros((Ld, H))
        self.decoder_out = linear(H, E)
        self.output = linear(E, c.tgt_vocab_size)

    def _check_length(self, n: int, what: str) -> None:
        if n > self.config.max_length:
            raise ValueError(f"{what} length {n} exceeds max_length {self.config.max_length}")

    def encode(self, src, src_length, key=None) -> Memory:
        """src int32 (S,), src_length int scalar -> :class:`Memory`.

        Raises:
          ValueError: S > ``config.max_length``.
        """
        S, p = src.shape[0], self.config.dropout
        self._check_length(S, "source")
        k_emb, k_conv = split_keys(key, 2)
        mask = length_mask(src_length, S)
        e = dropout(k_emb, self.src_embed(src) + self.src_position(jnp.arange(S)), p)  # (S, E)

        def layer(h, xs):
            w, b, k = xs
            x = jnp.where(mask[:, None], dropout(k, h, p), 0.0)  # padding never leaks in
            return (glu(conv1d(x, w, b, "same")) + h) * SCALE, None

        keys = scan_keys(k_conv, self.config.num_encoder_layers)
        conv = (self.encoder_conv_w[...].astype(self.dtype), self.encoder_conv_b[...].astype(self.dtype))
        h, _ = jax.lax.scan(layer, self.encoder_in(e), (*conv, keys))  # (S, H)
        z = self.encoder_out(h)  # (S, E)
        return Memory(keys=z, values=(z + e) * SCALE, mask=mask, length=jnp.asarray(src_length, jnp.int32))

    def _decoder_params(self):
        """The decoder's stacked parameters in the compute dtype."""
        names = ("decoder_conv_w", "decoder_conv_b", "attention_in_w", "attention_in_b", "attention_out_w",
                 "attention_out_b")
        return tuple(getattr(self, name)[...].astype(self.dtype) for name in names)

    def _attend(self, memory: Memory, h, g, w_d, b_d, w_c, b_c, return_weights: bool = True):
        """Multi-step attention of one layer (section 3.3), d_i = (W_d h_i + b_d + g_i)·√0.5,
        a_ij = softmax_j(d_i · z_j) over the real source positions, c_i = Σ_j a_ij (z_j + e_j)·√0.5.

        Args:
          h: (T, H) the layer's GLU outputs. g: (T, E) the target embeddings. w_d (H, E), b_d (E,),
            w_c (E, H), b_c (H,): the layer's attention parameters in the compute dtype.
          return_weights: compute a by the reference path and return it; otherwise
            ``self.attention_impl`` runs (one head, scale 1, key length ``memory.length``).

        Returns:
          ``((h + W_c c + b_c)·√0.5 (T, H), a (T, S) or None)``.
        """
        d = (h @ w_d + b_d[None, :] + g) * SCALE  # (T, E)
        if return_weights or self.attention_impl == "reference":
            a = masked_softmax(d @ memory.keys.T, memory.mask)  # (T, S)
            c = a @ memory.values  # (T, E)
        else:  # no (T, S) weights: one head (T, 1, E) over keys z (S, 1, E) and values (S, 1, E)
            q, k, v = d[:, None, :], memory.keys[:, None, :], memory.values[:, None, :]
            if self.attention_impl == "blocked":
                c = blocked_attention(q, k, v, memory.length, block_size=self.config.attention_block_size, scale=1.0)
            else:
                c = fused_attention(q, k, v, memory.length, implementation=self.attention_impl, scale=1.0)
            c, a = c[:, 0, :], None  # (T, E)
        return (h + c @ w_c + b_c[None, :]) * SCALE, a if return_weights else None

    def _target_embedding(self, tokens, positions, key):
        return dropout(key, self.tgt_embed(tokens) + self.tgt_position(positions), self.config.dropout)  # (T, E)

    def _logits(self, h, key):
        return self.output(dropout(key, self.decoder_out(h), self.config.dropout)).astype(jnp.float32)  # (T, V)

    def initial_decoder_state(self, memory: Memory) -> DecoderState:
        c = self.config
        buffer = jnp.zeros((c.num_decoder_layers, c.kernel_size - 1, c.hidden_dim), memory.keys.dtype)
        return DecoderState(buffer=buffer, step=jnp.zeros((), jnp.int32))

    def decode_step(self, memory: Memory, state: DecoderState, y_prev, key=None):
        """One incremental step: previous token id y_prev (int) -> (state, logits (V,), weights (L, 1, S)).

        Costs O(1) in the number of steps taken: each layer convolves its k−1 buffered inputs
        and the new one. Positions past ``config.max_length`` − 1 reuse the last position embedding.
        """
        p = self.config.dropout
        k_emb, k_conv, k_out = split_keys(key, 3)
        position = jnp.minimum(state.step, self.config.max_length - 1)
        g = self._target_embedding(jnp.reshape(y_prev, (1,)), jnp.reshape(position, (1,)), k_emb)  # (1, E)

        def layer(h, xs):
            (w, b, *attention), past, k = xs  # past (k−1, H)
            window = jnp.concatenate([past, dropout(k, h, p)], axis=0)  # (k, H) inputs i−k+1 .. i
            x = glu(jnp.einsum("kc,kco->o", window, w) + b)[None, :]  # (1, H)
            x, a = self._attend(memory, x, g, *attention)
            return (x + h) * SCALE, (window[1:], a)

        layers = self.config.num_decoder_layers
        h, (buffer, weights) = jax.lax.scan(
            layer, self.decoder_in(g), (self._decoder_params(), state.buffer, scan_keys(k_conv, layers)))
        return DecoderState(buffer, state.step + 1), self._logits(h, k_out)[0], weights  # weights (L, 1, S)

    def __call__(self, src, src_length, tgt_in, key=None, return_weights: bool = False):
        """Teacher forcing: the decoder reads the reference prefix tgt_in (T,) = [<bos>, y_1, ...],
        all T positions at once (causal convolutions, no scan over time).

        Args:
          src: int32 (S,). src_length: int scalar, the real source tokens. tgt_in: int32 (T,).
          key: PRNG key for dropout, or None. return_weights: compute the attention weights
            (the reference path); otherwise none are (the training loss: ``config.attention_impl``).

        Returns:
          ``(logits float32 (T, V), weights (T, L, 1, S) or None)``.

        Raises:
          ValueError: S or T > ``config.max_length``.
        """
        p, T = self.config.dropout, tgt_in.shape[0]
        self._check_length(T, "target")
        k_enc, k_emb, k_conv, k_out = split_keys(key, 4)
        memory = self.encode(src, src_length, k_enc)
        g = self._target_embedding(tgt_in, jnp.arange(T), k_emb)  # (T, E)

        def layer(h, xs):
            (w, b, *attention), k = xs
            x = glu(conv1d(dropout(k, h, p), w, b, "causal"))  # (T, H)
            x, a = self._attend(memory, x, g, *attention, return_weights=return_weights)
            return (x + h) * SCALE, a

        layers = self.config.num_decoder_layers
        h, weights = jax.lax.scan(layer, self.decoder_in(g), (self._decoder_params(), scan_keys(k_conv, layers)))
        if not return_weights:
            return self._logits(h, k_out), None
        return self._logits(h, k_out), jnp.transpose(weights, (1, 0, 2))[:, :, None, :]  # (L, T, S) -> (T, L, 1, S)
