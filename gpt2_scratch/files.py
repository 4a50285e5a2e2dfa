"""Atomic file writes.

Everything the project saves (checkpoints, metrics, evaluation results) goes
through these helpers, so a process killed at any moment leaves either the old
file or the new one, never a half-written file: we write to a temporary file in
the same folder, flush it to disk, then ``os.replace`` it over the target
(an atomic rename on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then rename it onto ``path``.

    ``write`` receives a path in the target folder (same filesystem, so the
    rename is atomic). On any error the temporary file is removed and the
    original ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # fsync so the rename never exposes a file whose data is not on disk yet.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_jsonl(path: str | os.PathLike, *, torn_tail: bool = False, skip_bad: bool = False) -> list[Any]:
    """The values of a JSON-lines file, one per non-blank line: the one reader of every JSONL file.

    A malformed line is a one-line ``ValueError`` naming the file and the line, except:

    - ``torn_tail``: the piece after the last newline is dropped, parsable or not.
      Append-only logs are written a whole line per ``write``; only a kill or a
      power cut mid-write leaves such a piece, and it is never a finished entry.
    - ``skip_bad``: every malformed line is skipped (a log read only for display).
    """
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if torn_tail:
        lines = lines[:-1]  # "" when the file ends with a newline
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if skip_bad:
                continue
            reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({reason})") from None
    return rows


def append_jsonl(path: str | os.PathLike, row: dict, *, fsync: bool = False) -> None:
    """Append ``row`` as one line, in a single ``write`` on an ``O_APPEND`` descriptor.

    A killed process leaves whole lines (a power cut may tear the last one:
    readers trim or skip it). ``fsync`` waits until the line is on disk.
    """
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Atomically replace ``path`` with one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then swap it in for ``path``.

    Use as ``with atomic_folder(target) as tmp: <write files into tmp>``. On an
    error the temporary folder is removed and ``path`` is untouched; at every
    instant a complete version of the folder exists (see ``recover_folder``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        recover_folder(path)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_folder(path: str | os.PathLike) -> None:
    """Finish a swap by ``atomic_folder`` that was killed between its two renames."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)
