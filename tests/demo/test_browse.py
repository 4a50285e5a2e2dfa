"""The records table, one record's view and the CSV export (gpt2_scratch/demo/browse.py): hand-computed answers."""

from __future__ import annotations

import io
import statistics
import time

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_compare import synthetic_runs
from gpt2_scratch.demo.results.browse import (
    ORDERS,
    csv_bytes,
    csv_filename,
    filter_records,
    record_html,
    record_view,
    score_choices,
    word_diff,
    write_csv,
)
from gpt2_scratch.demo.results.compare import RunResults, compare
from gpt2_scratch.tokenizer import encode
from tests.fixtures.results import XSS, entry, record

# --------------------------------------------------------------------------- records table


def test_filter_records_search_bounds_and_order(cmp):
    assert score_choices(cmp)[0] == ("a · base · ROUGE-L F1", "a · base · rouge_l")
    table = filter_records(cmp)
    assert table.columns.tolist() == ["id", "instruction", "a · base", "a · finetuned", "b · base", "b · finetuned"]
    assert table.values.tolist() == [
        [12, "Rewrite using a simile.", 0.4, 0.75, 0.3, 0.9],
        [30, "Convert 5 km to meters.", 0.25, 0.6, 0.2, 0.5],
    ]
    assert filter_records(cmp, "WHISPER")["id"].tolist() == [12]  # a response, any case
    assert filter_records(cmp, "kilometers")["id"].tolist() == [30]
    assert filter_records(cmp, "<script>")["id"].tolist() == [12]
    assert filter_records(cmp, "no such text").empty
    score = "b · finetuned · rouge_l"
    assert filter_records(cmp, "", score, 0.6, None)["id"].tolist() == [12]
    assert filter_records(cmp, "", score, "", "0.5")["id"].tolist() == [30]
    assert filter_records(cmp, "", score, order=ORDERS[2])["id"].tolist() == [30, 12]
    judge = "a · finetuned · judge_score"  # record 12 has none: last in both orders, out when bounded
    assert filter_records(cmp, "", judge, order=ORDERS[1])["id"].tolist() == [30, 12]
    assert filter_records(cmp, "", judge, order=ORDERS[2])["id"].tolist() == [30, 12]
    assert filter_records(cmp, "", judge, 0, 100)["id"].tolist() == [30]
    assert filter_records(cmp, "", judge).columns.tolist() == table.columns.tolist()
    assert filter_records(cmp, "", judge)["a · finetuned"].tolist()[1] == 70.0


@pytest.mark.parametrize(
    "args, message",
    [
        (("", "b · finetuned · rouge_l", 0.9, 0.1), r"min score \(0.9\) is above max score \(0.1\)"),
        (("", "b · finetuned · rouge_l", "abc"), "min score must be a number, got 'abc'"),
        (("", "b · finetuned · rouge_l", None, float("inf")), "max score must be a finite number"),
        (("", "nope"), "unknown score 'nope'; choose one of: a · base · rouge_l"),
        (("", None, 0.5), "choose a score to filter or sort by"),
        (("", "b · base · rouge_l", None, None, "random"), "unknown order 'random'"),
    ],
)
def test_filter_records_bad_arguments(cmp, args, message):
    with pytest.raises(ValueError, match=message):
        filter_records(cmp, *args)


def test_filter_speed_on_synthetic_records():
    runs = synthetic_runs(1100, 5)
    cmp = compare(runs)
    assert len(cmp.records) == 1100 and len(cmp.pairs) == 10
    score = "run-4 · finetuned · rouge_l"
    expected = [
        i
        for i, row in enumerate(runs[4].predictions)
        if "zebra" in row["reference"] and 0.2 <= row["finetuned"]["rouge_l"] <= 0.9
    ]
    times = []
    for query in ["zebra", "fox", "Zebra", "quick brown", "zebra", "lazy dog", "zebra"]:
        t0 = time.perf_counter()
        table = filter_records(cmp, query, score, 0.2, 0.9, ORDERS[1])
        times.append(time.perf_counter() - t0)
        if query.casefold() == "zebra":  # a real answer, not just a fast one
            assert sorted(table["id"].tolist()) == expected
            assert table["run-4 · finetuned"].is_monotonic_decreasing
    median = statistics.median(times)
    print(f"filter + sort, 1,100 records x 5 runs: median {median * 1000:.1f} ms, max {max(times) * 1000:.1f} ms")
    assert median < 0.2


# --------------------------------------------------------------------------- one record


