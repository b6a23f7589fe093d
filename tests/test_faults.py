"""Faults driven through the real train.py: signals, a diverging run, bad flags; each checks the
exit code, the one-line message and what the workdir holds."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from corpus import write_tiny_multi30k

from zoo.cli import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.embed-dim", "8", "--model.hidden-dim", "8", "--model.attention-dim", "8", "--model.maxout-dim", "8",
        "--data.min-freq", "1", "--train.batch-size", "8", "--no-progress"]

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_multi30k(tmp_path_factory.mktemp("data"), sizes=(("train", 480), ("val", 8), ("test_2016_flickr", 8)))


def step_losses(workdir: Path) -> list:
    return [(r["step"], r["loss"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run of 150 steps (60 an epoch), and the compilation cache the runs share."""
    root = tmp_path_factory.mktemp("reference")
    full = start(root / "full", data, root / "cache", "--train.max-steps", "150")
    assert full.wait(timeout=300) == 0, full.stderr.read()
    return root / "full", root / "cache"


def start(workdir: Path, data: Path, cache: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "train.py"), "--workdir", str(workdir), "--data-dir", str(data), *TINY,
            "--train.log-every", "1", "--train.checkpoint-every", "1000", *extra]
    return subprocess.Popen(args, env={**os.environ, "ZOO_COMPILATION_CACHE": str(cache)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_the_rerun_continues_bit_for_bit(tmp_path, data, reference, signum):
    (full, cache), workdir = reference, tmp_path / "run"
    run = start(workdir, data, cache, "--train.max-steps", "150")
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists() or len(step_losses(workdir)) < 3:  # in the loop, past compilation
        assert run.poll() is None and time.time() < deadline, run.stderr.read()
        time.sleep(0.05)
    run.send_signal(signum)
    sent = time.time()
    code = run.wait(timeout=60)
    out = run.stdout.read()
    assert code == 128 + signum, run.stderr.read()
    assert time.time() - sent < 30
    saved = int(out.split("saved step ")[1].split(",")[0])
    assert f"saved step {saved}, stopping on {signal.Signals(signum).name}" in out
    assert 3 <= saved < 150 and (workdir / "checkpoints" / str(saved)).is_dir()
    assert [s for s, _ in step_losses(workdir)] == list(range(1, saved + 1))
    assert step_losses(workdir) == step_losses(full)[:saved]
    if signum == signal.SIGTERM:  # (the rerun after SIGINT is the same code path)
        rerun = start(workdir, data, cache, "--train.max-steps", "150")
        assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
        assert step_losses(workdir) == step_losses(full)  # bit for bit


def test_a_diverging_run_stops_naming_the_step_and_saves_nothing_non_finite(tmp_path, data, capsys):
    workdir = tmp_path / "w"
    code = train.main(["--workdir", str(workdir), "--data-dir", str(data), *TINY, "--train.learning-rate", "1e30",
                       "--train.checkpoint-every", "2", "--train.log-every", "1", "--train.max-steps", "20"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "loss is nan" in err or "grad_norm is nan" in err or " is inf" in err
    bad_step = int(err.split("step ")[1].split(":")[0])
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert all(step < bad_step for step in saved)  # every checkpoint precedes the first non-finite step
    assert max(s for s, _ in step_losses(workdir)) < bad_step


@pytest.mark.parametrize("flags, message", [
    (["--train.batch-size", "0"], "TrainConfig.batch_size=0: must be at least 1"),
    (["--train.checkpoint-every", "0"], "TrainConfig.checkpoint_every=0: must be at least 1"),
    (["--train.seed", "-1"], "TrainConfig.seed=-1: must be at least 0"),
    (["--train.max-steps", "0"], "TrainConfig.max_steps=0: must be at least 1"),
    (["--train.epochs", "-1"], "TrainConfig.epochs=-1: must be at least 1"),
    (["--train.learning-rate", "nan"], "TrainConfig.learning_rate=nan: must be a finite number > 0"),
    (["--train.batch-size", "6"], "--train.batch-size 6 does not split over 4 devices"),
])
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, data, capsys, flags, message):
    workdir = tmp_path / "w"
    assert train.main(["--workdir", str(workdir), "--data-dir", str(data), *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not workdir.exists()


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_kill_9_leaves_a_resumable_workdir(tmp_path, data, reference, capsys):
    (full, cache), workdir = reference, tmp_path / "run"
    flags = ["--train.max-steps", "150", "--train.checkpoint-every", "7"]  # the checkpoints do not change the losses
    run = start(workdir, data, cache, *flags)
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists() or len(step_losses(workdir)) < 10:
        assert run.poll() is None and time.time() < deadline, run.stderr.read()
        time.sleep(0.05)
    assert train.main(["--workdir", str(workdir), "--data-dir", str(data), *TINY, *flags]) == 2
    assert f"process {run.pid} is training in this workdir" in capsys.readouterr().err
    time.sleep(random.Random(0).uniform(0.0, 1.0))  # somewhere in the run: a step, a save, a validation
    run.kill()
    run.wait(timeout=60)
    rerun = start(workdir, data, cache, *flags)  # the dead process's lock does not block
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert step_losses(workdir) == step_losses(full)
