"""Several processes, one run: two real processes on this machine train as one process does;
FSDP gives the replicated numbers; evaluation and decoding split their batches over the devices."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from compile_options import FAST_COMPILE
from corpus import write_tiny_multi30k
from jax.sharding import PartitionSpec as P

from zoo import evaluation
from zoo.checkpoint import CheckpointStore
from zoo.config import BahdanauConfig, Config, DataConfig, TrainConfig
from zoo.data.batching import collate
from zoo.data.corpora import load_split
from zoo.data.pipeline import TextPipeline
from zoo.distributed import data_parallel, state_shardings
from zoo.errors import ZooError
from zoo.evaluation import dataset_nll
from zoo.models import build
from zoo.training import init_state, make_optimizer, make_train_step, train
from zoo.translator import Translator

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = BahdanauConfig(embed_dim=8, hidden_dim=16, attention_dim=8, maxout_dim=8, dropout=0.1)
TINY_TRAIN = dict(epochs=3, batch_size=8, learning_rate=1e-2, checkpoint_every=2)  # 6 steps an epoch


def tiny_config(**train_overrides) -> Config:
    return Config(model_name="bahdanau", model=TINY_MODEL, data=DataConfig(min_freq=1),
                  train=TrainConfig(**{**TINY_TRAIN, **train_overrides}))


def tiny_cli_args(workdir, data_dir, max_steps: int) -> list[str]:
    """train.py's arguments for :func:`tiny_config`."""
    sets = [arg for name in ("embed_dim", "hidden_dim", "attention_dim", "maxout_dim", "dropout")
            for arg in (f"--model.{name.replace('_', '-')}", str(getattr(TINY_MODEL, name)))]
    return ["--model", "bahdanau", *sets, "--data.min-freq", "1", "--train.epochs", "3", "--train.batch-size", "8",
            "--train.learning-rate", "1e-2", "--train.checkpoint-every", "2", "--train.max-steps", str(max_steps),
            "--workdir", str(workdir), "--data-dir", str(data_dir),
            "--no-progress", "--compilation-cache", "off"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_tiny_multi30k(tmp_path_factory.mktemp("data"))


def records(workdir) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def losses(workdir) -> dict:
    """step -> loss, and ("val", step) -> validation loss."""
    out = {}
    for r in records(workdir):
        if "loss" in r:
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = r["loss"]
        if "val_loss" in r:
            out["val", r["step"]] = r["val_loss"]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_two_processes(workdir, data_dir, logs, max_steps: int) -> list[subprocess.Popen]:
    """train.py as processes 0 and 1 of one run, of 2 CPU devices each (gloo), writing to the files
    ``logs`` [(stdout, stderr)] (a full pipe would block a process); the runs of a module share a
    compilation cache (in ``data_dir``), so that only the first compiles."""
    port = free_port()
    two_devices = os.environ["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=4",
                                                  "--xla_force_host_platform_device_count=2")  # the session's other flags kept
    env = {**os.environ, "XLA_FLAGS": two_devices, "JAX_PLATFORMS": "cpu"}
    args = [*tiny_cli_args(workdir, data_dir, max_steps=max_steps)[:-1], str(Path(data_dir) / "xla-cache")]
    return [subprocess.Popen([sys.executable, "train.py", *args,
                              "--coordinator-address", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                             cwd=REPO, env=env, stdout=out.open("w"), stderr=err.open("w"))
            for i, (out, err) in enumerate(logs)]


def wait_for(processes: list[subprocess.Popen], timeout: float = 240) -> list[int]:
    """The exit codes; a process that failed leaves the other waiting for it: killed after ``timeout``."""
    try:
        for p in processes:
            p.wait(timeout=timeout)
    finally:
        for p in processes:
            p.kill()
    return [p.returncode for p in processes]


def printed(logs) -> list[list[str]]:
    """Each process's stdout lines that are ours: gloo prints its own connection lines from its
    threads, which may split or interleave them (an empty line, a line cut at '[Gloo] Rank ')."""
    ours = lambda line: line.strip() and "[Gloo]" not in line and "peer ranks" not in line
    return [[line for line in out.read_text().splitlines() if ours(line)] for out, _ in logs]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, data_dir):
    """A run of 7 steps on two processes: its workdir, logs and losses (step -> loss)."""
    root = tmp_path_factory.mktemp("two")
    logs = [(root / f"stdout{i}", root / f"stderr{i}") for i in (0, 1)]
    codes = wait_for(start_two_processes(root / "w", data_dir, logs, max_steps=7))
    assert codes == [0, 0], [err.read_text()[-2000:] for _, err in logs]
    return root / "w", logs, losses(root / "w")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="JAX has no multi-process CPU collectives (gloo) on Windows")
