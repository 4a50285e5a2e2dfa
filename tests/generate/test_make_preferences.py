"""Tests of self-play preference data (gpt2_scratch.generate.preferences, make_preferences.py): the file, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import make_preferences
from gpt2_scratch.data.preferences import load_preferences, split_preferences
from gpt2_scratch.data.records import load_records
from gpt2_scratch.generate import preferences as selfplay
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.tokenizer import decode, encode
from tests.fixtures.preferences import instruction_entries, write_json

SETTINGS = SamplingSettings(max_new_tokens=6)
STYLE = get_prompt_style("phi3")


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    """20 instruction records (the book's layout) in a .json file."""
    return write_json(tmp_path_factory.mktemp("data") / "instructions.json", instruction_entries(20))


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny")[0]


def answer(model, record) -> str:
    """The model's greedy answer to one record, generated alone."""
    (ids,) = generate(model, [encode(STYLE.format(record.instruction, record.input))], SETTINGS)
    return decode(ids).strip()


def test_one_pair_per_record_in_source_order(tmp_path, tiny, instructions):
    records = load_records(str(instructions))[:10]
    out = tmp_path / "prefs.json"
    stats = selfplay.build_preferences(tiny, records, STYLE, out, SETTINGS, batch_size=4, progress_bar=False)
    pairs = load_preferences(str(out))
    assert [p.id for p in pairs] == list(range(10)) and (stats.records, stats.agree, stats.empty) == (10, 0, 0)
    assert [p.chosen for p in pairs] == [r.output for r in records] == [p.output for p in pairs]
    assert [(p.instruction, p.input) for p in pairs] == [(r.instruction, r.input) for r in records]
    # Batched (left-padded, longest first) answers are each record's answer alone.
    for i in (0, 3, 9):
        assert pairs[i].rejected == answer(tiny, records[i])
    assert stats.new_tokens == 60  # random weights never stop early


def test_answers_that_agree_with_the_reference_stay_in_place_and_are_counted(tmp_path, tiny, instructions):
    records = load_records(str(instructions))[:20]
    data = [r.to_dict() for r in records]
    data[2]["output"] = answer(tiny, records[2])  # the model will say exactly the reference
    (tmp_path / "data.json").write_text(json.dumps(data))
    out = tmp_path / "prefs.jsonl"
    stats = selfplay.build_preferences(
        tiny, load_records(str(tmp_path / "data.json")), STYLE, out, SETTINGS, batch_size=8, progress_bar=False
    )
    assert (stats.records, stats.agree, stats.usable) == (20, 1, 19)
    pairs = load_preferences(str(out))
    assert pairs[2].rejected == pairs[2].chosen and len(pairs) == 20
    assert split_preferences(pairs).skipped["train"] == {"identical": 1}  # DPO skips it, counted


def test_an_interrupted_build_continues_with_the_batches_left(tmp_path, tiny, instructions, monkeypatch):
    records = load_records(str(instructions))[:10]
    whole = tmp_path / "whole.json"
    selfplay.build_preferences(tiny, records, STYLE, whole, SETTINGS, batch_size=4, progress_bar=False)

    real, calls = selfplay.generate_batches, []

    def killed_after_one_batch(model, prompts, settings, batches, on_batch, skip, stop_ids):
        def report(b, *rest):
            on_batch(b, *rest)
            raise KeyboardInterrupt

        real(model, prompts, settings, batches, report, skip, stop_ids)

    out = tmp_path / "prefs.json"
    monkeypatch.setattr(selfplay, "generate_batches", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        selfplay.build_preferences(tiny, records, STYLE, out, SETTINGS, batch_size=4, progress_bar=False)
    assert not out.exists() and len(selfplay.progress_path(out).read_text().splitlines()) == 2  # header, batch 0

    def counted(model, prompts, settings, batches, on_batch, skip, stop_ids):
        calls.append(sorted(skip))
        real(model, prompts, settings, batches, on_batch, skip, stop_ids)

    monkeypatch.setattr(selfplay, "generate_batches", counted)
    selfplay.build_preferences(tiny, records, STYLE, out, SETTINGS, batch_size=4, progress_bar=False)
    assert calls == [[0]]  # the finished batch is not generated again
    assert out.read_bytes() == whole.read_bytes()
    assert not selfplay.progress_path(out).exists()  # the file is written: nothing left to resume
    # Other settings while unfinished work exists: refused (never mixed) ...
    monkeypatch.setattr(selfplay, "generate_batches", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        selfplay.build_preferences(tiny, records, STYLE, out, SETTINGS, batch_size=4, progress_bar=False)
    with pytest.raises(ValueError, match="other settings"):
        selfplay.build_preferences(tiny, records, STYLE, out, SamplingSettings(max_new_tokens=5), progress_bar=False)


def test_cli_writes_the_file_and_bad_input_is_one_line(tmp_path, instructions, capsys):
    out = tmp_path / "p.json"
    args = ["--model", "random:tiny", "--dataset", str(instructions), "--limit", "3", "--max-new-tokens", "3"]
    assert make_preferences.main([*args, "--out", str(out), "--no-progress"]) == 0
    # random:tiny answers record 1 with 3 whitespace tokens: an empty answer, kept in place and counted.
    assert capsys.readouterr().out.startswith(
        f"wrote {out}: 3 pairs, 2 usable; 0 where the model agrees with the reference and 1 empty answers stay in place"
    )
    assert [p.rejected for p in load_preferences(str(out))][1] == ""
    out.with_name("other.json").write_text("[]")
    assert make_preferences.main([*args, "--out", str(out.with_name("other.json"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: --out {out.with_name('other.json')} exists; choose another path, or pass --replace to replace it"
    ]
    assert (
        make_preferences.main(["--model", "random:tiny", "--dataset", str(tmp_path / "no.json"), "--out", "x.json"])
        == 2
    )
    assert capsys.readouterr().err.strip().splitlines() == [f"error: dataset file not found: {tmp_path / 'no.json'}"]
