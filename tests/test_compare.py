"""The results browser's data layer (gpt2_scratch/demo/compare.py, browse.py): hand-made runs, hand-computed answers."""

from __future__ import annotations

import io
import math
import statistics
import time

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_compare import synthetic_runs
from gpt2_scratch.demo.browse import (
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
from gpt2_scratch.demo.compare import (
    RunResults,
    compare,
    histogram_frame,
    length_frame,
    loss_frame,
    option_differences,
    points_in_range,
    scatter_frame,
    score_frame,
    score_stats,
    summary_frame,
)
from gpt2_scratch.runs import RunInfo
from gpt2_scratch.tokenizer import encode

XSS = "<script>alert(1)</script>"


def entry(response: str, rouge: float, judge: int | None, exact: int = 0) -> dict:
    raw = None if judge is None else f"Score: {judge}"
    return {
        "response": response,
        "rouge_l": rouge,
        "exact_match": exact,
        "length_tokens": len(response.split()),
        "judge_score": judge,
        "judge_raw": raw,
        "judge_error": False,
    }


def record(rid: int, reference: str, instruction: str = "", **models: dict) -> dict:
    instruction = instruction or f"Instruction {rid}"
    return {"id": rid, "instruction": instruction, "input": "", "reference": reference, **models}


# Run a: ids 7, 12, 30, 41. Run b: ids 12, 30, 41 (a different record under the same id), 50.
# Shared: 12 and 30 (41 conflicts; 7 and 50 are in one run only).
PRED_A = [
    record(7, "Red.", "Name a primary color.", base=entry("The sky is", 0.0, 10), finetuned=entry("Red.", 1.0, 95, 1)),
    record(
        12,
        "The cat is as quiet as a mouse.",
        "Rewrite using a simile.",
        base=entry(XSS, 0.4, 20),
        finetuned=entry("The cat is as quiet as a whisper.", 0.75, None),
    ),
    record(
        30,
        "5 km is 5000 meters.",
        "Convert 5 km to meters.",
        base=entry("Convert 6 km", 0.25, None),
        finetuned=entry("5 kilometers is 5000 meters.", 0.6, 70),
    ),
    record(41, "Loud.", base=entry("", 0.0, 0), finetuned=entry("Loud.", 1.0, 100, 1)),
]
PRED_B = [
    record(
        12,
        "The cat is as quiet as a mouse.",
        "Rewrite using a simile.",
        base=entry("A cat", 0.3, 30),
        finetuned=entry("The cat is quiet as a mouse.", 0.9, 90),
    ),
    record(
        30,
        "5 km is 5000 meters.",
        "Convert 5 km to meters.",
        base=entry("meters", 0.2, 5),
        finetuned=entry("5000 meters.", 0.5, 60),
    ),
    record(41, "Silent.", base=entry("", 0.0, 0), finetuned=entry("Silent.", 1.0, 100, 1)),
    record(50, "Blue.", base=entry("", 0.0, 0), finetuned=entry("Blue.", 1.0, 100, 1)),
]
SUMMARY_A = {
    "num_records": 4,
    "models": {
        "base": {
            "reference_loss": 2.5,
            "perplexity": 12.18,
            "rouge_l": 0.1625,
            "exact_match": 0.0,
            "judge_mean": 10.0,
            "judge_unparsed": 1,
            "mean_length_tokens": 2.0,
            "empty_share": 0.25,
        },
        "finetuned": {
            "reference_loss": 1.25,
            "perplexity": 3.49,
            "rouge_l": 0.8375,
            "exact_match": 0.5,
            "judge_mean": 88.33,
            "judge_unparsed": 1,
            "mean_length_tokens": 3.5,
            "empty_share": 0.0,
        },
    },
}


def info(name: str, **training) -> RunInfo:
    base = {
        "name": name,
        "base": "gpt2",
        "dataset": "data.json",
        "out_dir": "runs",
        "epochs": 2,
        "lr": 5e-5,
        "mask_prompt": False,
        "batch_size": 8,
        "resume": None,
    }
    return RunInfo(
        name=name,
        base_model="gpt2",
        prompt_style="alpaca",
        status="finished",
        dataset={"source": "data.json", "sha256": "abc", "split": {"test": 4}},
        training={**base, **training},
    )


def metrics(scale: float) -> list[dict]:
    rows = [
        {"event": "eval", "step": s, "tokens_seen": 100 * s, "train_loss": scale * (3 - s), "val_loss": scale * (4 - s)}
        for s in range(3)
    ]
    return [{"event": "train", "step": 1, "tokens_seen": 50, "loss": 9.9}, *rows, "not a dict"]


@pytest.fixture
def runs() -> list[RunResults]:
    return [
        RunResults("a", info("a"), SUMMARY_A, PRED_A, metrics(1.0)),
        RunResults(
            "b",
            info("b", lr=1e-4, mask_prompt=True),
            {"num_records": 4, "models": {"finetuned": {"rouge_l": 0.85}}},
            PRED_B,
            metrics(2.0),
        ),
        RunResults(
            "broken", info("broken"), None, [], metrics(3.0), problem="eval/predictions.jsonl: line 3 is not valid JSON"
        ),
    ]


@pytest.fixture
def cmp(runs):
    return compare(runs)


# --------------------------------------------------------------------------- shared records, message


def test_compare_matches_records_by_id_and_text(cmp):
    assert cmp.records["id"].tolist() == [12, 30]  # test-set order of the first run
    assert cmp.records["reference_words"].tolist() == [8, 5]
    assert cmp.pairs == [("a", "base"), ("a", "finetuned"), ("b", "base"), ("b", "finetuned")]
    assert cmp.message == (
        "Compared on 2 shared records of a (4), b (4). Left out: 1 id naming different records in different runs. "
        "broken: eval/predictions.jsonl: line 3 is not valid JSON"
    )
    assert cmp.scores["a", "finetuned", "judge_score"][0] != cmp.scores["a", "finetuned", "judge_score"][0]  # NaN
    assert cmp.scores["b", "finetuned", "rouge_l"].tolist() == [0.9, 0.5]


def test_compare_same_test_set_one_run_and_bad_input():
    same = compare([RunResults("x", predictions=PRED_A), RunResults("y", predictions=PRED_A)])
    assert same.message == "All 2 runs were evaluated on the same 4 test records."
    one = compare([RunResults("x", predictions=[*PRED_A, {"instruction": "no id"}, "junk"])])
    assert one.records["id"].tolist() == [7, 12, 30, 41]
    assert one.message == "4 test records of x. x: skipped 2 prediction rows without an integer id."
    with pytest.raises(ValueError, match="run labels must be unique, got x, x"):
        compare([RunResults("x"), RunResults("x")])
    nothing = compare([RunResults("z", problem="no eval/summary.json")])
    assert len(nothing.records) == 0 and nothing.pairs == [] and nothing.message == "z: no eval/summary.json"
    assert filter_records(nothing).columns.tolist() == ["id", "instruction"]
    assert scatter_frame(nothing, "rouge_l").empty and histogram_frame(nothing, "rouge_l").empty
    assert compare([]).message == "No runs chosen."


def test_missing_model_and_none_judge_scores():
    only_tuned = [{k: v for k, v in row.items() if k != "base"} for row in PRED_A]
    cmp = compare([RunResults("a", predictions=PRED_A), RunResults("t", predictions=only_tuned)])
    assert cmp.pairs == [("a", "base"), ("a", "finetuned"), ("t", "finetuned")]
    assert scatter_frame(cmp, "rouge_l")["run"].unique().tolist() == ["a"]  # t has no base model
    judge = scatter_frame(cmp, "judge_score")
    assert judge["id"].tolist() == [7, 41]  # 12 and 30 lack a judge score in one model
    with pytest.raises(ValueError, match="t has no base model results"):
        record_view(cmp, 7, [("t", "base")])


# --------------------------------------------------------------------------- summary, loss, options


def test_summary_frame_numbers_and_formatted(cmp):
    frame = summary_frame(cmp)
    assert frame[["run", "model"]].values.tolist() == [
        ["a", "base"],
        ["a", "finetuned"],
        ["b", "finetuned"],
        ["broken", "—"],
    ]
    assert frame.loc[1, "ROUGE-L F1"] == 0.8375 and frame.loc[1, "test records"] == 4
    assert math.isnan(frame.loc[2, "Perplexity"]) and math.isnan(frame.loc[3, "ROUGE-L F1"])
    shown = summary_frame(cmp, formatted=True)
    assert shown.loc[1, ["ROUGE-L F1", "Exact match", "Judge score (0–100)", "Perplexity"]].tolist() == [
        "0.838",
        "50.0%",
        "88.3",
        "3.49",
    ]
    assert shown.loc[0, "Judge replies not parsed"] == "1" and shown.loc[2, "Perplexity"] == "—"
    assert shown.loc[3, "note"] == "eval/predictions.jsonl: line 3 is not valid JSON"
    assert shown.loc[0, "note"] == ""


def test_loss_frame_overlays_runs(cmp):
    frame = loss_frame(cmp)
    assert len(frame) == 3 * 3 * 2  # three runs (a bad eval file leaves the curve), three evals, two splits
    b_val = frame[frame["series"] == "b · val"]
    assert b_val["tokens_seen"].tolist() == [0, 100, 200] and b_val["loss"].tolist() == [8.0, 6.0, 4.0]
    assert set(frame["split"]) == {"train", "val"}


def test_option_differences(cmp):
    diff = option_differences(cmp)
    assert diff.frame.columns.tolist() == ["option", "a", "b", "broken"]
    assert diff.frame.values.tolist() == [["lr", "5e-05", "0.0001", "5e-05"], ["mask_prompt", "False", "True", "False"]]
    # base_model, prompt_style, dataset.{source, sha256, split.test}, epochs, batch_size
    # (name, out_dir and resume are bookkeeping, not options)
    assert sorted(diff.same) == [
        "base_model",
        "batch_size",
        "dataset.sha256",
        "dataset.source",
        "dataset.split.test",
        "epochs",
        "prompt_style",
    ]
    assert diff.message == "2 options differ; 7 are the same in every run."
    html = diff.styler().to_html()
    marked = html.split("</style>")[0]  # the Styler's CSS names the marked cells
    assert "#T_" in marked and "background-color: #fde68a" in marked
    assert sorted(c.split("_", 2)[-1] for c in marked.replace(",", " ").split() if c.startswith("#T_")) == [
        "row0_col2",
        "row1_col2",
    ]  # b's lr and b's mask_prompt differ from a's; broken's match a's


def test_option_differences_missing_key_and_info():
    old = RunInfo(name="old", base_model="gpt2", prompt_style="alpaca", training={"epochs": 2})
    new = RunInfo(name="new", base_model="gpt2", prompt_style="alpaca", training={"epochs": 2, "warmup_steps": 10})
    diff = option_differences(compare([RunResults("old", old), RunResults("new", new), RunResults("none")]))
    assert diff.frame.values.tolist() == [["warmup_steps", "—", "10"]]
    assert diff.message == "1 options differ; 3 are the same in every run. No run.json for none."


# --------------------------------------------------------------------------- plot frames


def test_score_frame_leaves_out_missing_scores(cmp):
    frame = score_frame(cmp, ["judge_score"])
    assert frame.columns.tolist() == ["run", "model", "series", "metric", "value", "id"]
    got = {(r.series, r.id): r.value for r in frame.itertuples()}
    assert got == {
        ("a · base", 12): 20.0,
        ("a · finetuned", 30): 70.0,
        ("b · base", 12): 30.0,
        ("b · base", 30): 5.0,
        ("b · finetuned", 12): 90.0,
        ("b · finetuned", 30): 60.0,
    }
    with pytest.raises(ValueError, match="unknown score 'bleu'"):
        score_frame(cmp, ["bleu"])


def test_histogram_and_stats(cmp):
    hist = histogram_frame(cmp, "rouge_l", bins=4)
    a_tuned = hist[hist["series"] == "a · finetuned"]
    assert a_tuned["bin"].tolist() == ["0–0.25", "0.25–0.5", "0.5–0.75", "0.75–1"]
    assert a_tuned["count"].tolist() == [0, 0, 1, 1]  # 0.6, and 0.75 (a lower edge belongs to its bin)
    b_tuned = hist[hist["series"] == "b · finetuned"]
    assert b_tuned["count"].tolist() == [0, 0, 1, 1] and b_tuned["share"].tolist() == [0, 0, 0.5, 0.5]
    lengths = histogram_frame(cmp, "length_tokens", bins=2)  # the data's range: 1 ("meters") to 8 words
    assert lengths["bin"].unique().tolist() == ["1–4.5", "4.5–8"]
    assert lengths[lengths["series"] == "a · finetuned"]["count"].tolist() == [0, 2]  # 8 and 5 words
    stats = score_stats(cmp, "judge_score").set_index("series")
    assert stats.loc["a · base", "n"] == 1 and stats.loc["b · base", "mean"] == 17.5
    assert stats.loc["b · base", ["min", "median", "max"]].tolist() == [5.0, 17.5, 30.0]


def test_scatter_length_and_point_selection(cmp):
    scatter = scatter_frame(cmp, "rouge_l")
    assert scatter[["id", "run", "base", "finetuned"]].values.tolist() == [
        [12, "a", 0.4, 0.75],
        [30, "a", 0.25, 0.6],
        [12, "b", 0.3, 0.9],
        [30, "b", 0.2, 0.5],
    ]
    assert scatter["instruction"].tolist()[0] == "Rewrite using a simile."
    length = length_frame(cmp, "judge_score")
    assert length[["id", "series", "reference_words", "score"]].values.tolist()[:2] == [
        [12, "a · base", 8, 20.0],
        [30, "a · finetuned", 5, 70.0],
    ]
    picked = points_in_range(scatter, "base", 0.29, 0.41)  # the brush's x range; nearest the middle (0.35) first
    assert picked["id"].tolist() == [12, 12] and picked["base"].tolist() == [0.3, 0.4]
    assert points_in_range(scatter, "base", 0.9, 0.8).empty


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
