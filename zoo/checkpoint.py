"""Workdirs and Orbax checkpoints. All Orbax use in the zoo lives here.

A workdir holds::

  ``config.json``                      the :class:`zoo.config.Config` (model, data, training)
  ``src_vocab.json``, ``tgt_vocab.json`` the vocabularies (word level), or
  ``spm.model``                        the joint SentencePiece model (subwords; :mod:`zoo.data.subword`)
  ``data_fingerprint.json``            sizes and SHA-256 of the training data's files (:mod:`zoo.run`)
  ``checkpoints/<step>/``              the latest resumable states (parameters, optimizer state,
                                       step, PRNG key, data position), Orbax, the last 2 kept
  ``best/<step>/``                     the state with the lowest finite validation loss
  ``metrics.jsonl``                    one JSON object per logged event
  ``.lock``                            the PID of the last trainer (:class:`WorkdirLock`)

Integrity. Every step folder holds ``zoo_manifest.json``: the size and SHA-256 of every file Orbax
wrote for the step's items, the step's validation loss, and the SHA-256 of the vocabularies (see
Inputs below). It is written into Orbax's temporary folder after the items are finalized and before
the folder is renamed into place (Orbax's ``post_finalization_callback``), so it commits atomically
with the step. Restoring verifies it first (Orbax itself checks no checksums: zeroed bytes restore
silently); a step with a changed, truncated or deleted file is damaged, and
:meth:`CheckpointStore.restore` says so in one line (the ``zoo`` logger) and falls back to the next
older intact step. A step without a manifest is damaged too (every step is written with one); any
error reading a step also counts as damage. Temporary folders of interrupted saves
(``*.orbax-checkpoint-tmp*``) are never read, and a writable store deletes them.

Inputs. The manifest also records the SHA-256 of the workdir files the parameters depend on
(``depends_on``: the vocabularies or SentencePiece model, whose token ids index the embeddings). Restoring
compares them with the files there now: a vocabulary replaced by another of the same size (two
tokens swapped) is refused in one line instead of loading every embedding under the wrong token.

Best. A state enters ``best/`` only with a finite validation loss strictly lower than the one
recorded in the manifest of the newest intact best step (:attr:`CheckpointStore.best_val_loss`);
Orbax deletes the previous best only after the new one has committed.

Order of the two commits. A save with a new best commits ``best/<step>`` first and waits for it,
then saves ``checkpoints/<step>``. A kill between the two leaves ``best/`` one validation ahead
of ``checkpoints/``: the rerun resumes from the older step, reaches the same step with the same
validation loss (training is deterministic), which is not strictly lower and is not saved
again, so ``best/`` holds exactly the step and loss that the rerun reports. The other order
could leave a resumable step whose meta claims a best that ``best/`` never received.
"""

import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from zoo.config import Config, DataConfig, TrainConfig
from zoo.errors import ZooError
from zoo.io import read_json, write_text
from zoo.models import MODELS

CONFIG_FILE = "config.json"
RESUMABLE_FIELDS = {"epochs", "max_steps", "checkpoint_every", "fsdp"}  # may change when resuming a workdir
MANIFEST = "zoo_manifest.json"
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's folder of a save that has not committed (yet)
log = logging.getLogger("zoo")


