"""Free-running decoding of one example: greedy and beam search, each a ``lax.scan``.

Both work with any zoo seq2seq model (see :mod:`zoo.models`) and return the attention weights
of every step, so attention maps need no capture machinery. ``jax.vmap`` them over a batch.
Glossary: S source length, T decoded steps, V target vocabulary, K beam size. A model whose
decoder attends with L layers of N heads (Transformer, ConvS2S) returns weights (L, N, S) per
step where the recurrent models return (S,).
"""

import jax
import jax.numpy as jnp

from zoo.data.vocab import BOS_ID, EOS_ID, PAD_ID
from zoo.functional.layers import scan_keys


def decode(model, memory, inputs, use_inputs, key=None):
    """Run the decoder for T steps; step i reads ``inputs[i]`` where ``use_inputs[i]``, else
    its own previous prediction argmax_y p(y | ·) (``<bos>`` before the first step).

    ``use_inputs`` all True is teacher forcing (``model(...)`` computes the same logits faster,
    with the output layer outside the scan); all False is greedy decoding; drawn at random with
    probability r it is the teacher forcing ratio r of the PyTorch tutorials ("scheduled
    sampling", Bengio et al. 2015, with a fixed r). No gradient flows through the argmax.

    Args:
      model: a zoo seq2seq model; memory: ``model.encode(...)`` of one source sentence.
      inputs: int32 (T,), the reference decoder inputs [<bos>, y_1, ...].
      use_inputs: bool (T,).
      key: dropout PRNG key, or None.

    Returns:
      ``(tokens int32 (T,), logits (T, V), weights (T, S))``: the argmax at each step, the
      output logits and the attention weights.
    """
    keys = scan_keys(key, inputs.shape[0])

    def step(carry, xs):
        state, predicted = carry
        reference, use_reference, k = xs
        state, logits, weights = model.decode_step(memory, state, jnp.where(use_reference, reference, predicted), k)
        y = jnp.argmax(logits).astype(jnp.int32)
        return (state, y), (y, logits, weights)

    init = (model.initial_decoder_state(memory), jnp.int32(BOS_ID))
    _, (tokens, logits, weights) = jax.lax.scan(step, init, (inputs, use_inputs, keys))
    return tokens, logits, weights


def greedy(model, memory, max_length: int):
    """Greedy decoding: y_i = argmax_y p(y | y_<i, x), fed back as the next input (see :func:`decode`).

    Decoding runs all ``max_length`` steps (static shapes); read the hypothesis up to its first
    ``<eos>``. Scoring these logits against a reference gives the free-running loss.

    Returns:
      ``(tokens int32 (T,), logits (T, V), weights (T, S))``.
    """
    return decode(model, memory, jnp.full((max_length,), BOS_ID, jnp.int32), jnp.zeros((max_length,), bool))


def beam_search(model, memory, beam_size: int, max_length: int, length_penalty: float = 1.0):
    """Beam search keeping the ``beam_size`` best prefixes by summed log-probability.

    A beam that emits ``<eos>`` is finished: it is extended only by ``<pad>`` at zero cost. The
    hypothesis returned maximises score / length**length_penalty (length counts ``<eos>``).
    With ``beam_size=1`` this is :func:`greedy`.

    Args:
      model, memory: as :func:`greedy`.
      beam_size: K >= 1. max_length: steps T. length_penalty: exponent α (0: raw sum).

    Returns:
      ``(tokens int32 (T,), weights (T, ...))`` of the best hypothesis; the weights have the shape
      of the model's ``decode_step`` weights per step: (S,), or (L, N, S) for every layer and head.
    """
    K = beam_size
    state = model.initial_decoder_state(memory)
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (K, *x.shape)), state)
    weights_shape = jax.eval_shape(model.decode_step, memory, state, jnp.int32(BOS_ID))[2].shape  # (S,) or (L, N, S)
    carry = dict(
        states=states,
        y_prev=jnp.full((K,), BOS_ID, jnp.int32),
        scores=jnp.where(jnp.arange(K) == 0, 0.0, -jnp.inf),  # only beam 0 is live at the start
        finished=jnp.zeros((K,), bool),
        lengths=jnp.zeros((K,), jnp.float32),
        tokens=jnp.full((K, max_length), PAD_ID, jnp.int32),
        weights=jnp.zeros((K, max_length, *weights_shape)),
    )

    def step(c, t):
        new_states, logits, weights = jax.vmap(model.decode_step, in_axes=(None, 0, 0))(memory, c["states"], c["y_prev"])
        logp = jax.nn.log_softmax(logits)  # (K, V)
        vocab = logp.shape[-1]
        pad_only = jnp.where(jnp.arange(vocab) == PAD_ID, 0.0, -jnp.inf)
        logp = jnp.where(c["finished"][:, None], pad_only, logp)
        top_scores, flat = jax.lax.top_k((c["scores"][:, None] + logp).reshape(-1), K)
        beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
        was_finished = c["finished"][beam]
        return dict(
            states=jax.tree.map(lambda x: x[beam], new_states),
            y_prev=token,
            scores=top_scores,
            finished=was_finished | (token == EOS_ID),
            lengths=c["lengths"][beam] + (~was_finished).astype(jnp.float32),
            tokens=c["tokens"][beam].at[:, t].set(token),
            weights=c["weights"][beam].at[:, t].set(weights[beam]),
        ), None

    c, _ = jax.lax.scan(step, carry, jnp.arange(max_length))
    best = jnp.argmax(c["scores"] / jnp.maximum(c["lengths"], 1.0) ** length_penalty)
    return c["tokens"][best], c["weights"][best]


def decode_batch(model, src, src_length, beam_size: int, max_length):
    """Encode and decode a batch of sources: :func:`greedy` (``beam_size`` 1) or :func:`beam_search`
    vmapped over the rows.

    Args:
      model: a zoo seq2seq model. src: int32 (B, S), padded source ids ending in <eos>.
      src_length: int32 (B,). beam_size: K >= 1 (static). max_length: decoded steps T (static;
        a symbolic dimension under ``jax.export``).

    Returns:
      ``(tokens int32 (B, T), weights (B, T, ...))`` as :func:`beam_search` per row.
    """

    def one(src, src_length):
        memory = model.encode(src, src_length)
        if beam_size == 1:
            tokens, _, weights = greedy(model, memory, max_length)
            return tokens, weights
        return beam_search(model, memory, beam_size, max_length)

    return jax.vmap(one)(src, src_length)
