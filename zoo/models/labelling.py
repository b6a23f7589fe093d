"""Sequence labelling and sequence classification on the zoo's recurrent layers: the N-to-N and
N-to-1 shapes of a recurrent network (Goodfellow, Bengio & Courville 2016, *Deep Learning*,
section 10.2, figures 10.3 and 10.5; bidirectional: section 10.3, Schuster & Paliwal 1997;
tagging with a bidirectional LSTM: Graves 2012, *Supervised Sequence Labelling with Recurrent
Neural Networks*; Huang, Xu & Yu 2015 without the CRF).

Both models share one encoder, a stack of L recurrent layers (Elman, LSTM or GRU; optionally
bidirectional) over the embedded tokens:

    x_t = E w_t                                         embedding, t = 1..N (N = seq_length)
    h_t = [→h_t; ←h_t],  →h_t = f(→h_{t-1}, x_t),  ←h_t = f(←h_{t+1}, x_t)     per layer
    SequenceTagger:      p(y_t | w) = softmax(W h_t + b)                           (N to N)
    SequenceClassifier:  p(y | w) = softmax(W [→h_N; ←h_1] + b)                    (N to 1)

The classifier reads the top layer's final hidden states: the forward direction after the last
real token and the backward direction after reading the first (for the LSTM, h of the carry
(h, c)); a unidirectional encoder gives h_N alone. Padding (t > N) never reaches the real
positions: the recurrences skip it (:func:`zoo.functional.cells.run_rnn`), and the backward
direction starts at the last real token.

Their configs are :class:`zoo.config.TaggerConfig` and :class:`zoo.config.ClassifierConfig`.
Shapes: T padded length, E embedding, H hidden (2H bidirectional), L layers, V vocabulary,
K tags or classes. Dropout (``config.dropout``) acts on the embeddings, between layers and
before the output layer, and only when a ``key`` is given. Real token ids must lie in [0, V);
padded positions may hold any id, even an out-of-range one: the encoder reads them as id 0
(``nnx.Embed`` gives an out-of-range id a NaN row, which the masked scan keeps out of the
outputs but not out of the gradients).
"""

import jax.numpy as jnp
import optax
from flax import nnx

from zoo.config import ClassifierConfig, EncoderConfig, TaggerConfig
from zoo.functional import cells
from zoo.functional.layers import dropout, split_keys
from zoo.functional.masks import length_mask
from zoo.nn import StackedRNN, compute_dtype


class _Encoder(nnx.Module):
    """Embedding and :class:`~zoo.nn.StackedRNN`, shared by the tagger and the classifier."""

    def __init__(self, config: EncoderConfig, *, rngs: nnx.Rngs):
        c = config
        self.config = c
        dtype = compute_dtype(c.dtype)
        self.embed = nnx.Embed(c.vocab_size, c.embed_dim, dtype=dtype, rngs=rngs)
        self.rnn = StackedRNN(c.cell, c.embed_dim, c.hidden_dim, c.num_layers, bidirectional=c.bidirectional,
                              dropout=c.dropout, dtype=dtype, rngs=rngs)

    @property
    def output_dim(self) -> int:
        """Width of the encoder's outputs: H, or 2H bidirectional."""
        return 2 * self.config.hidden_dim if self.config.bidirectional else self.config.hidden_dim

    def __call__(self, tokens, seq_length, key=None):
        """tokens int32 (T,) -> ``(outputs (T, H or 2H) zero at padding, carries per layer)``."""
        k_emb, k_rnn = split_keys(key, 2)
        tokens = jnp.where(length_mask(seq_length, tokens.shape[0]), tokens, 0)  # any id at padding
        x = dropout(k_emb, self.embed(tokens), self.config.dropout)
        return self.rnn(x, seq_length, k_rnn)

    def summary(self, carries):
        """The top layer's final hidden state: h_N (H,), or [→h_N; ←h_1] (2H,) bidirectional."""
        top = carries[-1]
        if self.config.bidirectional:
            forward_last, backward_first = top
            return jnp.concatenate([cells.carry_output(self.config.cell, forward_last),
                                    cells.carry_output(self.config.cell, backward_first)], axis=-1)
        return cells.carry_output(self.config.cell, top)


class SequenceTagger(nnx.Module):
    """N to N: a recurrent encoder and a linear layer per position, on one example (``jax.vmap``
    it over a batch)."""

    def __init__(self, config: TaggerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = _Encoder(config, rngs=rngs)
        self.output = nnx.Linear(self.encoder.output_dim, config.num_tags, dtype=compute_dtype(config.dtype), rngs=rngs)

    def __call__(self, tokens, seq_length, key=None):
        """Tag scores of every position.

        Args:
          tokens: int32 (T,), ids in [0, V); positions t >= seq_length are padding (any int32).
          seq_length: int scalar, number of real tokens N (0 <= N <= T).
          key: PRNG key for dropout, or None (no dropout).

        Returns:
          logits (T, K); rows t < N do not depend on the padding, rows t >= N are meaningless
          (the output layer's bias).
        """
        k_enc, k_out = split_keys(key, 2)
        hs, _ = self.encoder(tokens, seq_length, k_enc)
        return self.output(dropout(k_out, hs, self.config.dropout)).astype(jnp.float32)


class SequenceClassifier(nnx.Module):
    """N to 1: a recurrent encoder whose final hidden state feeds a linear layer, on one example
    (``jax.vmap`` it over a batch)."""

    def __init__(self, config: ClassifierConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = _Encoder(config, rngs=rngs)
        self.output = nnx.Linear(self.encoder.output_dim, config.num_classes, dtype=compute_dtype(config.dtype),
                                 rngs=rngs)

    def __call__(self, tokens, seq_length, key=None):
        """Class scores of the sequence.

        Args:
          tokens: int32 (T,), ids in [0, V); positions t >= seq_length are padding (any int32).
          seq_length: int scalar, number of real tokens N (0 <= N <= T; N = 0 reads zero states).
          key: PRNG key for dropout, or None (no dropout).

        Returns:
          logits (K,), independent of the padding.
        """
        k_enc, k_out = split_keys(key, 2)
        _, carries = self.encoder(tokens, seq_length, k_enc)
        return self.output(dropout(k_out, self.encoder.summary(carries), self.config.dropout)).astype(jnp.float32)


def tagging_nll(logits, tags, seq_length):
    """Cross-entropy of one example's tags, summed over its real positions.

    Args:
      logits: float (T, K). tags: int32 (T,), any value at padding. seq_length: int scalar N.

    Returns:
      ``(nll, num_tokens)``: float32 scalars, −Σ_{t<N} log p(y_t | w), and N. For a batch, vmap
      and divide the summed nll by the summed count (the mean over real tokens).
    """
    mask = length_mask(seq_length, tags.shape[0])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, tags, 0))
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def tagging_correct(logits, tags, seq_length):
    """``(correct, num_tokens)``: float32 counts of argmax hits over the real positions t < N."""
    mask = length_mask(seq_length, tags.shape[0])
    hits = jnp.logical_and(mask, jnp.argmax(logits, axis=-1) == tags)
    return jnp.sum(hits, dtype=jnp.float32), jnp.sum(mask, dtype=jnp.float32)


def classification_nll(logits, label):
    """−log p(label | w) of one example: logits (K,), label int scalar -> float32 scalar."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, label)


__all__ = ["SequenceClassifier", "SequenceTagger", "classification_nll", "tagging_correct", "tagging_nll"]
