"""Instruction data: loading, validation, splitting (as in the LLMs-from-scratch reference, ch07).

    records = load_records(DEFAULT_DATASET_URL)       # list[Record], validated
    split = split_records(records)                     # 85% train / 10% test / 5% val

A source (``source_kind``) is an http(s) URL of a .json/.jsonl file (cached under
``$GPT2_SCRATCH_CACHE/datasets/``), a local .json/.jsonl file, or a Hub dataset id.
Invariant: every record has string ``instruction`` and ``output`` (``input`` optional); anything
else is a one-line ``ValueError`` naming the file and the entry's index. More: docs/design.md.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from gpt2_scratch.files import atomic_write_bytes, atomic_write_jsonl, cache_folder, file_sha256, json_kind, read_jsonl

# The 1,100-entry instruction dataset of LLMs-from-scratch ch07.
DEFAULT_DATASET_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
DOWNLOAD_TIMEOUT_S = 60
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """One instruction example. ``id`` is its index in the source dataset, so it stays stable across splits."""

    id: int
    instruction: str
    input: str
    output: str

    def to_dict(self) -> dict:
        return {"id": self.id, "instruction": self.instruction, "input": self.input, "output": self.output}

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        """The record saved by ``to_dict``; a missing or mistyped field is a one-line ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        if not isinstance(d.get("id"), int) or isinstance(d.get("id"), bool):
            raise ValueError(f"field 'id' must be an integer, got {d.get('id')!r}")
        return _record_from_entry(d, d["id"])


@dataclass(frozen=True)
class Split:
    """The three parts of a dataset. Each keeps the records' original ids."""

    train: list[Record]
    test: list[Record]
    val: list[Record]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test), "val": len(self.val)}


def source_kind(source: str | os.PathLike) -> str:
    """``"url"``, ``"file"`` or ``"hub"``: how ``load_records`` will read ``source``.

    A ``Path`` is a local file. A string that names an existing path, ends in ``.json``/``.jsonl`` or starts
    like a path (``/``, ``.``, ``~``) is a local file, so a mistyped file name is
    reported as a missing file rather than as an unknown Hub dataset.
    """
    if isinstance(source, os.PathLike):
        return "file"
    if source.startswith(("http://", "https://")):
        return "url"
    path = Path(source).expanduser()
    if path.exists() or path.suffix.lower() in (".json", ".jsonl") or source.startswith(("/", ".", "~")):
        return "file"
    return "hub"


def resolve_source(source: str) -> str:
    """``source`` as run.json stores it: a local file as its absolute path (it resolves from any working
    folder, e.g. for ``--resume``); a URL or Hub id as it is."""
    return str(Path(source).expanduser().resolve()) if source_kind(source) == "file" else source


def source_label(source: str | None) -> str:
    """A readable name of a dataset source for cards and the app: a local file's name (its folder is of
    the machine that trained), a URL or Hub id as it is."""
    if not source:
        return "unknown dataset"
    return Path(source).name if source_kind(source) == "file" else source


def cache_dir() -> Path:
    """Where downloaded datasets are cached: ``$GPT2_SCRATCH_CACHE/datasets`` or ``~/.cache/gpt2_scratch/datasets``."""
    return cache_folder() / "datasets"


def _cache_path(url: str) -> Path:
    # Prefix the file name with a hash of the whole URL: two URLs ending in the same
    # file name (e.g. the same file on two branches) must not share a cache entry.
    name = Path(urllib.parse.urlparse(url).path).name or "dataset.json"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"


def download(url: str) -> Path:
    """The cached copy of ``url``, downloaded first if it is not cached yet (atomically, so never half a file)."""
    path = _cache_path(url)
    if path.is_file():
        return path
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError and HTTPError are OSErrors
        reason = (
            f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", None) or e
        )
        raise ConnectionError(
            f"cannot download {url} ({reason}); download it yourself and pass the local file with --dataset PATH"
        ) from None
    atomic_write_bytes(path, data)
    return path


def _local_file(source: str | os.PathLike) -> Path | None:
    """The file holding ``source`` (downloading a URL), or None for a Hub dataset."""
    kind = source_kind(source)
    if kind == "url":
        return download(source)
    if kind == "hub":
        return None
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"dataset file not found: {source}")
    if not path.is_file():
        raise ValueError(f"{source} is not a file; pass a .json or .jsonl file")
    return path


def source_sha256(source: str) -> str | None:
    """sha256 of the raw bytes of the dataset file behind ``source``; None for a Hub dataset.

    For a URL this is the hash of the cached download, i.e. of exactly the bytes
    ``load_records`` read. Recorded in run.json so a run names its data exactly.
    """
    path = _local_file(source)
    if path is None:
        return None
    return file_sha256(path)


def load_records(source: str | os.PathLike = DEFAULT_DATASET_URL) -> list[Record]:
    """The validated records of a URL, a local ``.json``/``.jsonl`` file, or a Hub dataset id.

    Record ids are the entries' positions in the source (0-based).
    """
    return load_entries(source, _validate, ("instruction", "output"))


def load_entries(source: str | os.PathLike, validate: Callable[[list, str], T], columns: Sequence[str]) -> T:
    """``validate(entries, where)`` of the raw entries of ``source`` (URL, local file, Hub dataset).

    ``where`` names the file (or Hub dataset) for error messages; a Hub dataset
    must have ``columns``. A downloaded file that fails validation is removed
    from the cache, so the next call downloads it again instead of failing on
    the same bad copy forever. (Instruction records and preference pairs share it.)
    """
    path = _local_file(source)
    if path is None:
        return _load_hub(source, validate, columns)
    try:
        # .jsonl is JSON lines; anything else must be one JSON list. (A URL's cached copy keeps its suffix.)
        entries = _read_jsonl_entries(path) if path.suffix.lower() == ".jsonl" else _read_json_entries(path)
        return validate(entries, str(path))
    except ValueError as e:
        if source_kind(source) != "url":
            raise
        path.unlink(missing_ok=True)
        raise ValueError(f"{e} (downloaded from {source}; removed from the cache)") from None


