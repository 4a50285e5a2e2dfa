"""Resumable progress files: the append-only JSON-lines logs that let an interrupted evaluation continue.

A progress file is a header line (the settings the work is done with), then one
line per finished unit of work (a generated batch, a judged record); once the
results it fed are written, it is removed (``remove``; earlier versions appended a
``{"done": true}`` line instead, still read). Resuming with other
settings than the header's is refused while the work is unfinished (mixing
would be silent corruption), and a done file unless ``replace`` is asked for
(a finished evaluation is not lost silently: summary.json guards it too). ``describe_differences`` says in
words which settings differ (for these headers and for summary.json's settings).
"""

from __future__ import annotations

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
    def open(cls, path: Path, header: dict, check: EntryCheck, *, replace: bool = False) -> "ProgressFile":
        """Read ``path`` if it exists (checking its header against ``header``), else start it.

        A finished file (done mark) with another header is started afresh only with ``replace``.
        """
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
            if not done or not replace:
                raise SettingsMismatch(_mismatch_message(path, saved, header, done))
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

    def remove(self) -> None:
        """The results built from this file are written: it has served its purpose (see the module docstring)."""
        self.path.unlink(missing_ok=True)


# Settings as messages name them, by the last part of their key (progress headers, summary.json).
_WORDS = {
    "num_records": "test records",
    "prompts_sha256": "the test records",
    "prompt_style": "prompt style",
    "max_new_tokens": "max new tokens",
    "top_k": "top-k",
    "top_p": "top-p",
    "batch_size": "batch size",
    "refill": "refilled rows",
    "sha256": "the model's weights",
    "checkpoint_sha256": "the finetuned weights",
    "source": "model",
    "base_model": "base model",
    "url": "URL",
}


def _word(key: str) -> str:
    parts = key.split(".")
    word = _WORDS.get(parts[-1], parts[-1].replace("_", " "))
    return f"judge {word}" if parts[0] == "judge" and len(parts) > 1 else word


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def describe_differences(saved: dict | None, current: dict) -> str:
    """The settings that differ between ``saved`` and ``current``, in words: "max new tokens 256 (now 8), ..."

    Hashes are not shown, only that what they identify differs ("the test records differ").
    """
    if not isinstance(saved, dict):
        return "no settings were recorded"
    old, new = flatten_json(saved), flatten_json(current)
    parts = []
    for key in dict.fromkeys([*old, *new]):
        if old.get(key) == new.get(key):
            continue
        word = _word(key)
        parts.append(
            f"{word} differ"
            if key.endswith("sha256")
            else f"{word} {_shown(old.get(key))} (now {_shown(new.get(key))})"
        )
    return ", ".join(dict.fromkeys(parts))


_FILE_KINDS = {"partial": "answers", "judge": "judgements"}


def _mismatch_message(path: Path, saved: dict | None, current: dict, done: bool) -> str:
    """Names the options that exist in both scripts with progress files (evaluate.py, make_preferences.py)."""
    kind, _, model = path.stem.partition("_")  # partial_<model>.jsonl, judge_<model>.jsonl
    if kind in _FILE_KINDS:
        holder, what = f"{path.parent}/", f"{_FILE_KINDS[kind]} of the {model} model"
    else:  # make_preferences.py's <out>.progress.jsonl
        holder, what = str(path), "answers"
    if not isinstance(saved, dict):
        return f"{path} has no valid header; delete it (or pass --restart) to start over"
    if done:
        return (
            f"{holder} holds a finished {'evaluation (' + what + ')' if kind in _FILE_KINDS else 'build'} made with "
            f"other settings: {describe_differences(saved, current)}; rerun with those settings, or pass --replace "
            "to replace it"
        )
    return (
        f"{holder} holds unfinished {what} made with other settings: {describe_differences(saved, current)}; "
        "rerun with the same settings to resume, or pass --restart to start over"
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


def interrupted_message(eval_dir: Path | None) -> str:
    """The one line evaluate.py prints after a Ctrl-C: what the progress files in ``eval_dir`` kept, how to go on."""
    kept = []
    for kind, what in (("partial", "answers"), ("judge", "judgements")):
        for path in sorted(eval_dir.glob(f"{kind}_*.jsonl")) if eval_dir is not None else []:
            try:
                entries = [e for e in read_jsonl(path, torn_tail=True)[1:] if isinstance(e, dict) and "done" not in e]
            except (ValueError, OSError):
                continue
            n = sum(len(e.get("indices") or []) for e in entries) if kind == "partial" else len(entries)
            if n:
                kept.append(f"{n} {what} of the {path.stem.split('_', 1)[1]} model")
    if not kept:
        return "interrupted before any answer was saved; rerun the same command to start again"
    return (
        f"interrupted; kept {', '.join(kept)} in {eval_dir}/: "
        "rerun the same command (same settings) to continue where it stopped"
    )
