"""SamplingSettings is the one source of the generation options: evaluate.py's and make_preferences.py's
options are its fields (help, range, default), files record it through ``record``, and a field added to
it (``tests.fixtures.sampling.WithMinP``) becomes an option and a record entry with no other edit."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest

import evaluate
import make_preferences
from gpt2_scratch.generate import preferences as selfplay
from gpt2_scratch.generate.settings import SamplingSettings
from gpt2_scratch.options import (
    GROUP,
    HELP,
    ArgumentParser,
    HelpFormatter,
    add_dataclass_options,
    check_ranges,
    include_fields,
    included,
)
from tests.fixtures.sampling import WithMinP

GENERATION = "generation (greedy by default)"
SAMPLING = [f.name for f in dataclasses.fields(SamplingSettings)]


@pytest.mark.parametrize("build", [evaluate.build_parser, make_preferences.build_parser])
def test_the_scripts_have_one_option_per_sampling_field_with_its_help_and_default(build):
    parser = build()
    [group] = [g for g in parser._action_groups if g.title == GENERATION]
    actions = {a.dest: a for a in group._group_actions}
    for f in dataclasses.fields(SamplingSettings):
        assert actions[f.name].help == f.metadata[HELP] and actions[f.name].default == f.default, f.name
    assert [d for d in actions if d in SAMPLING] == SAMPLING  # together, in field order
    args = parser.parse_args(["--model", "m", "--out", "o.json"] if build is make_preferences.build_parser else [])
    assert "--repetition-penalty" in parser.format_help() and args.repetition_penalty == 1.0


def test_make_preferences_samples_with_every_sampling_option(tmp_path, monkeypatch):
    dataset = tmp_path / "d.json"
    dataset.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 2), encoding="utf-8")
    seen, real = [], selfplay.generate_batches

    def recording(model, prompts, settings, *rest, **stops):
        seen.append(settings)
        return real(model, prompts, settings, *rest, **stops)

    monkeypatch.setattr(selfplay, "generate_batches", recording)
    sampled = ["--temperature", "0.7", "--top-k", "5", "--top-p", "0.9", "--seed", "3", "--repetition-penalty", "1.3"]
    argv = ["--model", "random:tiny", "--dataset", str(dataset), "--out", str(tmp_path / "p.json"), "--no-progress"]
    assert make_preferences.main([*argv, "--max-new-tokens", "3", *sampled]) == 0
    assert seen == [SamplingSettings(3, 0.7, top_k=5, top_p=0.9, seed=3, repetition_penalty=1.3)]


def test_a_penalty_out_of_range_names_the_option(tmp_path, capsys):
    argv = ["--model", "random:tiny", "--out", str(tmp_path / "p.json"), "--repetition-penalty", "0"]
    assert make_preferences.main(argv) == 2
    assert capsys.readouterr().err == "error: --repetition-penalty must be a positive number, got 0.0\n"


def test_settings_record_every_field_but_a_later_one_at_its_default():
    assert SamplingSettings().record() == {
        "max_new_tokens": 256,
        "temperature": 0.0,
        "top_k": None,
        "top_p": None,
        "seed": None,
    }  # as files recorded them before repetition_penalty existed: they still compare equal
    assert SamplingSettings(repetition_penalty=1.2).record()["repetition_penalty"] == 1.2
    assert WithMinP().record() == SamplingSettings().record()
    assert WithMinP(min_p=0.1).record() == {**SamplingSettings().record(), "min_p": 0.1}


@dataclass
@include_fields(WithMinP, group=GENERATION, after="run")
class _Config:
    run: str = field(default="r", metadata={HELP: "run folder", GROUP: "what"})
    batch_size: int = field(default=8, metadata={HELP: "prompts together", GROUP: GENERATION})

    def __post_init__(self) -> None:
        check_ranges(self)


def test_a_new_sampling_field_becomes_an_option_with_its_help_range_and_default(capsys):
    assert [f.name for f in dataclasses.fields(_Config)] == ["run", *SAMPLING, "min_p", "batch_size"]
    parser = ArgumentParser(prog="x", formatter_class=HelpFormatter)
    add_dataclass_options(parser, _Config)
    config = _Config(**vars(parser.parse_args(["--min-p", "0.05", "--top-k", "5"])))
    assert included(WithMinP, config) == WithMinP(top_k=5, min_p=0.05)
    assert included(WithMinP, _Config()) == WithMinP()
    min_p = next(a for a in parser._actions if a.dest == "min_p")
    assert parser._get_formatter()._expand_help(min_p) == WithMinP.__dataclass_fields__["min_p"].metadata[HELP] + (
        " (default: off)"
    )
    assert min_p.metavar == "P" and [g.title for g in parser._action_groups if min_p in g._group_actions] == [
        GENERATION
    ]
    with pytest.raises(ValueError, match=r"^--min-p must be a number in \(0, 1\], got 0$"):
        _Config(min_p=0)
    with pytest.raises(ValueError, match=r"^--top-p must be a number in \(0, 1\], got 1.5$"):
        _Config(top_p=1.5)


def test_including_a_field_twice_or_after_no_field_is_refused():
    with pytest.raises(TypeError, match="_Twice.seed is also a field of SamplingSettings"):

        @include_fields(SamplingSettings, group=GENERATION, after="seed")
        class _Twice:
            seed: int = 0

    with pytest.raises(TypeError, match="_Nowhere has no field 'run' to put the fields of SamplingSettings after"):

        @include_fields(SamplingSettings, group=GENERATION, after="run")
        class _Nowhere:
            x: int = 0