class _NoOrbaxTracebacks(logging.Filter):
    """Drops the tracebacks that Orbax logs (through absl) for a failed save: the store reports the
    failure itself, as one ZooError line (see :meth:`_StepFolder.wait`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname)


logging.getLogger("absl").addFilter(_NoOrbaxTracebacks())


def _check_keys(source, section: str, raw, expected: set) -> None:
    """Raise naming the first unknown key of one section of a config. A missing key takes its
    default: workdirs written before a field existed still load."""
    if not isinstance(raw, dict):
        raise ZooError(f"{source}: {section or 'the config'} must be a mapping, not {type(raw).__name__}")
    unknown = set(raw) - expected
    if unknown:
        raise ZooError(f"{source}: {section}{sorted(unknown)[0]} is not a known field; truncated or hand-edited?")


def config_from_dict(raw, source) -> Config:
    """The :class:`~zoo.config.Config` of a mapping laid out as a workdir's ``config.json``
    (``model_name``, and ``model``, ``data``, ``train`` whose missing fields take their defaults): the one
    reader of stored configs, for ``config.json`` and for ``train.py --config FILE``.

    Args:
      raw: the parsed JSON or YAML. source: the file it came from, named in errors.

    Raises:
      ZooError: not a mapping, an unknown key or field, no or an unknown model, or a value the config
        refuses; naming ``source`` (and the field).

    Examples:
      >>> config_from_dict({"model_name": "luong", "model": {"hidden_dim": 64}}, "c.json").model.hidden_dim
      64
    """
    _check_keys(source, "", raw, {"model_name", "model", "data", "train"})
    if "model_name" not in raw:
        raise ZooError(f"{source}: no model_name (one of {', '.join(sorted(MODELS))})")
    name = raw["model_name"]
    if not isinstance(name, str) or name not in MODELS:
        raise ZooError(f"{source}: model_name {name!r} is not one of {', '.join(sorted(MODELS))}")
    sections = {"model": MODELS[name].config, "data": DataConfig, "train": TrainConfig}
    for section, cls in sections.items():
        _check_keys(source, f"{section}.", raw.get(section, {}), {f.name for f in dataclasses.fields(cls)})
    try:
        return Config(model_name=name, **{section: cls(**raw.get(section, {})) for section, cls in sections.items()})
    except (TypeError, ValueError) as e:
        raise ZooError(f"{source}: {e}") from None


def read_config(workdir) -> Config:
    """The workdir's ``config.json`` (:func:`config_from_dict`).

    Raises:
      ZooError: no such file, not JSON, an unknown field, an unknown model or a value
        the config refuses; naming the file (and the field).
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise ZooError(f"{path}: no such file; is {workdir} a zoo workdir?")
    return config_from_dict(read_json(path), path)


def config_difference(saved: Config, wanted: Config, ignore=()) -> tuple[str, object, object] | None:
    """The first field in which two configs differ, as ``(name, saved value, wanted value)`` with
    ``name`` like ``"model_name"`` or ``"train.epochs"``; None if they agree. The fields a resumed
    run may change (:data:`RESUMABLE_FIELDS`) and the names in ``ignore`` are not compared."""
    if saved.model_name != wanted.model_name:
        return "model_name", saved.model_name, wanted.model_name
    for section in ("model", "data", "train"):
        old, new = getattr(saved, section), getattr(wanted, section)
        for f in dataclasses.fields(old):
            name = f"{section}.{f.name}"
            a, b = getattr(old, f.name), getattr(new, f.name)
            if a != b and name not in ignore and not (section == "train" and f.name in RESUMABLE_FIELDS):
                return name, a, b
    return None


def write_or_check_config(workdir, config: Config) -> None:
    """Write ``config.json`` into a new workdir; in an existing one, refuse a different config.

    Raises:
      ZooError: the workdir was made with other settings (naming the first differing field);
        only the training length and checkpoint interval may change on resume. Or the workdir
        cannot be written (read-only, full, a file in the way), naming the path.
    """
    path = Path(workdir) / CONFIG_FILE
    if path.exists():
        difference = config_difference(read_config(workdir), config)
        if difference:
            name, a, b = difference
            raise ZooError(f"{path}: workdir has {name}={a!r}, not {b!r}; use a new --workdir")
    else:
        _make_folder(path.parent)
    write_text(path, config.to_json())


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ZooError(f"{path}: cannot create the folder ({e.strerror or e})") from None