# Formats people reach for that are not JSON: named in the error instead of a bare "invalid JSON".
OTHER_FORMATS = {
    ".csv": "CSV",
    ".tsv": "TSV",
    ".parquet": "Parquet",
    ".arrow": "Arrow",
    ".xlsx": "Excel",
    ".txt": "plain text",
}
JSON_FORMATS_HINT = "--dataset takes a .json file (a list of records) or a .jsonl file (one record a line)"


def _read_json_entries(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading UTF-8 BOM (Windows editors) is skipped
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        other = OTHER_FORMATS.get(path.suffix.lower())
        if other:
            raise ValueError(f"{path}: a {other} file is not supported ({JSON_FORMATS_HINT})") from None
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg})") from None
    except RecursionError:  # json.loads stops at the interpreter's recursion limit
        raise ValueError(
            f"{path}: JSON nested too deeply (over ~1000 levels of lists/objects); records are flat"
        ) from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records at the top level, got {json_kind(data)}")
    return data


def _read_jsonl_entries(path: Path) -> list:
    try:
        return read_jsonl(path)  # names the line of any malformed JSON
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _load_hub(dataset_id: str, validate: Callable[[list, str], T], columns: Sequence[str]) -> T:
    try:
        import datasets  # imported lazily: it is slow to import and only needed here
    except ImportError:
        raise ImportError(
            f"loading the Hub dataset {dataset_id!r} needs the datasets package: pip install datasets"
        ) from None
    try:
        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as e:  # DatasetNotFoundError, ConnectionError, ... : one line, whatever the cause
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"cannot load {dataset_id!r} as a Hugging Face dataset ({type(e).__name__}: {detail}); "
            "pass a local .json/.jsonl file or a URL with --dataset"
        ) from None
    where = f"Hugging Face dataset {dataset_id}"
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where}: no {', '.join(map(repr, missing))} column (columns: {', '.join(ds.column_names)})")
    return validate(ds.to_list(), where)


def _record_from_entry(entry: dict, id: int) -> Record:
    fields = {}
    for key in ("instruction", "input", "output"):
        value = entry.get(key)
        if key == "input" and value is None:
            value = ""  # no input, as in the reference data where "input" is "" for most entries
        elif key not in entry:
            raise ValueError(f"missing field '{key}'")
        elif not isinstance(value, str):
            raise ValueError(f"field '{key}' must be a string, got {json_kind(value)}")
        fields[key] = value
    return Record(id=id, **fields)


def _validate(entries: list, where: str) -> list[Record]:
    if not entries:
        raise ValueError(f"{where}: the dataset has no entries")
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: entry {i} is {json_kind(entry)}, expected an object")
        try:
            records.append(_record_from_entry(entry, i))
        except ValueError as e:
            raise ValueError(f"{where}: entry {i}: {e}") from None
    return records


def write_records(path: str | os.PathLike, records: Sequence[Record]) -> None:
    """Atomically save ``records`` as JSON lines ``{"id", "instruction", "input", "output"}``."""
    atomic_write_jsonl(path, [r.to_dict() for r in records])


def read_records(path: str | os.PathLike) -> list[Record]:
    """The records saved by ``write_records``, with their ids; a bad line is a one-line error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"records file not found: {path}")
    records = []
    for i, row in enumerate(_read_jsonl_entries(Path(path))):
        try:
            records.append(Record.from_dict(row))
        except ValueError as e:
            raise ValueError(f"{path}: entry {i}: {e}") from None
    return records


# ---------------------------------------------------------------------------------------------
# Splitting


def split_records(
    records: Sequence[Record],
    *,
    train_frac: float = 0.85,
    test_frac: float = 0.10,
    shuffle: bool = False,
    seed: int = 123,
) -> Split:
    """First ``train_frac`` for training, the next ``test_frac`` for testing, the rest for validation.

    Computed as in the reference (``int(n * 0.85)``, ``int(n * 0.10)``, remainder),
    which for its 1,100 entries gives 935 / 110 / 55. The reference does not
    shuffle, so neither do we by default; ``shuffle=True`` shuffles a copy with
    ``random.Random(seed)`` before splitting. A part with a non-zero fraction that
    would come out empty is an error rather than a crash later in training.
    """
    if not (0 < train_frac <= 1 and 0 <= test_frac <= 1 and train_frac + test_frac <= 1):
        raise ValueError(
            f"invalid split fractions train={train_frac}, test={test_frac}: need 0 < train, 0 <= test, sum <= 1"
        )
    records = list(records)
    if shuffle:
        random.Random(seed).shuffle(records)
    n = len(records)
    n_train, n_test = int(n * train_frac), int(n * test_frac)
    split = Split(records[:n_train], records[n_train : n_train + n_test], records[n_train + n_test :])
    fractions = {"train": train_frac, "test": test_frac, "val": 1 - train_frac - test_frac}
    for name, size in split.sizes().items():
        if size == 0 and fractions[name] > 1e-9:
            raise ValueError(f"{n} records are too few to split: the {name} part would be empty")
    return split


# ---------------------------------------------------------------------------------------------
# Tokenization and batching
