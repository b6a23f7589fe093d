"""The training loss: the negative log-likelihood of one example, and of a batch by ``jax.vmap``.

Used by the training step (:mod:`zoo.training`) and by evaluation (:mod:`zoo.evaluation`).
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from zoo.decoding import decode
from zoo.functional.masks import length_mask


def example_nll(model, example, key=None, teacher_forcing: float = 1.0, label_smoothing: float = 0.0):
    """Negative log-likelihood of one example, summed over its real target tokens.

    Args:
      model: a zoo seq2seq model (one example at a time).
      example: dict of ``src`` (S,), ``src_length``, ``tgt_in`` (T,), ``tgt_out`` (T,), ``tgt_length``.
      key: PRNG key for dropout and the teacher-forcing coins, or None (no dropout).
      teacher_forcing: the probability r that a decoder step reads the reference token rather
        than its own previous prediction (:func:`zoo.decoding.decode`): 1 is teacher forcing,
        0 free running (greedy), in between needs a ``key``.
      label_smoothing: ε; the target distribution puts 1 − ε on y_t and ε/V on every token
        (Szegedy et al. 2016; Vaswani et al. 2017, section 5.4). 0: the plain NLL.

    Returns:
      ``(nll, num_tokens)``: float32 scalars, −Σ_t log p(y_t | y_<t, x) over t < tgt_length (the
      cross-entropy against the smoothed targets when ε > 0), and that count.

    Raises:
      ValueError: 0 < teacher_forcing < 1 without a key.
    """
    if teacher_forcing >= 1.0:
        logits, _ = model(example["src"], example["src_length"], example["tgt_in"], key=key)
    else:
        if key is None and teacher_forcing > 0.0:
            raise ValueError(f"teacher_forcing={teacher_forcing} draws coins and needs a key")
        k_enc, k_dec, k_coin = [None] * 3 if key is None else jax.random.split(key, 3)
        memory = model.encode(example["src"], example["src_length"], k_enc)
        shape = example["tgt_in"].shape
        use_reference = jnp.zeros(shape, bool) if k_coin is None else jax.random.bernoulli(k_coin, teacher_forcing, shape)
        _, logits, _ = decode(model, memory, example["tgt_in"], use_reference, k_dec)
    mask = length_mask(example["tgt_length"], example["tgt_out"].shape[0])
    if label_smoothing > 0.0:
        targets = optax.smooth_labels(jax.nn.one_hot(example["tgt_out"], logits.shape[-1]), label_smoothing)
        nll = optax.softmax_cross_entropy(logits, targets)
    else:
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, example["tgt_out"])
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask, dtype=jnp.float32)


def batch_nll(graphdef, params, batch, key=None, teacher_forcing: float = 1.0, label_smoothing: float = 0.0):
    """Summed NLL and token count of a batch: :func:`example_nll` vmapped over its examples."""
    model = nnx.merge(graphdef, params)
    if key is None:
        nll, n = jax.vmap(lambda ex: example_nll(model, ex, None, teacher_forcing, label_smoothing))(batch)
    else:
        keys = jax.random.split(key, batch["src"].shape[0])
        nll, n = jax.vmap(lambda ex, k: example_nll(model, ex, k, teacher_forcing, label_smoothing))(batch, keys)
    return jnp.sum(nll), jnp.sum(n)
