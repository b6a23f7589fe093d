"""Reading line-aligned text files (plain or gzip) with errors that name the file and line."""

import gzip
from pathlib import Path

from zoo.errors import ZooError


def read_lines(path) -> list[str]:
    """The lines of a UTF-8 text file, plain or ``.gz``, without their newlines.

    Raises:
      ZooError: the file is missing, unreadable, empty, or not valid UTF-8 (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: no such file")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise ZooError(f"{path}: cannot read ({e})") from None
    if not raw.strip():
        raise ZooError(f"{path}: file is empty")
    try:
        text = raw.decode("utf-8")  # the whole file at once (C speed); a bad byte is located afterwards
    except UnicodeDecodeError as e:
        number, line_start = raw.count(b"\n", 0, e.start) + 1, raw.rfind(b"\n", 0, e.start) + 1
        raise ZooError(f"{path}:{number}: invalid UTF-8 at byte {e.start - line_start}") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines] if "\r" in text else lines


def read_parallel(src_path, tgt_path) -> tuple[list[str], list[str]]:
    """Two line-aligned files (sentence i of one translates sentence i of the other).

    Raises:
      ZooError: as :func:`read_lines`, or the two files have different line counts.
    """
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise ZooError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; they must be line-aligned")
    return src, tgt