class WorkdirLock:
    """Exclusive use of a workdir by one trainer: ``with WorkdirLock(workdir): train...``.

    An advisory ``flock`` on ``<workdir>/.lock``, which holds the owner's PID. The kernel
    releases the lock when its process dies (even by ``kill -9``), so a lock file left behind
    never blocks; the file itself stays. Readers (``zoo.load``, ``evaluate.py``) never take it.
    Entering creates the workdir if needed.

    Raises (on entering):
      ZooError: a live process holds the lock (naming its PID), or the workdir cannot be written.
    """

    FILE = ".lock"

    def __init__(self, workdir):
        self.path = Path(workdir) / self.FILE
        self._fd = None

    def __enter__(self) -> "WorkdirLock":
        _make_folder(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ZooError(f"{self.path}: cannot create the workdir lock ({e.strerror or e})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ZooError(f"{self.path.parent}: process {holder} is training in this workdir; "
                           f"wait for it to end or use another --workdir") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise ZooError(f"{self.path}: cannot write the workdir lock ({e.strerror or e})") from None
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = None


def _check_shapes(expected, saved) -> None:
    """Raise naming the first parameter whose saved shape differs from the model's."""
    def flat(tree) -> dict:  # by path name: Orbax stores the integer keys of layer lists as strings
        return {jax.tree_util.keystr(p, simple=True, separator="/"): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    flat_saved = flat(saved)
    for name, leaf in flat(expected).items():
        if name not in flat_saved:
            raise ZooError(f"checkpoint has no parameter {name}; was it made by another model?")
        got, want = tuple(flat_saved[name].shape), tuple(np.shape(leaf))
        if got != want:
            raise ZooError(f"checkpoint parameter {name} has shape {got} but the model expects {want}")


@jax.jit
def _all_finite(state):
    """Per leaf: are all its values finite (True for integer leaves)? One global reduction, so it
    works on arrays sharded over several processes."""
    return jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.asarray(True), state)


def _barriers(name: str) -> ocp.options.MultiprocessingOptions:
    """Orbax's options for a manager's cross-process barriers, named apart: the two folders save the
    same step at an epoch's end, and same-named barriers of both would collide ("already ongoing")."""
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _check_finite(step: int, state) -> None:
    """Raise naming the first floating-point leaf of ``state`` with a NaN or an infinity."""
    for (path, _), finite in zip(jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(_all_finite(state))):
        if not bool(finite):
            raise ZooError(f"step {step}: {jax.tree_util.keystr(path, simple=True, separator='/')} "
                           f"has non-finite values (NaN or inf); not saved")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _item_files(step_dir: Path) -> list[Path]:
    """The files of the step's items (its sub-folders); Orbax rewrites the top-level files when committing."""
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.parent != step_dir)


class _Damaged(Exception):
    """A step folder that does not match its manifest or cannot be read; the message says why."""


