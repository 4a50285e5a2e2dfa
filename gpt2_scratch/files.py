"""Atomic file writes.

Everything the project saves (checkpoints, metrics, evaluation results) goes
through these helpers, so a process killed at any moment leaves either the old
file or the new one, never a half-written file: we write to a temporary file in
the same folder, flush it to disk, then ``os.replace`` it over the target
(an atomic rename on POSIX and Windows). Folders are swapped in the same way
(``atomic_folder``); ``remove_stray_temporaries`` clears what a kill in the
middle of any of these leaves behind. Invariant: ``atomic_folder`` replaces only a
folder of ours (its ``MARKER`` file names what wrote it) or an empty one; it never
replaces a folder it did not write, a git checkout, the home folder, the root, or a
folder holding the current folder or the project (``check_replaceable``).
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

# Written into every folder ``atomic_folder`` builds: {"written_by": "gpt2_scratch", "kind": ...}.
MARKER = ".gpt2-scratch"
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE_ENV = "GPT2_SCRATCH_CACHE"  # the project's cache folder: downloads, kernel choices, the built C kernel


def cache_folder() -> Path:
    """The project's cache folder: ``$GPT2_SCRATCH_CACHE`` or ``~/.cache/gpt2_scratch``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "gpt2_scratch"


class FolderRefused(ValueError):
    """A folder the project will not replace or delete; the message names it, in one line."""


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


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex (read 1 MB at a time: weights files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike) -> Any:
    """The value of a JSON file; one that is not UTF-8 JSON is a one-line ``ValueError`` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def read_jsonl(path: str | os.PathLike, *, torn_tail: bool = False, skip_bad: bool = False) -> list[Any]:
    """The values of a JSON-lines file, one per non-blank line: the one reader of every JSONL file.

    A malformed line is a one-line ``ValueError`` naming the file and the line, except:

    - ``torn_tail``: the piece after the last newline is dropped, parsable or not.
      Append-only logs are written a whole line per ``write``; only a kill or a
      power cut mid-write leaves such a piece, and it is never a finished entry.
    - ``skip_bad``: every malformed line is skipped (a log read only for display).
    """
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):  # written by some Windows editors; not part of the first value
        data = data[len(codecs.BOM_UTF8) :]
    lines = data.split(b"\n")
    if torn_tail:
        lines = lines[:-1]  # "" when the file ends with a newline
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line.decode("utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            if skip_bad:
                continue
            if isinstance(e, RecursionError):  # json.loads stops at the interpreter's recursion limit
                problem = "is JSON nested too deeply (over ~1000 levels of lists/objects)"
            else:
                problem = f"is not valid JSON ({e.msg if isinstance(e, json.JSONDecodeError) else 'not UTF-8'})"
            raise ValueError(f"{path}: line {lineno} {problem}") from None
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


def folder_kind(path: str | os.PathLike) -> str | None:
    """What wrote the folder ``path`` (its ``MARKER``'s kind), or None when it has no readable marker."""
    try:
        mark = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return mark.get("kind") if isinstance(mark, dict) and mark.get("written_by") == "gpt2_scratch" else None


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def check_replaceable(path: str | os.PathLike, kind: str, ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse (``FolderRefused``, one line naming ``path``) to replace ``path`` unless it is new, empty or ours.

    Ours: its ``MARKER`` says ``kind``, or ``ours(path)`` recognises it (a folder of ``kind`` written
    before markers existed). Never: a file, the filesystem root, the home folder, a git checkout,
    a folder holding the current folder or the project, a run folder (it has run.json, no marker).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    where = path.resolve()
    why = None
    if not path.is_dir() or path.is_symlink():
        why = "it is not a folder"
    elif where == Path(where.anchor):
        why = "it is the filesystem root"
    elif where == Path.home().resolve():
        why = "it is the home folder"
    elif (where / ".git").exists():
        why = "it is a git checkout"
    elif any(where == p or where in p.parents for p in (Path.cwd().resolve(), _PROJECT_ROOT)):
        why = "it holds the current folder or the project"
    elif not any(path.iterdir()):
        return
    else:
        found = folder_kind(path)
        if found == kind or (found is None and ours is not None and ours(path)):
            return
        if found is not None:
            why = f"it holds {_a(found)}, not {_a(kind)}"
        elif (path / "run.json").is_file():
            why = "it is a run folder"
        else:
            why = f"it holds files this project did not write (no {MARKER} file)"
    raise FolderRefused(f"refusing to replace {path}: {why}; choose a new or empty folder")


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike, kind: str = "folder", ours: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then swap it in for ``path``.

    Use as ``with atomic_folder(target, "checkpoint") as tmp: <write files into tmp>``. On an
    error the temporary folder is removed and ``path`` is untouched; at every
    instant a complete version of the folder exists (see ``recover_folder``).
    ``path`` must be new, empty or a folder of ``kind`` (``check_replaceable``, before
    anything is written and again before the swap); the new folder gets a ``MARKER`` saying ``kind``.
    """
    path = Path(path)
    recover_folder(path)
    check_replaceable(path, kind, ours)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        atomic_write_json(tmp / MARKER, {"written_by": "gpt2_scratch", "kind": kind})
        _public_modes(tmp)
        recover_folder(path)
        check_replaceable(path, kind, ours)
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


class Locked(RuntimeError):
    """Another process holds the lock; the message names it (its PID and what it is)."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, holder: str, what: str) -> Iterator[None]:
    """Hold an OS lock (``flock``) on the file ``path`` for the ``with`` block, or raise ``Locked`` at once.

    The kernel releases the lock when the process ends, however it ends (a kill -9 too), so a lock is
    never stale. The file keeps "<pid> <holder>" for the message the next process gets (``what``
    names the locked thing in it). Without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # no flock: work unlocked, as before locks existed
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, by = os.pread(fd, 200, 0).decode("utf-8", "replace").strip().partition(" ")
            who = f"process {pid} ({by})" if pid.isdigit() else "another process"
            raise Locked(f"{what} is in use by {who}; wait until it ends, or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {holder}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def recover_folder(path: str | os.PathLike) -> None:
    """Finish a swap by ``atomic_folder`` that was killed between its two renames."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)


def _public_modes(folder: Path) -> None:
    """Give ``folder`` and everything in it the modes a plain mkdir()/open() would have.

    mkdtemp creates 0700 and mkstemp 0600, and so does safetensors' ``save_file``:
    without this, checkpoint weights would be the only private files of a run.
    """
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def link_folder(
    source: str | os.PathLike,
    path: str | os.PathLike,
    kind: str = "folder",
    ours: Callable[[Path], bool] | None = None,
) -> None:
    """Atomically make ``path`` a folder of hard links to the files of ``source`` (a flat folder).

    For two folders with identical content (a run's best/ and final/ when the
    best step is the last one), the data is stored once. Safe because nothing
    here writes into a file in place: every write replaces the file or the
    folder, which leaves the other name's data untouched. Where the filesystem
    has no hard links, the files are copied.
    """
    with atomic_folder(path, kind, ours) as tmp:
        for file in Path(source).iterdir():
            try:
                os.link(file, tmp / file.name)
            except OSError:
                shutil.copy2(file, tmp / file.name)


def remove_stray_temporaries(folder: str | os.PathLike) -> list[str]:
    """Clear what killed atomic writes left in ``folder``; returns the names removed.

    A kill during ``atomic_write``/``atomic_folder`` leaves a ``.NAME.*.tmp``
    sibling (half written: removed) and a kill between a folder swap's renames a
    ``.NAME.old`` one (restored as NAME if NAME is missing, else removed). A
    124M training state left this way is 1.5 GB. Call it only while no other
    process writes in ``folder``: another writer's temporary would be removed too.
    """
    folder = Path(folder)
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        name = entry.name
        if not name.startswith("."):
            continue
        if name.endswith(".old") and len(name) > 5:
            recover_folder(folder / name[1:-4])
            if not entry.exists():
                continue  # it was restored
        elif not (name.endswith(".tmp") and name.count(".") >= 3):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(name)
    return removed


_JSON_KINDS = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def json_kind(value: Any) -> str:
    """How an error message names the JSON type of a parsed value: "an object", "an array", ..., "null"."""
    return "null" if value is None else _JSON_KINDS.get(type(value), "something else")


def flatten_json(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested JSON object as one level of dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_json(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
