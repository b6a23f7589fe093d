"""N-to-N tagging and N-to-1 classification on the recurrent layers: generated tasks learnt to
> 95 % accuracy, padding invariance for every cell, shapes, gradients, dropout, configs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compile_options import FAST_COMPILE
from flax import nnx

from zoo.config import ClassifierConfig, TaggerConfig
from zoo.models.labelling import SequenceClassifier, SequenceTagger, classification_nll, tagging_correct, tagging_nll

VOCAB = 10
MAX_LEN = 12
TAGS, CLASSES = 3, 2
# Compiling is most of this file's time, and these programs are tiny: skip the costly backend
# optimisations (about 3x faster compiles on CPU, same results up to float rounding).


def small(config_cls, **overrides):
    """One size for every test (E = H = 16, 3 tags, 2 classes): each parameter shape then has
    its (eager) initialisers compiled once for the whole file."""
    size = {"num_tags": TAGS} if config_cls is TaggerConfig else {"num_classes": CLASSES}
    return config_cls(**{"vocab_size": VOCAB, **size, "embed_dim": 16, "hidden_dim": 16, **overrides})


# --- generated tasks -------------------------------------------------------------------------


def padded_tokens(rng, batch: int, max_len: int = MAX_LEN, min_len: int = 2):
    """Random ids (B, T) in [0, VOCAB), garbage after each length, and the lengths (B,)."""
    lengths = rng.integers(min_len, max_len + 1, size=batch).astype(np.int32)
    return rng.integers(0, VOCAB, size=(batch, max_len)).astype(np.int32), lengths


def neighbour_sum_task(rng, batch: int):
    """tag_t = (w_t + w_{t-1}) mod 3 (w_0 reads w_{-1} = 0): needs one step of memory."""
    tokens, lengths = padded_tokens(rng, batch)
    previous = np.concatenate([np.zeros((batch, 1), np.int32), tokens[:, :-1]], axis=1)
    return {"tokens": tokens, "length": lengths, "tags": (tokens + previous) % 3}


def contains_seven_task(rng, batch: int):
    """label = whether a 7 occurs among the real tokens (half the examples have one somewhere);
    the garbage padding may hold 7s, which must not count."""
    tokens, lengths = padded_tokens(rng, batch)
    real = np.arange(MAX_LEN)[None, :] < lengths[:, None]
    tokens = np.where(real & (tokens == 7), 8, tokens)  # no 7 among the real tokens yet
    labels = rng.integers(0, 2, size=batch).astype(np.int32)
    where = (rng.random(batch) * lengths).astype(np.int32)
    rows = np.nonzero(labels)[0]
    tokens[rows, where[rows]] = 7
    return {"tokens": tokens, "length": lengths, "label": labels}


def jit_model(fn, *models):
    """``fn(*models, *args)`` compiled once per argument shape, the parameters passed as
    arguments (an eager model call would compile every ``lax.scan`` anew; each test compiles
    one program where it can)."""
    graphdefs, states = zip(*(nnx.split(m) for m in models))
    compiled = jax.jit(lambda states, *args: fn(*(nnx.merge(g, s) for g, s in zip(graphdefs, states)), *args),
                       compiler_options=FAST_COMPILE)
    return lambda *args: compiled(states, *args)


def call(model, *args):
    return model(*args)


# --- training ---------------------------------------------------------------------------------


def tagger_loss(model, batch):
    nll, n = jax.vmap(lambda w, n, y: tagging_nll(model(w, n), y, n))(batch["tokens"], batch["length"], batch["tags"])
    return jnp.sum(nll) / jnp.sum(n)


def classifier_loss(model, batch):
    logits = jax.vmap(model)(batch["tokens"], batch["length"])
    return jnp.mean(jax.vmap(classification_nll)(logits, batch["label"]))


def fit(model, loss, task, steps: int, seed: int, learning_rate: float, batch_size: int = 32):
    """Adam on fresh generated batches for ``steps`` jitted steps; returns the trained model."""
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    tx = optax.adam(learning_rate)
    opt_state = jax.jit(tx.init)(params)

    @jax.jit(compiler_options=FAST_COMPILE)
    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(lambda p: loss(nnx.merge(graphdef, p), batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, task(rng, batch_size))
    return nnx.merge(graphdef, params)


@pytest.mark.usefixtures("standard_dtype_promotion")  # optax's Adam mixes Python floats with int32 counts
def test_tagger_learns_neighbour_sum():
    model = SequenceTagger(small(TaggerConfig), rngs=nnx.Rngs(0))
    model = fit(model, tagger_loss, neighbour_sum_task, steps=40, seed=1, learning_rate=5e-2)
    test = neighbour_sum_task(np.random.default_rng(123), 512)

    def token_accuracy(model, tokens, lengths, tags):
        correct, n = jax.vmap(lambda w, n, y: tagging_correct(model(w, n), y, n))(tokens, lengths, tags)
        return jnp.sum(correct) / jnp.sum(n)

    accuracy = float(jit_model(token_accuracy, model)(test["tokens"], test["length"], test["tags"]))
    assert accuracy > 0.95, accuracy


@pytest.mark.usefixtures("standard_dtype_promotion")
def test_classifier_learns_contains_seven():
    model = SequenceClassifier(small(ClassifierConfig, cell="gru"), rngs=nnx.Rngs(0))
    model = fit(model, classifier_loss, contains_seven_task, steps=30, seed=2, learning_rate=3e-2)
    test = contains_seven_task(np.random.default_rng(456), 512)

    def accuracy_of(model, tokens, lengths, labels):
        return jnp.mean(jnp.argmax(jax.vmap(model)(tokens, lengths), axis=-1) == labels)

    accuracy = float(jit_model(accuracy_of, model)(test["tokens"], test["length"], test["label"]))
    assert accuracy > 0.95, accuracy


# --- invariants -------------------------------------------------------------------------------


def padded_versions(seed: int, length: int = 5):
    """The same ``length`` real tokens: padded to T = 8 with two different garbage tails (2, 8),
    the second out of the vocabulary, and unpadded (length,)."""
    rng = np.random.default_rng(seed)
    real = rng.integers(0, VOCAB, size=length).astype(np.int32)
    garbage = np.stack([rng.integers(0, VOCAB, size=8 - length), np.array([-1, VOCAB, 99])]).astype(np.int32)
    return length, jnp.asarray(np.concatenate([np.stack([real, real]), garbage], axis=1)), jnp.asarray(real)


@pytest.mark.parametrize("cell, bidirectional", [("rnn", True), ("lstm", True), ("gru", False)])
def test_padding_invariance(cell, bidirectional):
    """Real positions never see the padding, and the classifier reads the final hidden states:
    h_N, or [forward h after the last real token; backward h after the first] bidirectional.
    Every cell, and both layouts (each cell's own masked scan is checked in tests/test_cells.py)."""
    config = dict(cell=cell, bidirectional=bidirectional, num_layers=2)
    tagger = SequenceTagger(small(TaggerConfig, **config), rngs=nnx.Rngs(3))
    classifier = SequenceClassifier(small(ClassifierConfig, **config), rngs=nnx.Rngs(5))
    length, padded, real = padded_versions(4)
    hidden = classifier.config.hidden_dim

    def run(tagger, classifier):
        both = lambda w, n: (tagger(w, n), classifier(w, n))
        hs, _ = classifier.encoder(padded[0], length)  # (T, H) or (T, 2H): forward half, backward half
        summary = hs[length - 1] if not bidirectional else jnp.concatenate([hs[length - 1, :hidden], hs[0, hidden:]])
        lengths = jnp.full((2,), length, jnp.int32)
        return (jax.vmap(both)(padded, lengths), both(real, length), classifier.output(summary),
                classifier(padded[0], length + 2))

    (tags, classes), (tags_real, classes_real), from_summary, longer = jit_model(run, tagger, classifier)()
    assert tags.shape == (2, 8, TAGS) and classes.shape == (2, CLASSES) and tags_real.shape == (length, TAGS)
    # same T, different garbage (in and out of the vocabulary): bit for bit
    np.testing.assert_array_equal(tags[0, :length], tags[1, :length])
    np.testing.assert_array_equal(classes[0], classes[1])
    # as without padding
    np.testing.assert_allclose(tags[0, :length], tags_real, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(classes[0], classes_real, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(classes[0], from_summary, rtol=1e-6, atol=1e-6)
    # while the same tokens read as real do change the class scores
    assert not np.allclose(classes[0], longer)


@pytest.mark.parametrize("bidirectional, width", [(True, 32), (False, 16)])
def test_shapes(bidirectional, width):
    tagger = SequenceTagger(small(TaggerConfig, bidirectional=bidirectional), rngs=nnx.Rngs(0))
    classifier = SequenceClassifier(small(ClassifierConfig, bidirectional=bidirectional), rngs=nnx.Rngs(0))
    assert tagger.encoder.output_dim == width and tagger.output.in_features == width
    assert classifier.encoder.output_dim == width and classifier.output.in_features == width
    tokens, lengths = padded_tokens(np.random.default_rng(0), 4, max_len=9)
    assert jax.eval_shape(tagger, tokens[0], lengths[0]).shape == (9, TAGS)  # traced, not compiled
    assert jax.eval_shape(classifier, tokens[0], lengths[0]).shape == (CLASSES,)
    assert jax.eval_shape(jax.vmap(tagger), tokens, lengths).shape == (4, 9, TAGS)
    logits = jax.eval_shape(jax.vmap(classifier), tokens, lengths)
    assert logits.shape == (4, CLASSES) and logits.dtype == jnp.float32


def test_empty_sequence_reads_zero_states():
    model = SequenceClassifier(small(ClassifierConfig, cell="gru"), rngs=nnx.Rngs(0))
    logits = jit_model(call, model)(jnp.array([1, 2, 3], jnp.int32), 0)
    np.testing.assert_allclose(logits, model.output.bias[...], atol=1e-7)


def test_gradients_finite():
    """Through two bidirectional layers with dropout: finite, and nonzero for every parameter
    (Elman tagger, LSTM classifier; the GRU's gradients train the classifier above)."""
    config = dict(num_layers=2, dropout=0.3)
    tagger = SequenceTagger(small(TaggerConfig, cell="rnn", **config), rngs=nnx.Rngs(1))
    classifier = SequenceClassifier(small(ClassifierConfig, cell="lstm", **config), rngs=nnx.Rngs(1))
    task = neighbour_sum_task(np.random.default_rng(0), 2)
    padding = np.arange(MAX_LEN)[None, :] >= task["length"][:, None]
    task["tokens"] = np.where(padding, np.int32(99), task["tokens"])  # out of the vocabulary: still finite
    keys = jax.random.split(jax.random.key(0), 2)

    def tag_loss(model):
        nll, n = jax.vmap(lambda w, n, y, k: tagging_nll(model(w, n, k), y, n))(
            task["tokens"], task["length"], task["tags"], keys)
        return jnp.sum(nll) / jnp.sum(n)

    def class_loss(model):
        logits = jax.vmap(model)(task["tokens"], task["length"], keys)
        return jnp.mean(jax.vmap(classification_nll)(logits, jnp.array([0, 1], jnp.int32)))

    grads = jit_model(lambda t, c: (nnx.grad(tag_loss)(t), nnx.grad(class_loss)(c)), tagger, classifier)()
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    assert len(leaves) == 2 * (1 + 2 * 2 * 4 + 2)  # embedding, 2 layers x 2 directions x 4 arrays, output
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert all(np.any(g != 0) for g in leaves)  # every parameter is used


def test_dropout_only_with_a_key():
    config = dict(num_layers=2, dropout=0.5)
    tagger = SequenceTagger(small(TaggerConfig, **config), rngs=nnx.Rngs(0))
    classifier = SequenceClassifier(small(ClassifierConfig, **config), rngs=nnx.Rngs(0))
    quiet = SequenceClassifier(small(ClassifierConfig, num_layers=2), rngs=nnx.Rngs(0))
    length, padded, _ = padded_versions(9)
    k1, k2 = jax.random.key(1), jax.random.key(2)

    def run(tagger, classifier, quiet):
        return [(m(padded[0], length), m(padded[0], length, k1), m(padded[0], length, k2))
                for m in (tagger, classifier, quiet)]

    (tag, tag1, tag2), (cls, cls1, cls2), (q, q1, q2) = jit_model(run, tagger, classifier, quiet)()
    for plain, one, two in [(tag, tag1, tag2), (cls, cls1, cls2)]:
        assert not np.allclose(plain, one) and not np.allclose(one, two)
    np.testing.assert_array_equal(q, q1)  # no dropout configured: a key changes nothing
    np.testing.assert_array_equal(q, q2)
    # no key: no dropout, whatever the rate (the rate does not change the initial parameters)
    np.testing.assert_allclose(cls, q, rtol=1e-6, atol=1e-6)


def test_tagging_helpers_ignore_padding():
    logits = jnp.array([[2.0, 0.0], [0.0, 2.0], [5.0, -5.0]])
    tags = jnp.array([0, 0, 1], jnp.int32)  # position 2 is padding (and would be wrong)
    out_of_range = jnp.array([0, 0, 99], jnp.int32)  # nor does an invalid tag at padding matter

    @jax.jit
    def helpers():
        expected = optax.softmax_cross_entropy_with_integer_labels(logits[:2], tags[:2]).sum()
        return tagging_nll(logits, tags, 2), tagging_nll(logits, out_of_range, 2)[0], expected, tagging_correct(logits, tags, 2)

    (nll, n), nll_out_of_range, expected, (correct, count) = helpers()
    np.testing.assert_allclose(nll, expected, rtol=1e-6)
    np.testing.assert_allclose(nll_out_of_range, expected, rtol=1e-6)
    assert (float(n), float(correct), float(count)) == (2.0, 1.0, 2.0)


@pytest.mark.parametrize("bad, message", [({"cell": "transformer"}, r"cell='transformer': must be one of rnn, lstm, gru"),
                                          ({"num_layers": 0}, r"num_layers=0: must be at least 1"),
                                          ({"dropout": 1.0}, r"dropout=1\.0: must be in \[0, 1\)"),
                                          ({"hidden_dim": 0}, r"hidden_dim=0: must be at least 1"),
                                          ({"vocab_size": 0}, r"vocab_size=0: must be at least 1")])
@pytest.mark.parametrize("config_cls", [TaggerConfig, ClassifierConfig])
def test_config_validation(config_cls, bad, message):
    with pytest.raises(ValueError, match=f"^{config_cls.__name__}.{message}"):
        small(config_cls, **bad)
    out = "num_tags" if config_cls is TaggerConfig else "num_classes"
    with pytest.raises(ValueError, match=f"^{config_cls.__name__}.{out}=0: must be at least 1"):
        small(config_cls, **{out: 0})


def test_configs_are_frozen_and_not_seq2seq_models():
    config = small(TaggerConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cell = "gru"
    assert (config.cell, config.num_layers, config.bidirectional, config.dropout) == ("lstm", 1, True, 0.0)
    from zoo.models import MODELS
    assert not {SequenceTagger, SequenceClassifier} & {architecture.model for architecture in MODELS.values()}