class _StepFolder:
    """One folder of Orbax steps (``checkpoints/`` or ``best/``): listing, verifying, reading and,
    unless read-only, saving with a manifest."""

    ITEMS = dict(state=ocp.PyTreeCheckpointHandler, meta=ocp.JsonCheckpointHandler)

    def __init__(self, directory: Path, max_to_keep: int, read_only: bool, depends_on: dict[str, str]):
        self.directory, self.name, self.depends_on = directory, directory.name, depends_on
        self.manager, self.saving = None, None  # saving: (step, val_loss) of the save in flight
        if read_only:
            return
        _make_folder(directory)
        try:
            for tmp in directory.glob(f"*{TMP_SUFFIX}*") if jax.process_index() == 0 else ():  # interrupted saves;
                shutil.rmtree(tmp)  # the writer holds the workdir lock
        except OSError as e:
            raise ZooError(f"{directory}: cannot remove an interrupted save ({e.strerror or e})") from None
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=False, multiprocessing_options=_barriers(self.name),
                async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest)
            ),
            item_handlers={name: handler() for name, handler in self.ITEMS.items()},
        )

    def steps(self) -> list[int]:
        """The committed steps, newest first (temporary folders excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted((int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True)

    def _write_manifest(self) -> None:
        """Orbax's post-finalization callback: the items are complete in the temporary folder."""
        if jax.process_index() != 0:  # after Orbax's barrier every process's files are there; one writes the manifest
            return
        step, val_loss = self.saving
        folder = self.directory / f"{step}{TMP_SUFFIX}"
        files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _item_files(folder)}
        manifest = {"step": step, "val_loss": val_loss, "files": files, "depends_on": self.depends_on}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))

    def verify(self, step: int) -> dict:
        """The step's manifest after checking every file against it.

        Raises:
          _Damaged: the manifest is missing or unreadable, or a file is missing or has another size
            or checksum.
        """
        folder = self.directory / str(step)
        where = f"{self.name}/{step}"
        if not (folder / MANIFEST).is_file():
            raise _Damaged(f"{where}/{MANIFEST}: missing (every step is written with one)")
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
            files = [(name, int(entry["bytes"]), str(entry["sha256"])) for name, entry in manifest["files"].items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise _Damaged(f"{where}/{MANIFEST}: unreadable") from None
        for name, num_bytes, sha256 in files:
            path = folder / name
            if not path.is_file():
                raise _Damaged(f"{where}/{name}: missing")
            if (size := path.stat().st_size) != num_bytes:
                raise _Damaged(f"{where}/{name}: {size} bytes, {num_bytes} written (truncated?)")
            if _sha256(path) != sha256:
                raise _Damaged(f"{where}/{name}: checksum mismatch (changed since written)")
        return manifest

    def read(self, step: int, target):
        """``(state, meta)`` of a verified step, ``state`` restoring only ``target``'s leaves.

        Raises:
          ZooError: a parameter's saved shape differs from ``target``'s, or a file the step depends
            on (a vocabulary) is not the one it was trained with.
          _Damaged: the step fails verification or Orbax cannot read it.
        """
        manifest = self.verify(step)
        folder = self.directory / str(step)
        saved = manifest.get("depends_on") or {}
        for name, sha256 in self.depends_on.items():
            if name in saved and saved[name] != sha256:
                raise ZooError(f"{self.directory.parent / name}: not the file that {self.name}/{step} was trained with "
                               f"(its SHA-256 differs from the step's {MANIFEST}); it was replaced or edited: "
                               f"put back the workdir's own")
        sharding = lambda x: getattr(x, "sharding", None)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding(x)), target)
        restore_args = jax.tree.map(  # sharded jax.Arrays where the target has a sharding, else NumPy arrays
            lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype) if x.sharding
            else ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype), abstract)
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True),
            meta=ocp.args.JsonRestore(),
        )
        try:
            with ocp.Checkpointer(ocp.CompositeCheckpointHandler(**{n: h() for n, h in self.ITEMS.items()})) as checkpointer:
                _check_shapes(target["params"], checkpointer.metadata(folder).item_metadata["state"].tree["params"])
                restored = checkpointer.restore(folder, args=args)
        except ZooError:
            raise
        except Exception as e:  # Orbax and TensorStore raise many types for a damaged folder
            raise _Damaged(f"{self.name}/{step}: unreadable ({type(e).__name__}: {_first_line(e)})") from None
        return restored["state"], restored["meta"]

    def save(self, step: int, args, val_loss: float | None) -> None:
        """Start an asynchronous save of ``step`` (replacing a folder of that step, e.g. a damaged one)."""
        self.wait()  # one save in flight per folder: its manifest needs ``self.saving``
        self.saving = (step, val_loss)
        try:
            if step in self.manager.all_steps():
                self.manager.delete(step)
            self.manager.save(step, args=args, force=True)
        except Exception as e:
            raise ZooError(f"{self.directory / str(step)}: cannot save ({_first_line(e)}); "
                           "the steps committed before are kept") from None

    def wait(self) -> None:
        """Block until the save in flight has committed.

        Raises:
          ZooError: it failed (full disk, read-only folder, ...), naming the step folder.
        """
        if self.manager is None or self.saving is None:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise ZooError(f"{self.directory / str(self.saving[0])}: saving failed ({_first_line(e)}); "
                           f"the steps committed before are kept") from None
        finally:
            self.saving = None

    def close(self) -> None:
        if self.manager is not None:
            try:
                self.wait()
            finally:
                self.manager.close()
                self.manager = None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class CheckpointStore:
    """The ``checkpoints/`` (latest, for resuming) and ``best/`` (lowest validation loss) folders
    of a workdir, with checksums, a fallback to intact steps, and a careful ``best/`` (see the
    module docstring).

    A saved item is ``state`` (a pytree of arrays) plus ``meta`` (a JSON dict: data position,
    ...). Saving is asynchronous; call :meth:`close` (or :meth:`wait`) before exiting. A writable
    store assumes its process holds the :class:`WorkdirLock`; a ``read_only`` one writes nothing.
    ``depends_on`` names the workdir files (the vocabularies) whose SHA-256 every step records
    and every restore checks (see the module docstring).

    Raises (constructing):
      ZooError: a writable store's folders cannot be created (read-only workdir, a file in the
        way); a file of ``depends_on`` cannot be read.
    """

    def __init__(self, workdir, read_only: bool = False, depends_on: tuple[str, ...] = ()):
        root = Path(workdir).absolute()
        hashes = {}
        for name in depends_on:
            try:
                hashes[name] = _sha256(root / name)
            except OSError as e:
                raise ZooError(f"{root / name}: cannot read ({e.strerror or e})") from None
        self.latest = _StepFolder(root / "checkpoints", 2, read_only, hashes)
        self.best = _StepFolder(root / "best", 1, read_only, hashes)
        self._best_val_loss = None  # read from best/ on first use

    @property
    def best_val_loss(self) -> float:
        """The validation loss recorded with the newest intact step of ``best/``; inf if none.

        A damaged best step is reported (one line) and ignored: the next validation replaces it.
        """
        if self._best_val_loss is None:
            self._best_val_loss = math.inf
            for step in self.best.steps():
                try:
                    manifest = self.best.verify(step)
                except _Damaged as e:
                    log.warning(f"{e}; the next validation replaces it")
                    continue
                if manifest.get("val_loss") is not None:
                    self._best_val_loss = float(manifest["val_loss"])
                    break
        return self._best_val_loss

    def save(self, step: int, state, meta: dict, val_loss: float | None = None) -> bool:
        """Save ``state`` and ``meta`` at ``step`` into ``checkpoints/``; and into ``best/`` first when
        ``val_loss`` is finite and strictly lower than :attr:`best_val_loss`.

        Args:
          step: the training step (a folder name).
          state: a pytree of arrays (device or host); copied to the host before returning.
          meta: a JSON-serialisable dict.
          val_loss: the step's validation loss, or None.

        Returns:
          whether ``best/`` now holds this step (it has committed when this returns).

        Raises:
          ZooError: a floating-point leaf of ``state`` is not finite (naming the step and the
            leaf; nothing is written), or writing failed (naming the step folder).
        """
        _check_finite(step, state)  # Orbax copies the arrays to the host before save() returns: they may be donated
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta))
        val_loss = None if val_loss is None else float(val_loss)
        new_best = val_loss is not None and math.isfinite(val_loss) and val_loss < self.best_val_loss
        if new_best:
            self.best.save(step, args, val_loss)
            self.best.wait()
            self._best_val_loss = val_loss
        self.latest.save(step, args, val_loss)
        return new_best

    def latest_step(self) -> int | None:
        """The newest committed step of ``checkpoints/`` (not verified), or None."""
        return next(iter(self.latest.steps()), None)

    def restore(self, target, step: int | None = None, best: bool = False):
        """Restore ``(state, meta)`` of the newest intact step, shaped like ``target``.

        Args:
          target: a pytree of arrays or ShapeDtypeStructs with a ``params`` entry, which is checked
            against the saved parameter shapes first. Only its leaves are read: ``{"params": ...,
            "step": ...}`` restores no optimizer state.
          step: only this step; default the newest intact one.
          best: look in ``best/`` first, then in ``checkpoints/`` (as ``zoo.load`` does); else only
            in ``checkpoints/`` (as resuming does).

        A damaged step (see the module docstring) is skipped for the next older one, and one line
        on the ``zoo`` logger names it and the step used.

        Raises:
          ZooError: no checkpoint (at ``step``), none intact (naming each damaged step and file), a
            parameter's saved shape differs from ``target``'s, or a file of ``depends_on`` is not
            the one the step was trained with (naming it).
        """
        folders = (self.best, self.latest) if best else (self.latest,)
        candidates = [(f, s) for f in folders for s in f.steps() if step is None or s == step]
        if not candidates:
            where = " or ".join(str(f.directory) for f in folders)
            raise ZooError(f"{where}: no checkpoint{'' if step is None else f' at step {step}'}")
        damaged = []
        for folder, s in candidates:
            try:
                state, meta = folder.read(s, target)
            except _Damaged as e:
                damaged.append(str(e))
                continue
            if damaged:
                log.warning(f"damaged checkpoint: {'; '.join(damaged)}; using {folder.name}/{s}")
            return state, meta
        raise ZooError(f"{folders[0].directory.parent}: no intact checkpoint ({'; '.join(damaged)})")

    def wait(self) -> None:
        """Block until every save has committed (ZooError naming the step if one failed)."""
        self.best.wait()
        self.latest.wait()

    def close(self) -> None:
        """Wait for the saves in flight and release Orbax's resources (ZooError if a save failed)."""
        try:
            self.best.close()
        finally:
            self.latest.close()