def test_word_diff_hand_computed():
    assert word_diff("the cat sat on the mat", "the dog sat on mat") == [
        ("the", None),
        (" ", None),
        ("cat", "-"),
        (" ", None),
        ("dog", "+"),
        (" ", None),
        ("sat on", None),
        (" ", None),
        ("the", "-"),
        (" ", None),
        ("mat", None),
    ]
    assert word_diff("Red.", "red") == [("red", None)]  # case and punctuation do not count
    assert word_diff("Loud.", "") == [("Loud.", "-")]
    assert word_diff("", "") == []
    assert word_diff("a b", "a b c") == [("a b", None), (" ", None), ("c", "+")]


def test_record_view_tokens_judge_and_diff(cmp):
    view = record_view(cmp, "30")
    assert (view.id, view.reference) == (30, "5 km is 5000 meters.")
    assert view.reference_tokens == len(encode("5 km is 5000 meters.")) == 6  # 5| km| is| 5000| meters|.
    assert [(r.run, r.model) for r in view.responses] == cmp.pairs
    tuned = view.responses[1]
    # The stored length_tokens (the fixture's word count), not the text re-encoded (issue 19 item 7).
    assert tuned.response == "5 kilometers is 5000 meters." and tuned.tokens == 5
    assert tuned.diff == [
        ("5", None),
        (" ", None),
        ("km", "-"),
        (" ", None),
        ("kilometers", "+"),
        (" ", None),
        ("is 5000 meters.", None),
    ]
    assert tuned.judge_raw == "Score: 70" and tuned.scores["Judge score (0–100)"] == 70.0
    assert view.responses[0].judge_raw is None and view.responses[0].scores["Judge score (0–100)"] is None
    only = record_view(cmp, 12, [("b", "finetuned")])
    assert [r.run for r in only.responses] == ["b"]
    for bad in (7, 41, "x", None):  # 7: one run only; 41: conflicting records
        with pytest.raises(ValueError, match="no shared test record with id"):
            record_view(cmp, bad)


def test_model_output_is_escaped(cmp):
    view = record_view(cmp, 12)
    base = view.responses[0]
    assert base.response == XSS and ("<script>alert(1)</script>", "+") in base.diff  # raw text: HighlightedText escapes
    page = record_html(view)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    answer = {**entry(XSS, 0.0, 1), "judge_raw": "</pre><script>"}
    evil_record = record(1, "<i>ref</i>", "<img src=x onerror=alert(1)>", finetuned=answer)
    evil = RunResults("<b>run</b>", predictions=[evil_record])
    page = record_html(record_view(compare([evil]), 1))
    assert "<script" not in page and "<img" not in page and "<b>run" not in page and "<i>" not in page
    assert "&lt;/pre&gt;&lt;script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page


# --------------------------------------------------------------------------- CSV


def test_csv_export(cmp, tmp_path):
    table = filter_records(cmp, "cat", full=True)
    assert table["id"].tolist() == [12]
    back = pd.read_csv(io.BytesIO(csv_bytes(table)), keep_default_na=False)
    assert back.loc[0, "a · base · response"] == XSS and back.loc[0, "b · finetuned · rouge_l"] == 0.9
    assert back.loc[0, "reference"] == "The cat is as quiet as a mouse."
    assert back.loc[0, "a · finetuned · judge_score"] == ""  # no score: an empty cell
    assert csv_filename(cmp) == "predictions_a_vs_b_vs_broken.csv"
    odd = compare([RunResults("user/repo:run 1"), RunResults("../..")])
    assert csv_filename(odd) == "predictions_user-repo-run-1_vs_run.csv"
    path = tmp_path / "out" / csv_filename(cmp)
    write_csv(path, table)
    assert path.read_bytes() == csv_bytes(table) and not list(path.parent.glob(".*.tmp"))
    assert np.array_equal(pd.read_csv(path)["id"], [12])


def test_csv_cells_a_spreadsheet_would_run_are_text():
    # Model output and Hub-sourced run names must open as text, not as formulas.
    answer = entry('=HYPERLINK("http://evil.example","click")', -0.5, 7)
    evil = record(3, "@SUM(A1:A9)", "+1+1", base=answer, finetuned=entry("-2 degrees", 0.25, None))
    table = filter_records(compare([RunResults("=run", predictions=[evil])]), "", full=True)
    back = pd.read_csv(io.BytesIO(csv_bytes(table)), keep_default_na=False)
    assert back.loc[0, "'=run · base · response"] == '\'=HYPERLINK("http://evil.example","click")'
    assert back.loc[0, "'=run · finetuned · response"] == "'-2 degrees"
    assert (back.loc[0, "instruction"], back.loc[0, "reference"]) == ("'+1+1", "'@SUM(A1:A9)")
    assert back.loc[0, "'=run · base · rouge_l"] == -0.5 and back.loc[0, "id"] == 3  # numbers stay numbers
