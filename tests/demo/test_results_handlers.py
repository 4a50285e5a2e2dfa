"""The results browser's handlers (``ResultsBrowser``), called directly on tiny runs: no server, no browser.

Three runs under ``runs/``: ``a`` is the demo conftest's run (records 7, 12, 30, 41);
``b`` was evaluated on another test set (7, 12, 30 and 99) with other training
options and a response holding markup; ``broken`` has a malformed
predictions.jsonl. Expected values are worked out by hand from those files.
"""

from __future__ import annotations

import copy
import json
import shutil
import statistics
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from benchmarks.bench_compare import synthetic_runs
from gpt2_scratch.demo import MAX_RUNS, ResultsBrowser
from gpt2_scratch.demo.discovery import RunSource, find_runs, include_run
from gpt2_scratch.demo.results import handlers as results_module
from gpt2_scratch.files import atomic_write_json, atomic_write_jsonl
from gpt2_scratch.runs import RunInfo, RunPaths
from gpt2_scratch.tokenizer import encode
from tests.fixtures.runs import RUN_PREDICTIONS

# Handlers show problems as gr.Warning toasts; outside a request Gradio turns them into UserWarnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

XSS = "<script>alert('xss')</script> <img src=x onerror=alert(2)> The cat"

RECORD_OUTPUTS = 4 + MAX_RUNS + 2 * MAX_RUNS * 2  # title, instruction, input, reference, rows, (diff, judge) slots


def _predictions_b() -> list[dict]:
    rows = copy.deepcopy(RUN_PREDICTIONS[:3])
    rows[0]["finetuned"]["rouge_l"] = 0.5
    rows[1]["base"]["response"] = XSS
    rows[1]["finetuned"] = {**rows[1]["finetuned"], "rouge_l": 0.9, "judge_score": 85, "judge_raw": "Score: 85"}
    rows[2]["finetuned"]["rouge_l"] = 0.2
    rows.append(
        {
            "id": 99,
            "instruction": "Only in b.",
            "input": "",
            "reference": "Yes.",
            "base": {"response": "No", "rouge_l": 0.0},
            "finetuned": {"response": "Yes.", "rouge_l": 1.0},
        }
    )
    return rows


@pytest.fixture(scope="module")
def runs_dir(make_run, tmp_path_factory):
    """<tmp>/runs with runs a, b and broken (see the module docstring)."""
    root = tmp_path_factory.mktemp("results")
    a, b, broken = (make_run(root / "runs" / name) for name in ("a", "b", "broken"))
    for run, lr, mask in ((a, 5e-5, True), (b, 1e-4, False), (broken, 5e-5, True)):
        run.write_info(
            RunInfo(
                name=run.root.name,
                base_model="random:tiny",
                prompt_style="alpaca",
                status="finished",
                training={"lr": lr, "mask_prompt": mask, "epochs": 2},
            )
        )
    atomic_write_jsonl(b.predictions, _predictions_b())
    atomic_write_jsonl(
        b.metrics, [{"event": "eval", "step": 1, "tokens_seen": 500, "train_loss": 3.0, "val_loss": 3.5}]
    )
    lines = broken.predictions.read_text().splitlines()
    broken.predictions.write_text("\n".join([lines[0], "[1, 2]", *lines[1:]]) + "\n")
    return root


@pytest.fixture
def browser(runs_dir, monkeypatch) -> ResultsBrowser:
    monkeypatch.chdir(runs_dir)  # paths in messages are relative to the working directory
    return ResultsBrowser(find_runs("runs"))


def _value(component) -> dict:
    return component.value


# --------------------------------------------------------------------------- the chosen runs


