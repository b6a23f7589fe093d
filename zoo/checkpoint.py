"""Workdirs and Orbax checkpoints. All Orbax use in the zoo lives here.

A workdir holds:
  ``config.json``                      the :class:`zoo.config.Config` (model, data, training)
  ``src_vocab.json``, ``tgt_vocab.json`` the vocabularies
  ``checkpoints/<step>/``              the latest resumable states (parameters, optimizer state,
                                       step, PRNG key, data position), Orbax, the last 2 kept
  ``best/<step>/``                     the state with the lowest validation loss
  ``metrics.jsonl``                    one JSON object per logged event
"""

import dataclasses
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo.config import Config
from zoo.errors import ZooError

CONFIG_FILE = "config.json"
RESUMABLE_FIELDS = {"epochs", "max_steps", "checkpoint_every", "fsdp"}  # may change when resuming a workdir


def read_config(workdir) -> Config:
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise ZooError(f"{path}: no such file; is {workdir} a zoo workdir?")
    return Config.from_json(path.read_text())


def write_or_check_config(workdir, config: Config) -> None:
    """Write ``config.json`` into a new workdir; in an existing one, refuse a different config.

    Raises:
      ZooError: the workdir was made with other settings (naming the first differing field);
        only the training length and checkpoint interval may change on resume.
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json())
        return
    saved = read_config(workdir)
    for section in ("model_name", "model", "data", "train"):
        old, new = getattr(saved, section), getattr(config, section)
        if not dataclasses.is_dataclass(old):
            if old != new:
                raise ZooError(f"{path}: workdir has {section}={old!r}, not {new!r}; use a new --workdir")
            continue
        for f in dataclasses.fields(old):
            a, b = getattr(old, f.name), getattr(new, f.name)
            if a != b and not (section == "train" and f.name in RESUMABLE_FIELDS):
                raise ZooError(f"{path}: workdir has {section}.{f.name}={a!r}, not {b!r}; use a new --workdir")
    path.write_text(config.to_json())


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


def _barriers(name: str) -> ocp.options.MultiprocessingOptions:
    """Orbax's options for a manager's cross-process barriers, named apart: the two managers save the same
    step at an epoch's end, and same-named barriers of both would collide ("already ongoing")."""
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class CheckpointStore:
    """The ``checkpoints/`` (latest, for resuming) and ``best/`` (lowest validation loss) folders.

    A saved item is ``state`` (a pytree of arrays) plus ``meta`` (a JSON dict: data position,
    validation loss, ...). Saving is asynchronous; call :meth:`close` before exiting.
    """

    def __init__(self, workdir, read_only: bool = False):
        root = Path(workdir).absolute()
        common = dict(item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
        self.latest = ocp.CheckpointManager(
            root / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=not read_only, read_only=read_only,
                                                 multiprocessing_options=_barriers("checkpoints")),
            **common,
        )
        self.best = ocp.CheckpointManager(
            root / "best",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda m: m["val_loss"], best_mode="min", create=not read_only, read_only=read_only,
                multiprocessing_options=_barriers("best"),
            ),
            **common,
        )

    def save(self, step: int, state, meta: dict, val_loss: float | None = None) -> None:
        """Save ``state`` (``jax.Array`` s, sharded over the processes or not) and ``meta`` at ``step``;
        with ``val_loss``, also offer it to ``best/``. Every process of a run calls it."""
        # Orbax copies the arrays' shards to the host before save() returns, so the next step may donate them
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.latest.save(step, args=args, force=True)
        if val_loss is not None:
            self.best.save(step, args=args, metrics={"val_loss": float(val_loss)}, force=True)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, target, step: int | None = None, best: bool = False):
        """Restore ``(state, meta)`` shaped and sharded like ``target`` (arrays or ShapeDtypeStructs).

        Args:
          target: a pytree with the expected structure, shapes and dtypes; its ``params`` entry
            is checked against the saved parameter shapes first.
          step: which step; default the best (``best=True``) or the latest.
          best: read from ``best/`` rather than ``checkpoints/``.

        Raises:
          ZooError: no checkpoint, or a parameter's saved shape differs from ``target``'s.
        """
        manager = self.best if best else self.latest
        if step is None:
            step = manager.best_step() if best else manager.latest_step()
        if step is None or step not in manager.all_steps():
            raise ZooError(f"{manager.directory}: no checkpoint{'' if step is None else f' at step {step}'}")
        _check_shapes(target["params"], manager.item_metadata(step)["state"]["params"])
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), target)
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        return restored["state"], restored["meta"]

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()
