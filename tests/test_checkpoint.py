"""Checkpoints that survive NaNs, damaged files, interrupted saves and a second trainer; zoo.load's
checks of the workdir's files; translate's refusals. Direct calls on tiny states and models."""

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import zoo
from zoo import checkpoint
from zoo.checkpoint import CheckpointStore, WorkdirLock, read_config, write_or_check_config
from zoo.config import Config
from zoo.errors import ZooError

pytestmark = pytest.mark.usefixtures("standard_dtype_promotion")


def state_of(value: float, step: int) -> dict:
    """A training-state-like pytree whose parameters are all ``value``."""
    return {"params": {"w": np.full((16, 8), value, np.float32), "b": np.full((8,), value, np.float32)},
            "opt_state": {"mu": np.full((16, 8), -value, np.float32)}, "step": np.int32(step)}


def saved(workdir, *val_losses) -> CheckpointStore:
    """A store with steps 1, 2, ... saved with parameters 1.0, 2.0, ... and these validation losses."""
    store = CheckpointStore(workdir)
    for step, val_loss in enumerate(val_losses, start=1):
        store.save(step, state_of(float(step), step), {"step": step}, val_loss=val_loss)
    store.wait()
    return store


def restored_value(workdir, **kwargs) -> float:
    state, meta = CheckpointStore(workdir, read_only=True).restore(state_of(0.0, 0), **kwargs)
    assert meta["step"] == int(state["step"])
    return float(state["params"]["w"][0, 0])


def zoo_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "zoo"]


def test_best_is_replaced_only_by_a_finite_strictly_lower_val_loss(tmp_path):
    store = CheckpointStore(tmp_path)
    expected_best = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 6}  # val losses 5, NaN, 6, 5, inf, 4 (step 6)
    for step, val_loss in enumerate([5.0, float("nan"), 6.0, 5.0, float("inf"), 4.0], start=1):
        is_best = store.save(step, state_of(float(step), step), {"step": step}, val_loss=val_loss)
        assert is_best == (expected_best[step] == step)
        assert store.best.steps() == [expected_best[step]]  # committed before save returns
        if step == 5:  # a second store (a rerun) reads the best's loss from its manifest
            assert CheckpointStore(tmp_path, read_only=True).best_val_loss == 5.0
            assert restored_value(tmp_path, best=True) == 1.0
    store.close()
    assert store.best_val_loss == 4.0
    assert restored_value(tmp_path, best=True) == 6.0
    assert store.latest.steps() == [6, 5]


def test_best_commits_before_latest_so_a_rerun_agrees_with_best(tmp_path, monkeypatch):
    store = saved(tmp_path, 5.0)

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(store.latest, "save", killed)  # the process dies between the two commits
    with pytest.raises(KeyboardInterrupt):
        store.save(2, state_of(2.0, 2), {"step": 2}, val_loss=4.0)
    store.close()
    assert store.best.steps() == [2] and store.latest.steps() == [1]
    rerun = CheckpointStore(tmp_path)  # resumes from checkpoints/1, reports best/'s loss ...
    assert rerun.best_val_loss == 4.0
    assert not rerun.save(2, state_of(2.0, 2), {"step": 2}, val_loss=4.0)  # ... and reaches step 2 again
    rerun.close()
    assert rerun.best.steps() == [2] and rerun.latest.steps() == [2, 1]
    assert restored_value(tmp_path, best=True) == 2.0


def test_a_state_with_non_finite_values_is_refused_and_not_written(tmp_path):
    store = saved(tmp_path, None)
    bad = state_of(3.0, 3)
    bad["opt_state"]["mu"][2, 1] = np.nan
    with pytest.raises(ZooError, match=r"^step 3: opt_state/mu has non-finite values"):
        store.save(3, bad, {"step": 3}, val_loss=1.0)
    store.close()
    assert store.latest.steps() == [1] and store.best.steps() == []


