"""Resumable progress files: the append-only JSON-lines logs that let an interrupted evaluation continue.

A progress file is a header line (the settings the work is done with), then one
line per finished unit of work (a generated batch, a judged record), then, once
the results it fed are written, a ``{"done": true}`` line. Resuming with other
settings than the header's is refused while the work is unfinished (mixing
would be silent corruption), and allowed, with a note, once it is done: a
finished evaluation never blocks a new one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from gpt2_scratch.files import append_jsonl, atomic_write_jsonl, flatten_json, read_jsonl

DONE = {"done": True}

# Checks one entry: returns what is wrong with it, or None when it is well formed.
EntryCheck = Callable[[Any], "str | None"]


class SettingsMismatch(ValueError):
    """Saved partial results were made with other settings than this evaluation's."""


class ProgressFile:
    """An append-only JSON-lines file: a header line, then one line per finished unit of work.

    Appends are flushed and fsynced, but a kill can still leave the last line
    incomplete; ``open`` trims such a line (and only the last line may be
    broken: a broken line before it is an error). Every entry is checked with
    ``check`` when the file is opened, so a line of the wrong shape is a
    one-line error naming the file and the line, not a traceback later.
    """

    def __init__(self, path: Path, header: dict):
        self.path = path
        self.header = header
        self.entries: list[dict] = []

    @classmethod
    def open(cls, path: Path, header: dict, check: EntryCheck) -> "ProgressFile":
        """Read ``path`` if it exists (checking its header against ``header``), else start it."""
        pf = cls(path, header)
        complete = read_jsonl(path, torn_tail=True) if path.exists() else []
        if not complete:  # nothing usable (also: killed while writing the header)
            atomic_write_jsonl(path, [{"header": header}])
            return pf
        saved = complete[0].get("header") if isinstance(complete[0], dict) else None
        done = complete[-1] == DONE
        numbered = [
            (n, e) for n, e in enumerate(complete[1:], 2) if e != DONE
        ]  # (line, entry); a done mark is no entry
        entries = [e for _, e in numbered]
        if saved != header:
            if not done:
                raise SettingsMismatch(_mismatch_message(path, saved, header))
            print(
                f"note: {_differences(path, saved, header)}; that evaluation was finished, so it is replaced",
                file=sys.stderr,
            )
            atomic_write_jsonl(path, [{"header": header}])
            return pf
        for n, entry in numbered:
            problem = check(entry)
            if problem is not None:
                raise ValueError(
                    f"{path}: line {n} is not a progress entry ({problem}); "
                    "delete the file (or pass --restart) to start over"
                )
        if not path.read_bytes().endswith(b"\n") or len(entries) < len(complete) - 1:  # a torn line, done marks
            atomic_write_jsonl(path, [complete[0], *entries])
        pf.entries = entries
        return pf

    def append(self, entry: dict) -> None:
        append_jsonl(self.path, entry, fsync=True)
        self.entries.append(entry)

    def mark_done(self) -> None:
        """Record that the results built from this file are written (see the module docstring)."""
        append_jsonl(self.path, DONE, fsync=True)


def _differences(path: Path, saved: dict | None, current: dict) -> str:
    if not isinstance(saved, dict):
        return f"{path} has no valid header"
    flat_saved, flat_current = flatten_json(saved), flatten_json(current)
    diffs = [k for k in sorted(set(flat_saved) | set(flat_current)) if flat_saved.get(k) != flat_current.get(k)]
    shown = ", ".join(f"{k}={flat_saved.get(k)!r} (now {flat_current.get(k)!r})" for k in diffs[:3])
    return f"{path} holds results made with other settings: {shown}"


def _mismatch_message(path: Path, saved: dict | None, current: dict) -> str:
    if not isinstance(saved, dict):
        return f"{path} has no valid header; delete it (or pass --restart) to start over"
    return (
        f"{_differences(path, saved, current)}; "
        "rerun with the same settings to resume, or delete the file (or pass --restart) to start over"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_batch_entry(entry: Any) -> str | None:
    """A generated batch: ``{"batch": int, "indices": [int], "outputs": [[int]], "seconds": number}``."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    if not _is_int(entry.get("batch")):
        return '"batch" must be an integer'
    indices, outputs = entry.get("indices"), entry.get("outputs")
    if not (isinstance(indices, list) and all(_is_int(i) for i in indices)):
        return '"indices" must be a list of integers'
    if not (
        isinstance(outputs, list)
        and len(outputs) == len(indices)
        and all(isinstance(o, list) and all(_is_int(t) for t in o) for o in outputs)
    ):
        return '"outputs" must be one list of token ids per index'
    if not isinstance(entry.get("seconds"), (int, float)) or isinstance(entry.get("seconds"), bool):
        return '"seconds" must be a number'
    return None


def check_judge_entry(entry: Any) -> str | None:
    """A judged record: ``{"id": int, "score": int | null, "raw": str | null, "error": bool}``."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    if not _is_int(entry.get("id")):
        return '"id" must be an integer'
    if entry.get("score") is not None and not _is_int(entry.get("score")):
        return '"score" must be an integer or null'
    if entry.get("raw") is not None and not isinstance(entry.get("raw"), str):
        return '"raw" must be a string or null'
    if not isinstance(entry.get("error"), bool):
        return '"error" must be true or false'
    return None