def test_overview_of_runs_on_different_test_sets_and_a_broken_one(browser):
    assert sorted(browser.offered()) == ["a", "b", "broken"]
    message, summary, loss, options_message, options, metric, score, record = browser.choose_runs(
        ["a", "b", "broken"], "judge_score", None, None
    )
    problem = (
        "The evaluation results in `runs/broken/eval` are unreadable (runs/broken/eval/predictions.jsonl, "
        "line 2: the record must be an object, got an array). Recreate them with "
        "`python evaluate.py --run runs/broken`."
    )
    assert message == f"Compared on 3 shared records of a (4), b (4). broken: {problem}"
    # One row per run and model; the broken run's problem in its row, naming the file.
    assert summary[["run", "model", "ROUGE-L F1"]].values.tolist() == [
        ["a", "base", "0.163"],
        ["a", "finetuned", "0.838"],
        ["b", "base", "0.163"],
        ["b", "finetuned", "0.838"],
        ["broken", "—", "—"],
    ]
    assert summary["note"].tolist() == ["", "", "", "", problem]
    # Loss curves of all three (a bad eval file leaves the curve): 6 + 1 + 6 evaluations, train and val each.
    # A figure with one panel (all three are SFT runs); every curve in the legend, in each run's hue.
    [panel] = loss.axes
    curves = {line.get_label(): line for line in panel.get_lines()}
    assert sum(len(line.get_ydata()) for line in curves.values()) == 26
    assert list(curves["b · val"].get_ydata()) == [3.5] and panel.get_ylabel() == "loss (cross-entropy)"
    assert curves["b · train"].get_color() == "#ff7f0e" and curves["b · val"].get_color() == "#ffbb78"
    assert [t.get_text() for t in loss.legends[0].get_texts()] == [
        f"{run} · {split}" for run in ("a", "b", "broken") for split in ("train", "val")
    ]
    assert options_message == "2 options differ; 3 are the same in every run." and options.visible
    assert metric.choices == [
        ("ROUGE-L F1", "rouge_l"),
        ("Judge score (0–100)", "judge_score"),
        ("Response length (tokens)", "length_tokens"),
    ]
    assert metric.value == "judge_score"  # kept: the runs still have it
    assert (
        score.value == "a · base · rouge_l"
        and ("b · finetuned · Judge score (0–100)", "b · finetuned · judge_score") in score.choices
    )
    assert record.choices == [
        ("7 · Name a primary color.", 7),
        ("12 · Rewrite the sentence using a simile.", 12),
        ("30 · Convert 5 km to meters.", 30),
    ]
    assert record.value == 7
    assert browser.choose_runs(["a", "b"], "judge_score", None, 30)[-1].value == 30  # a shared record stays open
    assert browser.choose_runs(["a", "b"], None, None, 41)[-1].value == 7  # 41 is not shared


def test_one_run_and_no_run(browser):
    message, *_, options_message, options, _, _, record = browser.choose_runs(["a"], "rouge_l", None, None)
    assert message == "4 test records of a." and not options.visible
    assert options_message == "One run: its 5 options are not compared."
    assert [v for _, v in record.choices] == [7, 12, 30, 41]
    message, summary, *_ = browser.choose_runs([], "rouge_l", None, None)
    assert message == "No runs chosen." and summary.empty


@pytest.mark.parametrize(
    "runs, message",
    [
        (["a", "nope"], "unknown run 'nope'; choose from: "),
        ("a,b", "unknown run 'a,b'"),
        ([1], "the runs must be a list of run names, got [1]"),
    ],
)
def test_bad_run_choices_are_one_message(browser, runs, message):
    assert browser.choose_runs(runs, None, None, None)[0].startswith("⚠️ " + message)