def flip_bytes(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def largest_data_file(step_dir):
    data_files = (p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in p.as_posix())
    return max(data_files, key=lambda p: p.stat().st_size)


DAMAGE = {  # name: (the file, what happens to it)
    "flipped bytes": (largest_data_file, flip_bytes), "truncated file": (largest_data_file, truncate),
    "deleted _METADATA": (lambda step_dir: step_dir / "state" / "_METADATA", os.remove),
    "deleted manifest.ocdbt": (lambda step_dir: step_dir / "state" / "manifest.ocdbt", os.remove),
    "deleted meta": (lambda step_dir: step_dir / "meta" / "metadata", os.remove),
    "truncated checksums": (lambda step_dir: step_dir / checkpoint.MANIFEST, truncate),
    "deleted checksums": (lambda step_dir: step_dir / checkpoint.MANIFEST, os.remove),  # not trusted unverified
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_latest_step_falls_back_to_the_older_intact_one_in_one_line(tmp_path, damage, caplog):
    saved(tmp_path, None, None).close()
    step_dir = tmp_path / "checkpoints" / "2"
    file, action = DAMAGE[damage]
    path = file(step_dir)
    action(path)
    assert restored_value(tmp_path) == 1.0
    (line,) = zoo_lines(caplog)
    name = path.relative_to(step_dir).as_posix()
    assert line.startswith(f"damaged checkpoint: checkpoints/2/{name}: ") and line.endswith("; using checkpoints/1")
    with pytest.raises(ZooError, match=f"no intact checkpoint .*checkpoints/2/{name}"):  # an explicit step: no fallback
        restored_value(tmp_path, step=2)


def test_no_intact_step_is_one_error_naming_each(tmp_path, caplog):
    saved(tmp_path, None, None).close()
    flip_bytes(largest_data_file(tmp_path / "checkpoints" / "2"))
    os.remove(tmp_path / "checkpoints" / "1" / "state" / "_METADATA")
    expected = r"no intact checkpoint \(checkpoints/2/\S+: checksum mismatch .*; checkpoints/1/state/_METADATA: missing\)$"
    with pytest.raises(ZooError, match=expected):
        restored_value(tmp_path)
    assert zoo_lines(caplog) == []


def test_damaged_best_falls_back_to_the_latest_and_is_replaced_by_the_next_validation(tmp_path, caplog):
    saved(tmp_path, 2.0, None).close()
    flip_bytes(largest_data_file(tmp_path / "best" / "1"))
    assert restored_value(tmp_path, best=True) == 2.0
    assert zoo_lines(caplog)[-1].endswith("checksum mismatch (changed since written); using checkpoints/2")
    store = CheckpointStore(tmp_path)
    assert store.best_val_loss == float("inf")  # a damaged best does not count ...
    assert store.save(3, state_of(3.0, 3), {"step": 3}, val_loss=7.0)  # ... so a worse loss replaces it
    store.close()
    assert store.best.steps() == [3]


def test_interrupted_save_folders_are_ignored_then_removed(tmp_path, caplog):
    saved(tmp_path, 1.0).close()
    for folder in ("checkpoints", "best"):
        leftover = tmp_path / folder / f"2{checkpoint.TMP_SUFFIX}"
        (leftover / "state").mkdir(parents=True)
        (leftover / "state" / "_METADATA").write_text("{")
    assert restored_value(tmp_path) == 1.0 and restored_value(tmp_path, best=True) == 1.0
    assert CheckpointStore(tmp_path, read_only=True).latest_step() == 1
    saved(tmp_path).close()  # a writable store (a resuming trainer) removes them
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["1"]
    assert zoo_lines(caplog) == []


def test_a_failed_save_is_one_error_and_keeps_the_committed_steps(tmp_path, monkeypatch):
    store = saved(tmp_path, None)

    def full_disk(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "_sha256", full_disk)  # fails inside Orbax's background save
    store.save(2, state_of(2.0, 2), {"step": 2})
    expected = r"checkpoints/2: saving failed \(.*No space left on device.*\); the steps committed before are kept$"
    with pytest.raises(ZooError, match=expected):
        store.close()
    monkeypatch.undo()
    assert restored_value(tmp_path) == 1.0


def test_unwritable_workdir_is_one_error_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ZooError, match=f"^{blocker}/run/checkpoints: cannot create the folder"):
        CheckpointStore(blocker / "run")
    with pytest.raises(ZooError, match=f"^{blocker}/run: cannot create the folder"):
        write_or_check_config(blocker / "run", Config())
    with pytest.raises(ZooError, match=f"^{blocker}/run: cannot create the folder"):
        WorkdirLock(blocker / "run").__enter__()


def test_workdir_lock_refuses_a_live_holder_and_ignores_a_dead_ones_file(tmp_path):
    lock_file = tmp_path / WorkdirLock.FILE
    holder = subprocess.Popen(  # another process that holds the lock as WorkdirLock does
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d' % os.getpid()); print(flush=True); time.sleep(60)", str(lock_file)],
        stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        with pytest.raises(ZooError, match=f"^{tmp_path}: process {holder.pid} is training in this workdir"):
            WorkdirLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    assert lock_file.read_text() == str(holder.pid)  # the dead holder's file stays and does not block
    with WorkdirLock(tmp_path):
        assert lock_file.read_text() == f"{os.getpid()}\n"
        with pytest.raises(ZooError, match=f"process {os.getpid()} is training"):
            WorkdirLock(tmp_path).__enter__()
    with WorkdirLock(tmp_path):  # released on exit
        pass


# ----- zoo.load: a tiny model saved as training saves it -----


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
    """``(workdir, params)``: a tiny Bahdanau model's workdir at step 7 (the repository's conftest.py)."""
    return tiny_workdir


def test_load_restores_only_parameters_into_an_abstract_model(workdir, monkeypatch):
    workdir, params = workdir
    targets = []
    restore = CheckpointStore.restore
    monkeypatch.setattr(CheckpointStore, "restore",
                        lambda self, target, **kw: targets.append(target) or restore(self, target, **kw))
    monkeypatch.setitem(sys.modules, "zoo.training", None)  # importing it now raises ...
    monkeypatch.delitem(sys.modules, "zoo.translator", raising=False)  # ... also where zoo.load imports zoo.translator afresh
    loaded = zoo.load(workdir)
    (target,) = targets
    assert set(target) == {"params", "step"}
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(target))  # built by nnx.eval_shape
    assert loaded.step == 7
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_config_written_before_a_field_existed_loads_with_its_default(workdir, tmp_path):
    workdir, _ = workdir
    (tmp_path / "config.json").write_text((workdir / "config.json").read_text().replace('"log_every": 50,', ""))
    assert '"log_every"' not in (tmp_path / "config.json").read_text()
    assert read_config(tmp_path).train.log_every == 50


@pytest.mark.parametrize("edit, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: text.replace('"hidden_dim"', '"hiden_dim"'), "model.hiden_dim is not a known field"),
    (lambda text: text.replace('"model_name": "bahdanau"', '"model_name": "rnn"'), "model_name 'rnn' is not one of"),
])
def test_damaged_config_is_one_error_naming_the_file(workdir, tmp_path, edit, message):
    workdir, _ = workdir
    path = tmp_path / "config.json"
    path.write_text(edit((workdir / "config.json").read_text()))
    with pytest.raises(ZooError, match=f"^{path}: {message}"):
        read_config(tmp_path)