def test_two_processes_train_as_one_and_the_run_resumes_on_one(tmp_path, data_dir, two_process_run):
    """Two processes of 2 CPU devices each (gloo) against one process of 4 devices: the same global
    batches and dropout keys, so the same losses (to float reduction order); one copy of every
    file; and the two-process workdir resumes on one process with the one-process numbers."""
    one = tmp_path / "one"
    two = shutil.copytree(two_process_run[0], tmp_path / "two")
    lines = printed(two_process_run[1])
    assert len(lines[0]) == 3 and lines[0][0].startswith("preparing the training data (")  # process 0 prepares
    assert lines[0][2].startswith("trained to step 7 (epoch 1)") and lines[1] == []  # only process 0 prints

    train(tiny_config(max_steps=9), one, data_dir, progress=False)  # the reference: one process, 4 devices
    expected, got = losses(one), losses(two)
    assert list(got) == [1, 2, 3, 4, 5, 6, ("val", 6), 7]  # every step logged once, the epoch's validation too
    np.testing.assert_allclose([got[k] for k in got], [expected[k] for k in got], rtol=1e-6)
    start = [r for r in records(two) if r.get("event") == "start"]
    assert len(start) == 1 and start[0]["devices"].count("CpuDevice") == 4
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    for name in ("src_vocab.json", "tgt_vocab.json", "data_fingerprint.json"):
        assert (two / name).read_text() == (one / name).read_text()
    configs = [json.loads((w / "config.json").read_text()) for w in (two, one)]
    assert [c["train"].pop("max_steps") for c in configs] == [7, 9] and configs[0] == configs[1]

    result = train(tiny_config(max_steps=9), two, data_dir, progress=False)  # resume on one process
    assert result["step"] == 9
    resumed = losses(two)
    np.testing.assert_allclose([resumed[8], resumed[9]], [expected[8], expected[9]], rtol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="JAX has no multi-process CPU collectives (gloo) on Windows")
def test_a_signal_to_one_process_stops_both_at_the_same_step_and_the_rerun_is_bit_for_bit(tmp_path, data_dir,
                                                                                        two_process_run):
    """SIGTERM reaches process 1 only, once both are past writing the workdir (process 0 has started
    metrics.jsonl): both agree to stop at the same sync point (the loop's start or a save: a step S
    that depends on when the signal lands), save S once, exit 143, and the rerun on two processes
    gives the uninterrupted run's losses bit for bit."""
    workdir = tmp_path / "w"
    logs = [(tmp_path / f"stdout{i}", tmp_path / f"stderr{i}") for i in (0, 1)]
    processes = start_two_processes(workdir, data_dir, logs, max_steps=7)
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists():
        assert all(p.poll() is None for p in processes) and time.time() < deadline, [e.read_text()[-2000:] for _, e in logs]
        time.sleep(0.01)
    processes[1].send_signal(signal.SIGTERM)
    assert wait_for(processes) == [143, 143], [err.read_text()[-2000:] for _, err in logs]
    lines = [[line for line in out if not line.startswith("preparing the training data (")] for out in printed(logs)]
    saved = int(re.fullmatch(r"saved step (\d+), stopping on SIGTERM", lines[0][0]).group(1))
    assert saved < 7 and lines[0][1].startswith(f"trained to step {saved} ") and lines[1] == []
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert steps[-1] == saved and [s for s in losses(workdir) if isinstance(s, int)] == list(range(1, saved + 1))
    assert records(workdir)[-1]["stopped_by"] == "SIGTERM" and records(workdir)[-1]["step"] == saved
    assert wait_for(start_two_processes(workdir, data_dir, logs, max_steps=7)) == [0, 0], logs[0][1].read_text()[-2000:]
    assert losses(workdir) == two_process_run[2]  # bit for bit


@pytest.fixture(scope="module")
def tiny(data_dir):
    """The tiny model's pipeline, config, graphdef and state, and a batch of 8 training pairs."""
    src, tgt = load_split("multi30k", "train", "de", "en", data_dir)
    pipeline = TextPipeline.build(DataConfig(min_freq=1), src, tgt)
    model_config = BahdanauConfig(**{**TINY_MODEL.__dict__, "src_vocab_size": len(pipeline.src_vocab),
                                     "tgt_vocab_size": len(pipeline.tgt_vocab)})
    graphdef, state = init_state(build("bahdanau", model_config), make_optimizer(TrainConfig()))
    batch = collate(pipeline.encode_source(src), pipeline.encode_target(tgt), np.arange(8), 8)
    return pipeline, model_config, graphdef, jax.device_get(state), batch, (src[:8], tgt[:8])


