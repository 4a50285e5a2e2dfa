"""Tests of gpt2_scratch.data.preferences: the book's preference file, bad files, the split, pair encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import finetune
from gpt2_scratch.data.batches import encode_record
from gpt2_scratch.data.preferences import (
    PreferenceRecord,
    encode_pair,
    load_preferences,
    split_preferences,
    write_preferences,
)
from gpt2_scratch.data.records import Record, load_records, split_records
from tests.fixtures.preferences import instruction_entries, preference_entries, write_json


def write(path: Path, entries) -> Path:
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries), encoding="utf-8")
    return path


def pair(i: int, **fields) -> dict:
    return {"instruction": f"Say {i}.", "input": "", "chosen": f"{i}.", "rejected": f"No, {i}!", **fields}


def test_a_preference_file_splits_like_its_instruction_file(tmp_path):
    # 200 records, as the book's two files: the same records in the same order, one with chosen/rejected.
    # Identical sides at 5, 17 and 100 (training part) and 175 (test part: test records are all kept).
    prefs = write_json(tmp_path / "prefs.json", preference_entries(200, identical=(5, 17, 100, 175)))
    instructions = write_json(tmp_path / "instructions.json", instruction_entries(200))
    records = load_preferences(str(prefs))
    assert len(records) == 200
    assert records[6].chosen == 'The correct spelling of "rceeive" is "receive".' == records[6].output
    assert records[6].rejected == 'Ugh, this is so basic: the correct spelling of "rceeive" is "receive".'
    split = split_preferences(records)
    # 170 / 20 / 10 as the SFT data; the 3 training pairs with chosen == rejected are skipped.
    assert split.sizes() == {"train": 167, "test": 20, "val": 10}
    assert split.skipped == {"train": {"identical": 3}, "val": {}}
    assert split.skipped_note() == "note: skipped preference pairs that teach nothing: 3 train (3 with identical sides)"
    assert [p.id for p in split.train if p.id in (5, 17, 100)] == []
    # The test set is the SFT run's, record for record (the reference answer is the dataset's output).
    assert split.test == split_records(load_records(str(instructions))).test
    assert [r.id for r in split.test] == list(range(170, 190))


def test_jsonl_null_input_and_no_output(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(pair(i, input=None)) for i in range(3)) + "\n")
    records = load_preferences(str(path))
    assert records[1] == PreferenceRecord(1, "Say 1.", "", "1.", "No, 1!")
    assert records[1].reference == "1." and records[1].as_record() == Record(1, "Say 1.", "", "1.")


def test_empty_and_identical_sides_are_skipped_and_counted(tmp_path):
    entries = [pair(i) for i in range(40)]  # 34 train / 4 test / 2 validation
    entries[1]["chosen"] = "  "
    entries[2]["rejected"] = ""
    entries[3]["rejected"] = entries[3]["chosen"]
    entries[39]["rejected"] = entries[39]["chosen"] + " "  # validation: identical once stripped
    split = split_preferences(load_preferences(str(write(tmp_path / "p.json", entries))))
    assert split.skipped == {"train": {"empty": 2, "identical": 1}, "val": {"identical": 1}}
    assert [p.id for p in split.train] == [0, *range(4, 34)] and [p.id for p in split.val] == [38]
    note = split.skipped_note()
    assert note == (
        "note: skipped preference pairs that teach nothing: "
        "3 train (2 with an empty side, 1 with identical sides); 1 val (1 with identical sides)"
    )


def test_a_split_with_no_usable_pair_is_an_error(tmp_path):
    entries = [pair(i) for i in range(40)]
    for e in entries[38:]:
        e["rejected"] = e["chosen"]
    with pytest.raises(ValueError, match="no usable preference pair in the val split"):
        split_preferences(load_preferences(str(write(tmp_path / "p.json", entries))))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON at line 1, column 2"),
        ("", "invalid JSON at line 1, column 1"),
        ([], "the preference data has no entries"),
        ({"a": 1}, "expected a JSON array of records at the top level, got an object"),
        ([pair(0), "text"], "entry 1 is a string, expected an object"),
        ([pair(0), {"instruction": "x", "rejected": "y"}], "entry 1: missing field 'chosen'"),
        ([pair(0), pair(1, chosen=None)], "entry 1: field 'chosen' must be a string, got null"),
        ([pair(0), pair(1, rejected=3)], "entry 1: field 'rejected' must be a string, got a number"),
        ([pair(0), pair(1, input=["a"])], "entry 1: field 'input' must be a string, got an array"),
        ([pair(0), pair(1, output=False)], "entry 1: field 'output' must be a string, got a boolean"),
    ],
)
def test_bad_files_are_one_line_errors_naming_file_and_entry(tmp_path, content, message):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(ValueError) as e:
        load_preferences(str(path))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value) and "\n" not in str(e.value)


def test_a_bad_file_stops_finetune_before_anything_is_written(tmp_path, capsys):
    path = write(tmp_path / "bad.json", [pair(0), {"instruction": "x", "rejected": "y"}])
    out = tmp_path / "runs"
    code = finetune.main(["--method", "dpo", "--base", "random:tiny", "--dataset", str(path), "--out-dir", str(out)])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {path}: entry 1: missing field 'chosen'"]
    assert not out.exists()


def test_encode_pair_is_two_sft_examples_with_one_prompt():
    record = PreferenceRecord(7, "Name a color.", "", "Blue.", "Ugh, blue, obviously.")
    p = encode_pair(record, "alpaca")
    assert p.id == 7 and p.chosen.prompt_len == p.rejected.prompt_len
    assert p.chosen == encode_record(Record(7, "Name a color.", "", "Blue."), "alpaca")
    assert p.rejected == encode_record(Record(7, "Name a color.", "", "Ugh, blue, obviously."), "alpaca")
    assert p.chosen.ids[: p.chosen.prompt_len] == p.rejected.ids[: p.rejected.prompt_len]
    assert len(p) == len(p.rejected.ids) > len(p.chosen.ids)


@pytest.mark.parametrize("name", ["out.json", "out.jsonl"])
def test_write_preferences_round_trip(tmp_path, name):
    records = [PreferenceRecord(0, "a", "", "b", "c", output="b"), PreferenceRecord(1, "d", "e", "f", "g")]
    write_preferences(tmp_path / name, records)
    assert load_preferences(str(tmp_path / name)) == records
