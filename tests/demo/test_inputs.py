"""Checks of what users type or send to the demo: generation settings, score bounds, run names."""

from __future__ import annotations

import pytest

from gpt2_scratch.demo import UserError, parse_runs, parse_score_bounds, parse_settings
from gpt2_scratch.generate.sampling import SamplingSettings


def test_parse_settings_maps_ui_values():
    s = parse_settings("12", 0.7, 0, 1.0, "", block_size=256)
    assert s == SamplingSettings(max_new_tokens=12, temperature=0.7, top_k=None, top_p=None, seed=None)
    s = parse_settings(12.0, 0, 40.0, 0.9, " 7 ", block_size=1024)
    assert s == SamplingSettings(max_new_tokens=12, temperature=0.0, top_k=40, top_p=0.9, seed=7)
    assert parse_settings(512, 0, 0, 1, None, block_size=1024).max_new_tokens == 512
    with pytest.raises(UserError, match="from 1 to 512"):
        parse_settings(513, 0, 0, 1, None, block_size=1024)


def test_score_bounds_fit_the_score():
    """Issue 9.16: 0 to 1 for ROUGE-L, 0 to 100 for the judge, at least 0 for a length; blank is no bound."""
    assert parse_score_bounds("rouge_l", " .5 ", "") == (0.5, None)
    assert parse_score_bounds("judge_score", "50", "100") == (50.0, 100.0)
    assert parse_score_bounds("length_tokens", "", "5000") == (None, 5000.0)
    with pytest.raises(UserError, match=r"^max score must be a number from 0 to 1 for ROUGE-L F1, got '50'$"):
        parse_score_bounds("rouge_l", "", "50")
    with pytest.raises(
        UserError,
        match=r"^min score must be a number from 0 to 100 for Judge score \(0–100\), "
        r"got '\.'$",
    ):
        parse_score_bounds("judge_score", ".", None)
    with pytest.raises(
        UserError,
        match=r"^min score must be a number of at least 0 for Response length \(tokens\), "
        r"got '-3'$",
    ):
        parse_score_bounds("length_tokens", "-3", None)
    with pytest.raises(UserError, match=r"^unknown score 'bleu'; choose one of: rouge_l, judge_score"):
        parse_score_bounds("bleu", "", "")


def test_parse_runs():
    assert parse_runs(["b", "a", "b"], ["a", "b", "c"], 6) == ("b", "a")
    assert parse_runs("a", ["a"], 6) == ("a",) and parse_runs(None, ["a"], 6) == ()
    with pytest.raises(UserError, match=r"^choose at most 2 runs at once, got 3$"):
        parse_runs(["a", "b", "c"], ["a", "b", "c"], 2)
    with pytest.raises(UserError, match=r"^unknown run 'z'; choose from: a, b$"):
        parse_runs(["z"], ["a", "b"], 6)
    with pytest.raises(UserError, match=r"^unknown run 'a'; choose from: none \(no runs found\)$"):
        parse_runs(["a"], [], 6)
    with pytest.raises(UserError, match=r"^the runs must be a list of run names, got \{'a': 1\}$"):
        parse_runs({"a": 1}, ["a"], 6)