def test_refresh_lists_new_and_removed_runs_and_reads_results_again(make_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_run(tmp_path / "runs" / "a")
    browser = ResultsBrowser(find_runs("runs"), find=lambda: find_runs("runs"))
    assert browser.can_refresh and browser.offered() == ["a"]
    rouge = browser.choose_runs(["a"], None, None, None)[1]["ROUGE-L F1"].tolist()
    assert rouge == ["0.163", "0.838"]

    # While the app runs: run c finishes, and a is evaluated again with other scores.
    make_run(tmp_path / "runs" / "c")
    run_a = RunPaths(tmp_path / "runs" / "a")
    summary = json.loads(run_a.summary.read_text())
    summary["models"]["finetuned"]["rouge_l"] = 0.5
    atomic_write_json(run_a.summary, summary)

    monkeypatch.setattr(results_module, "REFRESH_MIN_S", 3600.0)  # listed a moment ago: not again yet
    none, note, column, runs = browser.refresh(["a"])
    assert runs["choices"] == ["a"] and "value" not in runs  # the selection unchanged: not sent (it may be stale)
    monkeypatch.setattr(results_module, "REFRESH_MIN_S", 0.0)
    none, note, column, runs = browser.refresh(["a", "junk", 3])
    assert sorted(runs["choices"]) == ["a", "c"] and runs["value"] == ["a"]  # what is still offered stays chosen
    assert not none["visible"] and column["visible"] and not note["visible"]
    rouge = browser.choose_runs(["a"], None, None, None)[1]["ROUGE-L F1"].tolist()
    assert rouge == ["0.163", "0.500"]  # read again, not the cached comparison

    # Every run removed: the no-runs note shows and the browser hides.
    for name in ("a", "c"):
        shutil.rmtree(tmp_path / "runs" / name)
    none, note, column, runs = browser.refresh(["c"])
    assert none["visible"] and not column["visible"] and runs["choices"] == [] and runs["value"] == []


def test_refresh_that_fails_is_a_message_and_without_a_finder_changes_nothing(browser, monkeypatch):
    assert not browser.can_refresh and not browser.refresh_sources(force=True)
    assert browser.refresh("not a list")[3]["value"] == browser.default_selection() == browser.offered()[:1]

    def unreachable():
        raise OSError("disk gone")

    failing = ResultsBrowser(browser.sources, find=unreachable)
    monkeypatch.setattr(results_module, "REFRESH_MIN_S", 0.0)
    _, note, _, runs = failing.refresh(["a"])
    assert note["value"] == "⚠️ Listing the runs failed (OSError: disk gone)." and note["visible"]
    assert runs == gr.skip() and sorted(failing.offered()) == ["a", "b", "broken"]  # the runs listed before stay


def test_comparisons_are_built_once_per_selection(browser, monkeypatch):
    built = []
    real = results_module.compare
    monkeypatch.setattr(results_module, "compare", lambda runs: built.append([r.label for r in runs]) or real(runs))
    first = browser.comparison(["a", "b"])
    assert browser.comparison(["a", "b"]) is first and browser.comparison(("a", "b", "a")) is first
    assert browser.comparison(["b", "a"]) is not first  # the order chosen is the order shown
    assert built == [["a", "b"], ["b", "a"]]
    monkeypatch.setattr(results_module, "MAX_CACHED", 1)
    browser.comparison(["a"])
    assert browser.comparison(["a", "b"]) is not first  # evicted, built again
    assert len(browser._comparisons) == 1


# --------------------------------------------------------------------------- plots


def test_plots_of_a_score(browser):
    hist, scatter, length = browser.plots(["a", "b"], "judge_score")
    # One stacked bar per run and model, a segment per bin (every bin labelled in the legend, the last one too).
    [ax] = hist.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a · base", "a · finetuned", "b · base", "b · finetuned"]
    bins = {c.get_label(): c for c in ax.containers}
    assert list(bins) == [f"{10 * k}–{10 * k + 10}" for k in range(10)]
    b_tuned = {label: bars[3].get_height() for label, bars in bins.items()}  # 95, 85, 70 of its 3 scored records
    assert b_tuned["90–100"] == b_tuned["80–90"] == b_tuned["70–80"] == pytest.approx(1 / 3)
    assert sum(b_tuned.values()) == pytest.approx(1.0)
    assert to_hex(bins["0–10"][0].get_facecolor()) == "#dc2626"
    assert [t.get_text() for t in hist.legends[0].get_texts()] == list(bins)[::-1]  # highest on top, as the bars
    points = pd.DataFrame(_value(scatter)["data"], columns=_value(scatter)["columns"])
    assert points[["id", "run", "base", "finetuned"]].values.tolist() == [
        [7, "a", 10, 95],
        [12, "a", 20, 80],
        [7, "b", 10, 95],
        [12, "b", 20, 85],
    ]  # 30: no base judge score
    assert scatter.x_lim == [-3.0, 103.0] and scatter.color_map == {"a": "#1f77b4", "b": "#ff7f0e"}
    by_length = pd.DataFrame(_value(length)["data"], columns=_value(length)["columns"])
    assert sorted(set(by_length["reference_words"])) == [1, 5, 8] and length.x_lim == [0, 1.05 * 8 + 1]
    captions = browser.redraw(["a", "b"], "judge_score")
    assert len(captions) == 2
    assert captions[1].caption.startswith("Runs: a, b · 3 shared records · Judge score (0–100) · drag across")
    assert browser.plots(["a"], "bleu") == (gr.skip(), gr.skip(), gr.skip())


# --------------------------------------------------------------------------- the table and its CSV


def test_filter_search_bounds_and_order(browser):
    runs = ["a", "b"]
    table, count = browser.filter_predictions("", "b · finetuned · rouge_l", "", "", "score: high to low", runs)
    assert table.columns.tolist() == ["id", "instruction", "a · base", "a · finetuned", "b · base", "b · finetuned"]
    assert table["id"].tolist() == [12, 7, 30] and count == "3 of 3 test records"
    assert table.loc[0, "b · finetuned"] == 0.9
    assert browser.filter_predictions("WHISPER", "", "", "", "test-set order", runs)[0]["id"].tolist() == [12]
    assert browser.filter_predictions("<script>", None, "", "", "test-set order", runs)[0]["id"].tolist() == [12]
    table, count = browser.filter_predictions("", "b · finetuned · rouge_l", "0.3", "0.6", "test-set order", runs)
    assert table["id"].tolist() == [7] and count == "1 of 3 test records"
    # The single-run form older clients send: that score of the first chosen run with the model.
    table, _ = browser.filter_predictions("", "finetuned.rouge_l", "", "", "score: low to high", ["b", "a"])
    assert table["id"].tolist() == [30, 7, 12]  # b's finetuned ROUGE-L: 0.2, 0.5, 0.9
    # Without runs (older clients): the run the app serves, first among the sources.
    served = ResultsBrowser(include_run(find_runs("runs"), RunPaths(Path("runs/a"))))
    assert served.default_selection() == ["a"]
    table, count = served.filter_predictions("quiet", "finetuned.rouge_l", "", "", "score: high to low")
    assert table["id"].tolist() == [41, 12] and count == "2 of 4 test records"
    assert table.columns.tolist()[2:] == ["a · base", "a · finetuned"]


@pytest.mark.parametrize(
    "args, message",
    [
        (("", "a · finetuned · rouge_l", "high", ""), "min score must be a number from 0 to 1 for ROUGE-L F1, got 'hi"),
        (("", "a · base · judge_score", "", "150"), "max score must be a number from 0 to 100 for Judge score (0–100)"),
        (("", "a · base · length_tokens", "-1", ""), "min score must be a number of at least 0 for Response length"),
        (("", "a · finetuned · rouge_l", "0.9", "0.1"), "min score (0.9) is above max score (0.1)"),
        (("", "finetuned.secret", "", ""), "unknown score 'finetuned.secret'; choose one of: a · base · rouge_l"),
        (("", "", "0.5", ""), "choose a score to filter or sort by"),
        (("x" * 20_001, "", "", ""), "the search text is 20,001 characters long"),
    ],
)
def test_bad_filters_give_a_message(browser, args, message):
    table, count = browser.filter_predictions(*args, "test-set order", ["a", "b"])
    assert table.empty and count.startswith("⚠️ " + message)
    assert browser.filter_predictions("", "", "", "", "random", ["a"])[1].startswith("⚠️ unknown order 'random'")


def test_export_csv_of_the_filtered_table(browser, monkeypatch):
    file = browser.export_csv("cat", "", "", "", "test-set order", ["a", "b"])
    assert file.visible and file.label == "CSV: 1 record"
    back = pd.read_csv(file.value["path"], keep_default_na=False)
    assert back["id"].tolist() == [12] and back.loc[0, "b · base · response"] == XSS
    assert file.value["orig_name"] == "predictions_a_vs_b.csv"
    monkeypatch.setattr(results_module, "CSV_KEPT", 2)
    for _ in range(3):
        browser.export_csv("", "", "", "", "test-set order", ["a"])
    assert len(list(browser._csv_root.iterdir())) == 2  # older exports are removed
    failed = browser.export_csv("", "", "x", "", "test-set order", ["a"])
    assert failed.visible is False and failed.value is None  # and a toast says "choose a score to filter or sort by"


def test_filter_speed_at_the_handler(tmp_path):
    """Filtering and sorting 1,100 records x 5 runs answers in < 200 ms (the comparison built once, beforehand)."""
    sources = []
    for synthetic in synthetic_runs(1100, 5):
        run = RunPaths(tmp_path / synthetic.label)
        atomic_write_jsonl(run.predictions, synthetic.predictions)
        atomic_write_json(run.summary, {"models": {"base": {}, "finetuned": {}}})
        sources.append(RunSource(synthetic.label, run))
    browser = ResultsBrowser(sources)
    runs = [s.label for s in sources]
    browser.comparison(runs)  # built once per selection: when the runs are chosen
    expected = sorted(
        i
        for i, row in enumerate(synthetic_runs(1100, 5)[4].predictions)
        if "zebra" in row["reference"] and 0.2 <= row["finetuned"]["rouge_l"] <= 0.9
    )
    times = []
    for query in ["zebra", "fox", "Zebra", "quick brown", "zebra", "lazy dog", "zebra"]:
        t0 = time.perf_counter()
        table, count = browser.filter_predictions(
            query, "run-4 · finetuned · rouge_l", "0.2", "0.9", "score: high to low", runs
        )
        gr.Dataframe().postprocess(table)  # what Gradio does with it before sending
        times.append(time.perf_counter() - t0)
        if query.casefold() == "zebra":
            assert sorted(table["id"].tolist()) == expected and count == f"{len(expected)} of 1100 test records"
            assert table["run-4 · finetuned"].is_monotonic_decreasing
    median = statistics.median(times)
    print(f"handler filter + sort, 1,100 records x 5 runs: median {median * 1000:.1f} ms")
    assert median < 0.2


# --------------------------------------------------------------------------- one record


def test_record_shows_every_response_against_the_reference(browser):
    title, instruction, input_, reference, *rest = browser.show_record(["a", "b"], 12)
    rows, slots = rest[:MAX_RUNS], rest[MAX_RUNS:]
    assert title == "**Test record 12** · 4 responses · reference 9 tokens"
    assert (instruction, input_) == ("Rewrite the sentence using a simile.", "The cat is quiet.")
    assert reference.value == "The cat is as quiet as a mouse."
    assert reference.label == f"Reference ({len(encode('The cat is as quiet as a mouse.'))} tokens)"
    assert [r.visible for r in rows] == [True, True] + [False] * (MAX_RUNS - 2)
    a_tuned, a_judge = slots[2], slots[3]  # row a: base (slot 0), finetuned (slot 1)
    # The stored length_tokens of predictions.jsonl (the fixture's: its word count), not the text re-encoded.
    assert a_tuned.label == "a · finetuned · 8 tokens · ROUGE-L F1 0.75 · Judge score (0–100) 80 · Exact match 0"
    assert [(t["token"], t["class_or_confidence"]) for t in a_tuned.value] == [
        ("The cat is as quiet as a", None),
        (" ", None),
        ("mouse.", "missing from the response"),
        (" ", None),
        ("whisper.", "not in the reference"),
    ]
    assert a_judge.visible and a_judge.value == "80" and a_judge.label == "Judge's reply to a · finetuned"
    b_base = slots[4]
    added = " ".join(t["token"] for t in b_base.value if t["class_or_confidence"] == "not in the reference")
    assert added == "<script>alert('xss')</script> <img src=x onerror=alert(2)>"  # as text: HighlightedText escapes
    assert b_base.label.startswith("b · base · 4 tokens")  # the fixture keeps the replaced response's count
    assert [s.visible for s in slots[8:]] == [False] * (len(slots) - 8)
    assert len((title, instruction, input_, reference, *rest)) == RECORD_OUTPUTS


def test_record_not_shared_or_none(browser):
    title, *rest = browser.show_record(["a", "b"], 41)
    assert title == "⚠️ no shared test record with id 41" and rest == [gr.skip()] * (RECORD_OUTPUTS - 1)
    title, *_ = browser.show_record(["a", "b"], None)
    assert title.startswith("Choose a record")
    empty = browser.show_record(["a"], 41)[4 + MAX_RUNS]  # a's base: an empty response
    assert empty.label == (
        "a · base · 0 tokens · ROUGE-L F1 0 · Judge score (0–100) 0 · Exact match 0 · empty response"
    )


def test_selecting_a_table_row_opens_its_record(browser):
    evt = gr.SelectData(None, {"index": [1, 1], "value": "x", "row_value": [30, "Convert 5 km to meters."]})
    record, selection, title, *_ = browser.select_row(["a", "b"], evt)
    assert record.value == 30 and selection == "" and title.startswith("**Test record 30**")


def test_dragging_across_points_opens_the_record_nearest_the_middle(browser):
    # Base ROUGE-L of the shared records: 7: 0.0 (a and b), 12: 0.4, 30: 0.25. A drag from 0.2 to 0.35.
    evt = gr.SelectData(None, {"index": [0.2, 0.35], "value": [0.2, 0.35], "selected": True})
    record, message, title, *_ = browser.select_scatter(["a", "b"], "rouge_l", evt)
    assert record.value == 30 and title.startswith("**Test record 30**")
    assert message == (
        "1 record with a base ROUGE-L F1 from 0.2 to 0.35. Showing record 30, the nearest the middle of the range."
    )
    evt = gr.SelectData(None, {"index": [0.41, -0.01], "value": None})  # dragged right to left; middle 0.2
    record, message, *_ = browser.select_scatter(["a", "b"], "rouge_l", evt)
    assert record.value == 30 and message.endswith("The others: 7, 12.")  # 0.25, then 0.0 and 0.4 (0.2 away)
    # The length plot: references of 5 words (record 30) and 8 words (record 12).
    evt = gr.SelectData(None, {"index": [4.5, 9], "value": None})
    record, message, *_ = browser.select_length(["a", "b"], "rouge_l", evt)
    assert record.value == 12 and message.startswith("2 records with a reference of 4.5 to 9 words.")
    evt = gr.SelectData(None, {"index": [0.5, 0.6], "value": None})
    record, message, *rest = browser.select_scatter(["a", "b"], "rouge_l", evt)
    assert record == gr.skip() and message == "No point has a base ROUGE-L F1 from 0.5 to 0.6: drag across a point."
    evt = gr.SelectData(None, {"index": "all", "value": None})
    assert browser.select_scatter(["a"], "rouge_l", evt)[1].startswith("⚠️ a selection is a range of two numbers")


# --------------------------------------------------------------------------- runs that could not be had


def test_a_hub_repo_that_failed_is_said_and_not_offered(runs_dir, monkeypatch):
    monkeypatch.chdir(runs_dir)
    sources = [RunSource("me/a", RunPaths(runs_dir / "runs" / "a")), RunSource("me/gone", None, "Could not download.")]
    browser = ResultsBrowser(sources)
    assert browser.offered() == ["me/a"] and browser.default_selection() == ["me/a"]
    assert browser.sources_message() == "⚠️ Could not download."
    assert browser.choose_runs(["me/gone"], None, None, None)[0].startswith("⚠️ unknown run 'me/gone'")
    assert (
        json.loads(json.dumps(browser.filter_predictions("", "", "", "", "test-set order")[1])) == "4 of 4 test records"
    )