@pytest.mark.parametrize("edit, message", [
    (lambda tokens: json.dumps(tokens)[:-9], "not valid JSON"),
    (lambda tokens: json.dumps(tokens[:5] + tokens[6:]), "9 tokens, but the model was built for src_vocab_size=10"),
    (lambda tokens: json.dumps(tokens[:5] + tokens[4:-1]), "token 'ein' appears twice"),
])
def test_damaged_vocabulary_is_one_error_naming_the_file(workdir, tmp_path, edit, message):
    workdir, _ = workdir
    copy = shutil.copytree(workdir, tmp_path / "w")
    path = copy / "src_vocab.json"
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(ZooError, match=f"^{path}: {message}"):
        zoo.load(copy)


def test_translate_refuses_bad_arguments_and_truncates_long_sentences(workdir, caplog):
    translator = zoo.load(workdir[0])
    for sentences, message in (("Ein Mann.", "not str; wrap one sentence"), (["Ein Mann.", 123], r"sentences\[1\] is a int")):
        with pytest.raises(ValueError, match=message):
            translator.translate(sentences)
    for beam_size in (0, -1, 1.5):
        with pytest.raises(ValueError, match="beam_size=.*: must be an integer of at least 1"):
            translator.translate(["Ein Mann."], beam_size=beam_size)
    assert translator.translate([]) == ([], [])
    assert translator.max_source_length == 255  # a recurrent model: no max_length of its own
    (long,) = translator.translate_tokens(["ein mann läuft " * 300])
    assert long.source_tokens == ["ein", "mann", "läuft"] * 85 + ["<eos>"]
    expected = "1 source sentence(s) longer than 255 tokens truncated to 255 (the first: sentence 0, 900 tokens)"
    assert zoo_lines(caplog) == [expected]
    assert len(long.tokens) <= 2 * 256 + 8
