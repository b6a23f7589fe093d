"""The two file operations of a workdir, turning what the disk or a hand edit does into one
:class:`~zoo.errors.ZooError` line naming the file: reading JSON, and replacing a file atomically."""

import contextlib
import json
import os
from pathlib import Path

from zoo.errors import ZooError


def read_json(path):
    """The JSON value in ``path``.

    Raises:
      ZooError: the file is missing or unreadable, or not valid JSON (e.g. truncated), naming it.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ZooError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ZooError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                       "truncated or hand-edited?") from None


def write_text(path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically, as :func:`write_bytes`."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: written to ``<path>.tmp``, flushed, then renamed, so
    a full disk or a kill leaves either the old file or the new one, never half of it.

    Raises:
      ZooError: the folder is missing, read-only or full, naming the path.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise ZooError(f"{path}: cannot write ({e.strerror or e})") from None
