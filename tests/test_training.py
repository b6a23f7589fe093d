"""Training step, data parallelism, checkpoints, exact resume and zoo.load, on a tiny corpus."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from corpus import write_tiny_multi30k

import zoo
from zoo import metrics_log
from zoo.checkpoint import CheckpointStore, write_or_check_config
from zoo.compilation import CompileCounter
from zoo.config import BahdanauConfig, Config, DataConfig, TrainConfig
from zoo.data.batching import collate
from zoo.data.corpora import load_split
from zoo.data.dataset import within_max_length
from zoo.data.pipeline import TextPipeline
from zoo.decoding import greedy
from zoo.distributed import data_parallel
from zoo.errors import ZooError
from zoo.evaluation import make_eval_nll
from zoo.flops import jaxpr_flops
from zoo.loss import example_nll
from zoo.models import MODELS, build
from zoo.runtime import DispatchWindow
from zoo.training import init_state, make_optimizer, make_train_step, step_key, train
from zoo.translator import Translator

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


TINY_MODEL = BahdanauConfig(embed_dim=8, hidden_dim=16, attention_dim=8, maxout_dim=8, dropout=0.1)


def tiny_config(**train_overrides) -> Config:
    train_config = dict(epochs=3, batch_size=8, learning_rate=1e-2, checkpoint_every=2)
    train_config.update(train_overrides)
    return Config(model_name="bahdanau", model=TINY_MODEL, data=DataConfig(min_freq=1), train=TrainConfig(**train_config))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_multi30k(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def pipeline_and_batch(data_dir):
    src, tgt = load_split("multi30k", "train", "de", "en", data_dir)
    pipeline = TextPipeline.build(DataConfig(min_freq=1), src, tgt)
    src_ids, tgt_ids = pipeline.encode_source(src), pipeline.encode_target(tgt)
    model_config = dataclasses.replace(TINY_MODEL, src_vocab_size=len(pipeline.src_vocab), tgt_vocab_size=len(pipeline.tgt_vocab))
    return pipeline, model_config, collate(src_ids, tgt_ids, np.arange(8), 8)


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def losses(workdir):
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r], [r["val_loss"] for r in records if "val_loss" in r]


# One optimizer for the tests that compile the training step on the shared batch: the single-device
# step is one program, compiled once and loaded from the compilation cache after.
STEP_TRAIN_CONFIG = TrainConfig(learning_rate=1e-2)


def test_train_step_lowers_loss(pipeline_and_batch):
    _, model_config, batch = pipeline_and_batch
    tx = make_optimizer(STEP_TRAIN_CONFIG)
    graphdef, state = init_state(build("bahdanau", model_config), tx)
    train_step = make_train_step(graphdef, tx)
    first = None
    for step in range(30):
        state, metrics = train_step(state, batch, jax.random.key(0))  # the step derives its dropout key
        first = float(metrics["loss"]) if first is None else first
    assert int(state["step"]) == 30
    assert first > 2.5  # about log(vocabulary size) at initialisation
    assert float(metrics["loss"]) < 0.3 * first


def test_four_devices_give_single_device_numbers(pipeline_and_batch):
    assert jax.device_count() == 4, "conftest.py must force 4 CPU devices"
    _, model_config, batch = pipeline_and_batch
    tx = make_optimizer(STEP_TRAIN_CONFIG)
    graphdef, state = init_state(build("bahdanau", model_config), tx)
    host_state = jax.device_get(state)
    train_step = make_train_step(graphdef, tx)
    one = jax.devices()[0]
    single_state, single = train_step(jax.device_put(host_state, one), jax.device_put(batch, one), step_key(jax.random.key(0), 0))
    batch_sharding, replicated = data_parallel()
    sharded_batch = jax.device_put(batch, batch_sharding)
    assert len(sharded_batch["src"].sharding.device_set) == 4
    multi_state, multi = train_step(jax.device_put(host_state, replicated), sharded_batch, step_key(jax.random.key(0), 0))
    np.testing.assert_allclose(float(multi["loss"]), float(single["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(multi["grad_norm"]), float(single["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(multi_state["params"]), jax.tree.leaves(single_state["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


# The 8-step run several tests read (6 steps an epoch: it crosses one): logged and checkpointed every 4 steps
LOGGED = dict(log_every=4, checkpoint_every=4)


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, data_dir):
    """The 8-step :data:`LOGGED` run, with every device-to-host read of its loop recorded and
    implicit reads refused (the transfer guard would raise on a float() of a device array):
    ``(workdir, train's result, the reads)``."""
    workdir, reads = tmp_path_factory.mktemp("logged"), []
    real = metrics_log.read_metrics

    def counted(pending):
        reads.append(pending)
        return real(pending)

    with pytest.MonkeyPatch.context() as patch, jax.numpy_dtype_promotion("standard"):
        patch.setattr(metrics_log, "read_metrics", counted)
        with jax.transfer_guard_device_to_host("disallow"):
            result = train(tiny_config(max_steps=8, **LOGGED), workdir, data_dir, progress=False)
    return workdir, result, reads


@pytest.mark.parametrize("batching", [LOGGED, {"batch_tokens": 80, "log_every": 3}], ids=["sentences", "tokens"])
def test_interrupted_then_resumed_run_reproduces_losses(tmp_path, data_dir, batching, logged_run):
    """Stopped after step 5, resumed from the checkpoint at step 4: the losses of the run without
    a stop (for sentence batches: :func:`logged_run`'s)."""
    uninterrupted, interrupted = tmp_path / "a", tmp_path / "b"
    if batching is LOGGED:
        uninterrupted = logged_run[0]
    else:
        train(tiny_config(max_steps=8, **batching), uninterrupted, data_dir, progress=False)
    train(tiny_config(max_steps=5, **batching), interrupted, data_dir, progress=False)
    shutil.rmtree(interrupted / "checkpoints" / "5")  # the run "died" after the checkpoint at step 4
    result = train(tiny_config(max_steps=8, **batching), interrupted, data_dir, progress=False)
    assert result["step"] == 8
    expected, got = losses(uninterrupted), losses(interrupted)
    assert [s for s, _ in got[0]] == list(range(1, 9))
    assert got == expected  # bit-identical losses, and the same validation loss at the epoch end


@pytest.fixture(scope="module")
def saved_workdir(tmp_path_factory, pipeline_and_batch):
    """A workdir with an untrained model's state saved at step 0, and its Translator."""
    pipeline, model_config, _ = pipeline_and_batch
    workdir = tmp_path_factory.mktemp("saved")
    config = Config(model_name="bahdanau", model=model_config, data=DataConfig(min_freq=1), train=TrainConfig())
    write_or_check_config(workdir, config)
    pipeline.save(workdir)
    graphdef, state = init_state(build("bahdanau", model_config, seed=3), make_optimizer(config.train))
    store = CheckpointStore(workdir)
    store.save(0, state, {"epoch": 0, "batch": 0, "best_val_loss": 1.0}, val_loss=1.0)
    store.close()
    return workdir, Translator(config, pipeline, graphdef, state["params"], 0)


def test_save_load_gives_identical_translations(saved_workdir):
    workdir, original = saved_workdir
    loaded = zoo.load(workdir)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(original.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    sentences = ["Ein Hund schläft im Park.", "Eine Katze singt."]
    hyps, attention = loaded.translate(sentences)
    expected_hyps, expected_attention = original.translate(sentences)
    assert hyps == expected_hyps
    for a, b in zip(attention, expected_attention):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-5)  # target × source, rows are α_i
    for t in loaded.translate_tokens(sentences):
        assert t.attention.shape == (len(t.tokens), len(t.source_tokens))
        assert t.source_tokens[-1] == "<eos>"


def test_restoring_into_another_config_names_parameter_and_shapes(saved_workdir, tmp_path):
    workdir, _ = saved_workdir
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["hidden_dim"] = 32
    (other / "config.json").write_text(json.dumps(config))
    shape = r"\(\d+(, \d+)?\)"
    with pytest.raises(ZooError, match=rf"checkpoint parameter \S+ has shape {shape} but the model expects {shape}"):
        zoo.load(other)


def test_workdir_refuses_another_config(data_dir, logged_run):
    workdir = logged_run[0]
    before = snapshot(workdir)
    bigger = dataclasses.replace(tiny_config(), model=dataclasses.replace(TINY_MODEL, hidden_dim=32))
    with pytest.raises(ZooError, match=r"model\.hidden_dim=16, not 32"):
        train(bigger, workdir, data_dir, progress=False)
    assert snapshot(workdir) == before


def test_teacher_forcing_ratio_ends_are_teacher_forced_and_free_running(pipeline_and_batch):
    _, model_config, batch = pipeline_and_batch
    model = build("bahdanau", dataclasses.replace(model_config, dropout=0.0))
    example = jax.tree.map(lambda x: x[1], batch)
    key = jax.random.key(5)
    forced = example_nll(model, example)
    np.testing.assert_allclose(example_nll(model, example, key, teacher_forcing=1.0), forced, rtol=1e-6)
    # free running by hand: greedy logits scored against the reference tokens
    memory = model.encode(example["src"], example["src_length"])
    _, logits, _ = greedy(model, memory, example["tgt_out"].shape[0])
    n = int(example["tgt_length"])
    log_p = jax.nn.log_softmax(logits[:n])
    by_hand = -float(sum(log_p[i, example["tgt_out"][i]] for i in range(n)))
    for k in (None, key):
        nll, count = example_nll(model, example, k, teacher_forcing=0.0)
        np.testing.assert_allclose(float(nll), by_hand, rtol=1e-5)
        assert int(count) == n
    with pytest.raises(ValueError, match="needs a key"):
        example_nll(model, example, None, teacher_forcing=0.5)


@pytest.mark.parametrize("name", ["sutskever", "luong"])
def test_save_load_models_with_layer_lists(name, pipeline_and_batch, tmp_path):
    """Stacked layers live in an nnx.List, whose integer keys Orbax stores as strings."""
    pipeline, _, _ = pipeline_and_batch
    model_config = MODELS[name].config(
        src_vocab_size=len(pipeline.src_vocab), tgt_vocab_size=len(pipeline.tgt_vocab), embed_dim=8, hidden_dim=8,
        num_layers=2)
    config = Config(model_name=name, model=model_config, data=DataConfig(min_freq=1), train=TrainConfig())
    write_or_check_config(tmp_path, config)
    pipeline.save(tmp_path)
    _, state = init_state(build(name, model_config, seed=5), make_optimizer(config.train))
    store = CheckpointStore(tmp_path)
    store.save(0, state, {"epoch": 0, "batch": 0, "best_val_loss": 1.0}, val_loss=1.0)
    store.close()
    loaded = zoo.load(tmp_path)
    flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
    assert any("layers" in jax.tree_util.keystr(p) for p, _ in flat)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loop_reads_the_device_once_per_log_interval(logged_run):
    """8 steps, log_every=4 (and checkpoints every 4, which read the same metrics), an epoch of 6
    steps: reads after steps 4, 6 (epoch end) and 8, and none implicit (:func:`logged_run`)."""
    workdir, result, reads = logged_run
    assert result["step"] == 8
    assert [len(pending) for pending in reads] == [4, 2, 2]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    intervals = [r for r in records if r.get("event") == "interval"]
    assert [(r["step"], r["steps"]) for r in intervals] == [(4, 4), (6, 2), (8, 2)]
    for r in intervals:
        assert r["tokens_per_s"] > 0 and r["step_time_s"] > 0 and 0 < r["mfu"] and r["flops_per_s"] > 0
    start = records[0]
    assert start["event"] == "start" and start["steps_per_epoch"] == 6 and 0 < start["real_token_share"] <= 1
    end = records[-1]
    assert end["event"] == "end" and (end["step"], end["epoch"], end["stopped_by"]) == (8, 1, None)
    assert 0 < end["wall_s"] <= result["wall_s"]


def test_the_host_stays_at_most_two_calls_ahead_of_the_device():
    """After dispatching call i the loop waits for call i − 2: the device keeps one call queued
    behind the running one, and a stop signal waits for two calls, not for a whole log interval."""
    waited = []

    class Output:  # a dispatched call's output, ready when waited for
        def __init__(self, i):
            self.i = i

        def block_until_ready(self):
            waited.append(self.i)
            return self

    window = DispatchWindow()
    for i in range(6):
        window.add({"loss": Output(i)})
        assert waited == list(range(i - 1))


def test_step_flops_count_matrix_products_and_scan_iterations():
    def f(x, w):
        def body(h, _):
            return jnp.tanh(h @ w), None  # 2·4·8·8 FLOPs an iteration
        return jax.lax.scan(body, x, None, length=5)[0] @ w.T  # + 2·4·8·8

    jaxpr = jax.make_jaxpr(f)(jnp.ones((4, 8)), jnp.ones((8, 8)))
    assert jaxpr_flops(jaxpr) == 6 * 2 * 4 * 8 * 8
    conv = jax.make_jaxpr(lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), "SAME"))(jnp.ones((2, 3, 10)),
                                                                                       jnp.ones((5, 3, 4)))
    assert jaxpr_flops(conv) == 2 * (2 * 5 * 10) * (3 * 4)  # outputs × (C_in · k)


