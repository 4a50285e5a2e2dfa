"""Preference data for DPO: records ``{instruction, input, chosen, rejected}``, validation, split, encoding.

    records = load_preferences(DEFAULT_PREFERENCE_URL)   # list[PreferenceRecord], validated
    split = split_preferences(records)                   # the 85/10/5 of SFT data; unusable pairs skipped
    pair = encode_pair(split.train[0], "alpaca")          # EncodedPair: chosen and rejected token ids

Sources are read as instruction data are (``records.load_entries``: URL cached, local
``.json``/``.jsonl``, Hub dataset). Every entry needs string ``instruction``, ``chosen``
and ``rejected``; ``input`` may be missing or null; ``output`` (the dataset's reference
answer, present in the book's file) is optional. A wrong entry is a one-line error naming
the file and the entry. The split is computed on all entries, so an SFT run and a DPO run
on the same records hold out the same test set; then pairs with an empty side or two
identical sides are dropped from train and validation, and counted (``PreferenceSplit.skipped``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from gpt2_scratch.data.batches import EncodedExample, encode_record
from gpt2_scratch.data.records import Record, load_entries, split_records
from gpt2_scratch.files import atomic_write_json, atomic_write_jsonl, json_kind
from gpt2_scratch.prompts import PromptStyle

# The book's preference data (LLMs-from-scratch ch07/04): its 1,100 instructions, each with a polite
# ("chosen") and an impolite ("rejected") answer; same records, in the same order, as DEFAULT_DATASET_URL.
DEFAULT_PREFERENCE_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
    "ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json"
)
SKIP_REASONS = ("empty", "identical")  # why a pair cannot teach a preference


@dataclass(frozen=True)
class PreferenceRecord:
    """One preference pair; ``id`` is its index in the source, as for ``Record``."""

    id: int
    instruction: str
    input: str
    chosen: str
    rejected: str
    output: str | None = None  # the dataset's own reference answer, when it has one

    @property
    def reference(self) -> str:
        """The answer evaluation compares with: the dataset's ``output``, else ``chosen``."""
        return self.output if self.output is not None else self.chosen

    def as_record(self) -> Record:
        """The instruction record of this pair (its reference as output): what test/val files hold."""
        return Record(id=self.id, instruction=self.instruction, input=self.input, output=self.reference)

    def skip_reason(self) -> str | None:
        """``"empty"`` (a side is blank), ``"identical"`` (both sides the same) or None (usable)."""
        if not self.chosen.strip() or not self.rejected.strip():
            return "empty"
        if self.chosen.strip() == self.rejected.strip():
            return "identical"
        return None

    def to_dict(self) -> dict:
        d = {"instruction": self.instruction, "input": self.input}
        if self.output is not None:
            d["output"] = self.output
        return {**d, "chosen": self.chosen, "rejected": self.rejected}


@dataclass(frozen=True)
class PreferenceSplit:
    """Usable train and validation pairs, the test records (all of them), and what was skipped where."""

    train: list[PreferenceRecord]
    test: list[Record]
    val: list[PreferenceRecord]
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> reason -> count

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "test": len(self.test), "val": len(self.val)}

    def skipped_note(self) -> str | None:
        """One line counting the skipped pairs, or None when every pair is usable."""
        parts = []
        for part, reasons in self.skipped.items():
            counts = [f"{n} with {'an empty side' if r == 'empty' else 'identical sides'}" for r, n in reasons.items()]
            if counts:
                parts.append(f"{sum(reasons.values())} {part} ({', '.join(counts)})")
        return f"note: skipped preference pairs that teach nothing: {'; '.join(parts)}" if parts else None


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of prompt + chosen and prompt + rejected (``EncodedExample``s, same prompt); ``id``: the record's."""

    id: int
    chosen: EncodedExample
    rejected: EncodedExample

    def __len__(self) -> int:
        return max(len(self.chosen.ids), len(self.rejected.ids))


def _string(entry: dict, key: str, *, optional: bool) -> str | None:
    value = entry.get(key)
    if value is None and optional:
        return None
    if key not in entry:
        raise ValueError(f"missing field '{key}'")
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' must be a string, got {json_kind(value)}")
    return value


def preference_from_entry(entry: dict, id: int) -> PreferenceRecord:
    """The pair of one raw entry; a missing or mistyped field is a one-line ``ValueError``."""
    fields = {k: _string(entry, k, optional=False) for k in ("instruction", "chosen", "rejected")}
    return PreferenceRecord(
        id=id,
        input=_string(entry, "input", optional=True) or "",
        output=_string(entry, "output", optional=True),
        **fields,
    )


def _validate(entries: list, where: str) -> list[PreferenceRecord]:
    if not entries:
        raise ValueError(f"{where}: the preference data has no entries")
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: entry {i} is {json_kind(entry)}, expected an object")
        try:
            records.append(preference_from_entry(entry, i))
        except ValueError as e:
            raise ValueError(f"{where}: entry {i}: {e}") from None
    return records


def load_preferences(source: str = DEFAULT_PREFERENCE_URL) -> list[PreferenceRecord]:
    """The validated pairs of a URL, a local ``.json``/``.jsonl`` file or a Hub dataset id (ids: positions)."""
    return load_entries(source, _validate, ("instruction", "chosen", "rejected"))


def write_preferences(path: str | os.PathLike, records: Sequence[PreferenceRecord]) -> None:
    """Atomically save ``records`` as the book's file does: a JSON array (``.jsonl``: one object a line)."""
    rows = [r.to_dict() for r in records]
    if str(path).lower().endswith(".jsonl"):
        atomic_write_jsonl(path, rows)
    else:
        atomic_write_json(path, rows)


def split_preferences(
    records: Sequence[PreferenceRecord], *, shuffle: bool = False, seed: int = 123
) -> PreferenceSplit:
    """``records.split_records``'s 85/10/5 of all pairs, then the unusable pairs dropped from train and val."""
    split = split_records(records, shuffle=shuffle, seed=seed)  # positions only: the same parts as SFT data
    kept, skipped = {}, {}
    for part in ("train", "val"):
        pairs = getattr(split, part)
        reasons = [p.skip_reason() for p in pairs]
        kept[part] = [p for p, r in zip(pairs, reasons) if r is None]
        skipped[part] = {r: reasons.count(r) for r in SKIP_REASONS if r in reasons}
        if not kept[part]:
            raise ValueError(f"no usable preference pair in the {part} split ({len(pairs)} pairs, all skipped)")
    return PreferenceSplit(kept["train"], [p.as_record() for p in split.test], kept["val"], skipped)


def encode_pair(record: PreferenceRecord, style: PromptStyle | str) -> EncodedPair:
    """Prompt + chosen and prompt + rejected, tokenized as SFT examples are (``batches.encode_record``)."""

    def side(text: str) -> EncodedExample:
        return encode_record(Record(record.id, record.instruction, record.input, text), style)

    return EncodedPair(record.id, side(record.chosen), side(record.rejected))
