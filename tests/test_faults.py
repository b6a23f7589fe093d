"""Faults driven through the real train.py: signals, a diverging run, bad flags; each checks the
exit code, the one-line message and what the workdir holds."""

import errno
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from corpus import sentence_pairs, write_tiny_multi30k

import zoo
from zoo.cli import evaluate, train
from zoo.errors import ZooError
from zoo.evaluation import dataset_nll
from zoo.metrics_log import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model.embed-dim", "8", "--model.hidden-dim", "8", "--model.attention-dim", "8", "--model.maxout-dim", "8",
        "--data.min-freq", "1", "--train.batch-size", "8", "--no-progress"]

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_multi30k(tmp_path_factory.mktemp("data"), sizes=(("train", 480), ("val", 8), ("test_2016_flickr", 8)))


def step_losses(workdir: Path) -> list:
    return [(r["step"], r["loss"]) for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


RUN = ["--train.log-every", "1", "--train.max-steps", "100"]  # 60 steps an epoch


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted run of 100 steps (a validation at 60), trained in this process: its programs,
    in the session's compilation cache, are the ones the train.py processes of the runs compared with it load."""
    workdir = tmp_path_factory.mktemp("reference") / "full"
    with jax.numpy_dtype_promotion("standard"):  # (module scope: the autouse fixture is per test)
        assert train.main(["--workdir", str(workdir), "--data-dir", str(data), *TINY, *RUN,
                           "--train.checkpoint-every", "1000"]) == 0
    return workdir


def start(workdir: Path, data: Path, *extra: str, cache: Path | None = None) -> subprocess.Popen:
    """train.py on ``data`` with :data:`TINY` and ``extra``, sharing the session's compilation cache (or ``cache``)."""
    args = [sys.executable, str(ROOT / "train.py"), "--workdir", str(workdir), "--data-dir", str(data), *TINY, *extra]
    env = os.environ if cache is None else {**os.environ, "ZOO_COMPILATION_CACHE": str(cache)}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(run: subprocess.Popen, workdir: Path, step: int) -> None:
    """Until ``run`` has logged ``step`` (it is in the loop, past compilation)."""
    deadline = time.time() + 300
    while not (workdir / "metrics.jsonl").exists() or len(step_losses(workdir)) < step:
        assert run.poll() is None and time.time() < deadline, run.stderr.read()
        time.sleep(0.05)


@pytest.mark.slow
def test_sigint_sigterm_and_kill_9_in_the_loop_leave_a_run_that_continues_bit_for_bit(tmp_path, data, reference,
                                                                                      capsys):
    """One run stopped inside its loop three times, each time a few steps after resuming: SIGINT, then SIGTERM,
    each saving the current step and exiting 128 + signum within 30 s with `saved step N, stopping on SIG...`;
    then a second trainer on the workdir is refused naming the running process, which is killed with SIGKILL
    somewhere in the run (a step, a save, a validation); the rerun (the dead process's lock does not block)
    ends with the uninterrupted run's losses, bit for bit."""
    workdir, saved = tmp_path / "run", 0
    flags = [*RUN, "--train.checkpoint-every", "20"]  # the checkpoints do not change the losses
    for signum in (signal.SIGINT, signal.SIGTERM):
        run = start(workdir, data, *flags)
        wait_for_step(run, workdir, saved + 3)
        run.send_signal(signum)
        sent = time.time()
        code = run.wait(timeout=60)
        out = run.stdout.read()
        assert code == 128 + signum, run.stderr.read()
        assert time.time() - sent < 30
        step = int(re.search(rf"saved step (\d+), stopping on {signal.Signals(signum).name}\n", out).group(1))
        assert saved + 3 <= step < 100 and (workdir / "checkpoints" / str(step)).is_dir()
        assert [s for s, _ in step_losses(workdir)] == list(range(1, step + 1))
        assert step_losses(workdir) == step_losses(reference)[:step]
        saved = step
    run = start(workdir, data, *flags)
    wait_for_step(run, workdir, saved + 3)
    assert train.main(["--workdir", str(workdir), "--data-dir", str(data), *TINY, *flags]) == 2
    assert f"process {run.pid} is training in this workdir" in capsys.readouterr().err
    time.sleep(random.Random(0).uniform(0.0, 0.5))  # somewhere in the run (~90 steps left): a step, a save, a validation
    assert run.poll() is None  # the kill lands in the run
    run.kill()
    run.wait(timeout=60)
    rerun = start(workdir, data, *flags)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    assert step_losses(workdir) == step_losses(reference)  # bit for bit


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
    (["--train.seed", "99999999999999999999999"], "TrainConfig.seed=99999999999999999999999: must be below 2**32"),
    (["--train.batch-size", "1000000000"], "--train.batch-size 1000000000: a batch's logits alone take"),
])
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, data, capsys, flags, message):
    workdir = tmp_path / "w"
    assert train.main(["--workdir", str(workdir), "--data-dir", str(data), *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not workdir.exists()


def metrics_history(steps: int) -> list[str]:
    """The lines of a log of ``steps`` steps with a validation at every 3rd."""
    lines = [json.dumps({"event": "start", "step": 0})]
    for step in range(1, steps + 1):
        lines.append(json.dumps({"step": step, "epoch": 0, "loss": 1.0 / step}))
        if step % 3 == 0:
            lines.append(json.dumps({"event": "validation", "step": step, "val_loss": 2.0 / step}))
    return lines


def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


class HalfWritten:
    """A file whose write puts half of the text on disk and then dies."""

    def __init__(self, path, mode, **kwargs):
        self.file = open(path, mode, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        die()


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the child only writes a file, then dies
@pytest.mark.parametrize("moment", ["writing the temporary file", "before the rename", "after the rename"])
def test_a_kill_during_the_metrics_repair_leaves_the_whole_history(tmp_path, moment, monkeypatch):
    """Resuming from step 6 drops the records of steps 7-9 and a last line cut short; a real
    SIGKILL (of a forked child) at three moments of that repair leaves either the old file or the
    repaired one, and the next resume finishes the repair. Without a repair, the file is appended to."""
    from zoo import io

    path = tmp_path / "metrics.jsonl"
    full = metrics_history(9)
    path.write_text("".join(line + "\n" for line in full) + '{"step": 10, "lo')
    before = path.read_bytes()
    kept = full[: full.index(json.dumps({"event": "validation", "step": 6, "val_loss": 2.0 / 6})) + 1]
    pid = os.fork()
    if pid == 0:  # the child: repair, and die at the moment
        try:
            if moment == "writing the temporary file":
                monkeypatch.setattr(io, "open", HalfWritten, raising=False)
            elif moment == "before the rename":
                monkeypatch.setattr(io.os, "replace", die)
            else:
                real = os.replace
                monkeypatch.setattr(io.os, "replace", lambda a, b: (real(a, b), die()))
            MetricsLog(path, 6, None, 1.0)
        finally:
            os._exit(3)  # not reached: the child dies by SIGKILL
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    after = path.read_bytes()
    assert after == before if moment != "after the rename" else after.decode().splitlines() == kept
    log = MetricsLog(path, 6, None, 1.0)  # the rerun's repair
    assert log.dropped == (None if moment == "after the rename" else (7, 9))
    log.write(step=7, loss=0.5)
    log.close()
    assert path.read_text().splitlines() == kept + [json.dumps({"step": 7, "loss": 0.5})]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


@pytest.mark.parametrize("content, message", [
    (b'{"step": 1}\n\xff\xfe binary\n{"step": 2}\n', "line 2: not JSON text"),
    (b'{"step": 1}\n[1, 2]\n{"step": 2}\n', "line 2: not a metrics record"),
    (b'{"step": "one"}\n{"step": 2}\n', "line 1: not a metrics record"),
    (None, "a folder, not the metrics log"),
])
def test_a_damaged_metrics_log_is_one_line_naming_it_and_left_as_it_is(tmp_path, content, message):
    path = tmp_path / "metrics.jsonl"
    path.mkdir() if content is None else path.write_bytes(content)
    with pytest.raises(ZooError, match=f"^{path}.*{message}"):
        MetricsLog(path, 1, None, 1.0)
    assert path.is_dir() if content is None else path.read_bytes() == content



def with_long_pairs(data: Path, root: Path, long: dict[str, int], keep: bool = True) -> Path:
    """A copy of the data dir ``data`` whose split ``s`` ends in (``keep``) or is only (not ``keep``)
    ``long[s]`` long pairs, two sentences each: 14 tokens or more with <eos>, where the tiny corpus has 8."""
    shutil.copytree(data, root, dirs_exist_ok=True)
    for split, n in long.items():
        pairs = sentence_pairs(2 * n, seed=7)
        for lang, column in (("de", 0), ("en", 1)):
            path = root / "multi30k" / f"{split}.{lang}.gz"
            text = gzip.decompress(path.read_bytes()).decode() if keep else ""
            text += "".join(f"{pairs[2 * i][column]} {pairs[2 * i + 1][column]}\n" for i in range(n))
            path.write_bytes(gzip.compress(text.encode()))
    return root


def test_a_split_that_max_length_empties_is_one_line_before_anything_is_written(tmp_path, data, capsys):
    """Every pair of the tiny corpus has 8 tokens with <eos> (its English side): --data.max-length 7
    empties the training split, and with only long pairs in the validation split, 12 empties
    that one; a mean NLL over no pairs is refused too (it read as 0, which best/ kept for ever)."""
    workdir = tmp_path / "w"
    assert train.main(["--workdir", str(workdir), "--data-dir", str(data), *TINY, "--data.max-length", "7"]) == 2
    assert capsys.readouterr().err.strip() == ("train.py: error: multi30k split 'train': nothing to train on: "
                                               "--data.max-length 7 leaves out all 480 pairs (the shortest has 8 "
                                               "tokens with <eos>)")
    long_val = with_long_pairs(data, tmp_path / "long_val", {"val": 4}, keep=False)
    assert train.main(["--workdir", str(workdir), "--data-dir", str(long_val), *TINY, "--data.max-length", "12"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"train.py: error: multi30k split 'val': nothing to validate on: --data.max-length 12 leaves "
                        r"out all 4 pairs \(the shortest has 14 tokens with <eos>\)", err), err
    assert not workdir.exists()
    with pytest.raises(ValueError, match="no pairs to evaluate"):
        dataset_nll(None, None, [], [], 8, 8)



@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, list[str]]:
    """A run of 8 steps trained in this process on 48 of 50 pairs (2 longer than --data.max-length
    12, and 1 of 9 validation pairs; 6 steps an epoch, checkpoints at 3, 6 and 8, a validation at
    6), and its arguments."""
    root = tmp_path_factory.mktemp("small")
    data = with_long_pairs(write_tiny_multi30k(root / "tiny"), root / "data", {"train": 2, "val": 1})
    args = ["--workdir", str(root / "w"), "--data-dir", str(data), *TINY, "--train.log-every", "1", "--data.max-length", "12",
            "--train.checkpoint-every", "3", "--train.max-steps", "8"]
    with jax.numpy_dtype_promotion("standard"):  # (module scope: the autouse fixture is per test)
        assert train.main(args) == 0
    return root / "w", args


def test_the_pairs_over_max_length_of_both_splits_are_counted_in_the_log(small):
    (start,) = [r for r in map(json.loads, (small[0] / "metrics.jsonl").read_text().splitlines()) if r.get("event") == "start"]
    assert (start["skipped_long_pairs"], start["skipped_long_val_pairs"]) == (2, 1)


def copy_of(small, tmp_path) -> tuple[Path, list[str]]:
    """A copy of the small run's workdir, and the arguments that resume it."""
    workdir, args = small
    copy = shutil.copytree(workdir, tmp_path / "w")
    return copy, [str(copy) if arg == str(workdir) else arg for arg in args]


def test_a_vocabulary_with_two_tokens_swapped_is_refused_by_resume_load_and_evaluate(tmp_path, small, capsys):
    """Same size, same tokens, two ids swapped: every embedding would load under the wrong token.
    The steps' manifests record the vocabularies' SHA-256 (best/ and checkpoints/ alike)."""
    workdir, args = copy_of(small, tmp_path)
    path = workdir / "tgt_vocab.json"
    tokens = json.loads(path.read_text())
    tokens[4], tokens[5] = tokens[5], tokens[4]
    path.write_text(json.dumps(tokens, ensure_ascii=False))
    capsys.readouterr()
    message = (f"{path}: not the file that {{}} was trained with (its SHA-256 differs from the step's zoo_manifest.json); "
               "it was replaced or edited: put back the workdir's own")
    assert train.main(args) == 2
    assert capsys.readouterr().err.strip() == f"train.py: error: {message.format('checkpoints/8')}"
    assert evaluate.main(["--workdir", str(workdir), "--data-dir", args[args.index("--data-dir") + 1]]) == 2
    assert capsys.readouterr().err.strip() == f"evaluate.py: error: {message.format('best/6')}"
    with pytest.raises(ZooError, match=re.escape(message.format("checkpoints/8"))):
        zoo.load(workdir, step=8)


def test_resuming_on_other_training_data_is_refused_unless_accepted(tmp_path, small, capsys):
    """One pair more in the training files: their sizes and SHA-256 differ from the workdir's
    data_fingerprint.json, and the resume is one line naming the files and the flag, with nothing
    written; --accept-new-data resumes and records the new files."""
    workdir, args = copy_of(small, tmp_path)
    data = Path(args[args.index("--data-dir") + 1])
    grown = with_long_pairs(data, tmp_path / "grown", {"train": 1})
    args[args.index("--data-dir") + 1] = str(grown)
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    capsys.readouterr()
    assert train.main(args) == 2
    files = f"{grown}/multi30k/train.de.gz, {grown}/multi30k/train.en.gz"
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(f"train.py: error: {re.escape(files)}: not the training data this workdir was trained on "
                        r"\(\d+ bytes, SHA-256 [0-9a-f]{12}; now \d+ bytes, [0-9a-f]{12}\); --accept-new-data resumes on "
                        r"them on purpose, with the workdir's vocabularies", err), err
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before
    assert train.main([*args, "--accept-new-data"]) == 0  # at step 8 of 8 already: nothing to train
    recorded = json.loads((workdir / "data_fingerprint.json").read_text())["files"]
    assert [f["path"] for f in recorded] == files.split(", ")
    assert train.main(args) == 0  # the new data are the workdir's now


class FullDisk:
    """A file on a disk that fills at the ``room``-th write: half of that line reaches it, then ENOSPC."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, text: str) -> None:
        self.room -= 1
        if self.room == 0:
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def test_a_full_disk_while_writing_metrics_or_the_config_is_one_line_and_saves_the_step(tmp_path, small, capsys,
                                                                                       monkeypatch):
    """The disk fills at the third record of a resumed run (step 10's, after step 9's and its
    interval's): one line, step 10 saved, exit 2; the rerun drops the half line and goes on."""
    workdir, args = copy_of(small, tmp_path)
    open_log = MetricsLog.__init__

    def on_a_full_disk(self, *a, **kw):
        open_log(self, *a, **kw)
        self.file = FullDisk(self.file, room=3)

    monkeypatch.setattr(MetricsLog, "__init__", on_a_full_disk)
    args[args.index("--train.max-steps") + 1] = "11"
    capsys.readouterr()
    assert train.main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"train.py: error: {workdir}/metrics.jsonl: cannot write (No space left on device) from step 10 on; saved step "
        f"10, whose log lacks those records: free some space and rerun to resume")
    assert (workdir / "checkpoints" / "10").is_dir()
    monkeypatch.undo()
    assert train.main(args) == 0
    assert [s for s, _ in step_losses(workdir)] == [*range(1, 10), 11]  # step 10's half line dropped
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json.tmp").symlink_to("/dev/full")  # the config's temporary file on a full disk
    fresh_args = [str(fresh) if arg == str(workdir) else arg for arg in args]
    assert train.main(fresh_args) == 2
    assert capsys.readouterr().err.strip() == f"train.py: error: {fresh}/config.json: cannot write (No space left on device)"
    assert sorted(p.name for p in fresh.iterdir()) == [".lock"]


@pytest.mark.slow
def test_a_signal_before_the_loop_exits_at_once_with_no_traceback(tmp_path, data):
    """SIGINT during the imports (1 s) and SIGTERM while the run starts (3 s: imports, data,
    model, compilation): 130 and 143, no traceback, at most one line, and a workdir with only
    whole files (no temporary file), as a rerun expects."""
    runs = {signal.SIGINT: 1.0, signal.SIGTERM: 3.0}
    started = {s: start(tmp_path / s.name, data, "--train.max-steps", "150", cache=tmp_path / "cache") for s in runs}
    begin = time.time()
    for signum, at in sorted(runs.items(), key=lambda item: item[1]):
        time.sleep(max(0.0, begin + at - time.time()))
        started[signum].send_signal(signum)
    for signum, run in started.items():
        assert run.wait(timeout=120) == 128 + signum
        err = run.stderr.read()
        assert "Traceback" not in err and "Exception ignored" not in err and len(err.strip().splitlines()) <= 1, err
        workdir = tmp_path / signum.name
        assert not list(workdir.rglob("*.tmp")) and not list(workdir.rglob(f"*{'orbax-checkpoint-tmp'}*"))
        for name in ("config.json", "src_vocab.json", "tgt_vocab.json", "data_fingerprint.json"):
            assert not (workdir / name).exists() or json.loads((workdir / name).read_text())



def test_hostile_config_files_and_metrics_are_one_line(tmp_path, small, capsys):
    """A YAML --config bomb (aliases of aliases), a --config over 1 MiB; a workdir's config.json
    with model_name a list, a bool for an int, a string for a bool, and a metrics.jsonl line that
    is not a record: each one line and exit 2 from train.py, evaluate.py and zoo.load alike."""
    workdir, args = copy_of(small, tmp_path)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")) + "train: {seed: *i}\n")
    big = tmp_path / "big.json"
    big.write_text(" " * (1 << 20) + "{}")
    for config, message in ((bomb, "aliases (*a) are not allowed in a config file"), (big, "larger than 1048576 bytes")):
        assert train.main(["--config", str(config), "--workdir", str(tmp_path / "new")]) == 2
        assert re.fullmatch(f"train.py: error: --config {config}: .*{re.escape(message)}.*", capsys.readouterr().err.strip())
    assert not (tmp_path / "new").exists()
    saved = (workdir / "config.json").read_text()
    data_dir = args[args.index("--data-dir") + 1]
    for old, new, message in (('"model_name": "bahdanau"', '"model_name": ["bahdanau"]', "model_name ['bahdanau'] is not one of"),
                              ('"batch_size": 8', '"batch_size": true', "TrainConfig.batch_size=True: must be an int"),
                              ('"lowercase": true', '"lowercase": "no"', "DataConfig.lowercase='no': must be a bool")):
        (workdir / "config.json").write_text(saved.replace(old, new))
        expected = f"{workdir}/config.json: {message}"
        assert train.main(args) == 2  # resuming
        assert capsys.readouterr().err.strip().startswith(f"train.py: error: {expected}")
        assert evaluate.main(["--workdir", str(workdir), "--data-dir", data_dir]) == 2
        assert capsys.readouterr().err.strip().startswith(f"evaluate.py: error: {expected}")
        with pytest.raises(ZooError, match=f"^{re.escape(expected)}"):
            zoo.load(workdir)
    (workdir / "config.json").write_text(saved)
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write("[1, 2]\n{}\n")
    assert train.main(args) == 2
    assert capsys.readouterr().err.strip() == (f"train.py: error: {workdir}/metrics.jsonl, line "
                                               f"{len((workdir / 'metrics.jsonl').read_text().splitlines()) - 1}: not a "
                                               "metrics record (a JSON object with an integer step); fix or remove that line")


def test_deleting_every_checkpoint_restarts_with_one_line_naming_the_dropped_records(tmp_path, small, capsys):
    workdir, args = copy_of(small, tmp_path)
    shutil.rmtree(workdir / "checkpoints")
    args[args.index("--train.max-steps") + 1] = "1"
    capsys.readouterr()
    assert train.main(args) == 0
    assert (f"{workdir}/metrics.jsonl: dropped the records of steps 1-8, past step 0 that this run resumes from (no "
            "checkpoint left)") in capsys.readouterr().out.splitlines()
    assert [s for s, _ in step_losses(workdir)] == [1]