def test_a_second_call_with_the_same_shapes_compiles_nothing(pipeline_and_batch, saved_workdir):
    """The train step, the eval step and translate are compiled once per shape (as Optax's tests guard)."""
    _, model_config, batch = pipeline_and_batch
    tx = make_optimizer(STEP_TRAIN_CONFIG)
    graphdef, state = init_state(build("bahdanau", model_config), tx)
    train_step, eval_nll = make_train_step(graphdef, tx), make_eval_nll(graphdef)
    _, translator = saved_workdir
    key = jax.random.key(0)

    def calls(state):
        state, _ = train_step(state, batch, key)
        jax.block_until_ready(eval_nll(state["params"], batch))
        translator.translate(["Ein Hund schläft im Park."])
        return state

    with CompileCounter() as first:
        state = calls(state)
    with CompileCounter() as second:
        calls(state)
    assert first.programs >= 2 and second.programs == 0  # the translator may have compiled in an earlier test


def test_pairs_over_max_length_are_left_out_and_counted():
    (src, tgt), skipped = within_max_length([[1] * 3, [1] * 9, [1] * 2], [[2] * 4, [2] * 2, [2] * 10], max_length=5)
    assert (src, tgt, skipped) == ([[1] * 3], [[2] * 4], 2)


def test_steps_per_call_equals_single_steps_and_resumes_bit_for_bit(tmp_path, data_dir):
    """With every batch of one shape (sentence batches padded to 64), ``steps_per_call=4`` keeps
    the plan's order, so its 12 steps (calls of 4, 2 | 4, 2: the 2s fill half the slots) must give
    the single-step run's losses exactly; stopped at step 10 (mid-epoch, after a call) and
    resumed, the run must be the same again."""
    def config(steps_per_call, **train):
        return dataclasses.replace(tiny_config(epochs=2, steps_per_call=steps_per_call, **train),
                                   data=DataConfig(min_freq=1, length_multiple=64))

    train(config(1), tmp_path / "single", data_dir, progress=False)
    assert train(config(4, max_steps=11), tmp_path / "calls", data_dir, progress=False)["step"] == 10  # 10 + 2 > 11
    result = train(config(4), tmp_path / "calls", data_dir, progress=False)
    assert result["step"] == 12
    (single, single_val), (calls, calls_val) = losses(tmp_path / "single"), losses(tmp_path / "calls")
    assert [s for s, _ in calls] == list(range(1, 13))
    assert calls == single and calls_val == single_val