def test_fsdp_shards_parameters_and_gives_the_replicated_numbers(tiny, tmp_path):
    _, _, graphdef, host_state, batch, _ = tiny
    tx = make_optimizer(TrainConfig())
    batch_sharding, replicated = data_parallel()
    results = {}
    for fsdp in (False, True):
        shardings = state_shardings(host_state, replicated.mesh, fsdp)
        state = jax.device_put(host_state, shardings)
        placed, key = jax.device_put(batch, batch_sharding), jax.random.key(0)
        step = make_train_step(graphdef, tx, state_sharding=shardings).lower(state, placed, key).compile(FAST_COMPILE)
        for _ in range(2):
            state, metrics = step(state, placed, key)
        results[fsdp] = state, metrics
    state, _ = results[True]
    specs = {jax.tree_util.keystr(p): x.sharding.spec for p, x in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    embedding = next(k for k in specs if "src_embed" in k)  # (V, 8): V is a multiple of 4 or 8 is split
    assert "data" in specs[embedding]
    assert all(spec == P() or "data" in spec for spec in specs.values())
    assert sum("data" in spec for spec in specs.values()) >= len(specs) // 2
    for a, b in zip(jax.tree.leaves(results[True]), jax.tree.leaves(results[False])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # the sharded state saves and restores into either layout
    store = CheckpointStore(tmp_path)
    store.save(2, state, {"epoch": 0})
    store.close()
    for fsdp in (False, True):
        shardings = state_shardings(host_state, replicated.mesh, fsdp)
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), host_state, shardings)
        restored, _ = CheckpointStore(tmp_path, read_only=True).restore(target)
        for a, b, s in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(shardings)):
            assert a.sharding == s
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_state_shardings_split_the_largest_divisible_axis(tiny):
    mesh = data_parallel()[1].mesh
    shapes = {"a": np.zeros((6, 8)), "b": np.zeros((12, 8)), "c": np.zeros((3, 5)), "d": np.zeros(())}
    specs = {k: s.spec for k, s in state_shardings(shapes, mesh, fsdp=True).items()}
    assert specs == {"a": P(None, "data"), "b": P("data"), "c": P(), "d": P()}
    assert all(s.spec == P() for s in state_shardings(shapes, mesh, fsdp=False).values())


def test_translation_and_perplexities_split_batches_over_the_devices(tiny, monkeypatch):
    pipeline, model_config, graphdef, host_state, _, (sources, references) = tiny
    translator = Translator(tiny_config(), pipeline, graphdef, host_state["params"], 0)
    assert translator.batch_rows(6) == 8  # rounded up to the 4 devices
    outputs, batches = [], []
    decode, make = Translator._decode, evaluation.make_eval_nll

    def recording_decode(self, params, batch, beam_size, max_length):
        outputs.append(decode(self, params, batch, beam_size, max_length))
        return outputs[-1]

    def recording_make(graphdef, teacher_forcing):
        eval_nll = make(graphdef, teacher_forcing)
        return lambda params, batch: batches.append(batch) or eval_nll(params, batch)

    monkeypatch.setattr(Translator, "_decode", recording_decode)
    monkeypatch.setattr(evaluation, "make_eval_nll", recording_make)
    for beam_size in (2, 1):
        translator.translate(sources, beam_size=beam_size)
        tokens = outputs[-1][0]
        assert tokens.sharding.spec == P("data") and len(tokens.sharding.device_set) == 4
    src_ids = pipeline.encode_source(sources)  # greedy: the same tokens as on one device
    order = np.argsort([len(s) for s in src_ids], kind="stable")
    batch = collate(src_ids, [[] for _ in src_ids], order, tokens.shape[0])  # the rows translate used
    one = jax.devices()[0]
    single, _ = decode(translator, jax.device_put(host_state["params"], one), jax.device_put(batch, one), 1, tokens.shape[1])
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(single))
    ppl = evaluation.perplexities(translator, sources, references, batch_size=6)
    assert batches and all(b["src"].sharding.spec == P("data") and len(b["src"].sharding.device_set) == 4 for b in batches)
    ids = pipeline.encode_source(sources), pipeline.encode_target(references)
    unsharded = dataset_nll(make(graphdef, 1.0), host_state["params"], *ids, 8, 8)
    np.testing.assert_allclose(np.log(ppl["ppl_teacher_forced"]), unsharded, rtol=1e-6)


def test_batch_that_does_not_split_over_the_devices_is_refused_before_writing(tmp_path, data_dir):
    workdir = tmp_path / "w"
    with pytest.raises(ZooError, match=r"^--train\.batch-size 6 does not split over 4 devices; use a multiple of 4$"):
        train(tiny_config(batch_size=6), workdir, data_dir, progress=False)
    with pytest.raises(ZooError, match=r"^--train\.batch-size 6 does not split over 4 devices"):  # sizes validation batches
        train(tiny_config(batch_size=6, batch_tokens=80), workdir, data_dir, progress=False)
    assert not workdir.exists()
