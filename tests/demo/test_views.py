"""The demo's pure views: eval files' structure, the results browser's texts, markers (no Gradio)."""

from __future__ import annotations

import json

import pytest

from gpt2_scratch.demo import DemoApp, header_markdown, load_run_results, visible_response
from gpt2_scratch.demo.discovery import RunSource
from gpt2_scratch.demo.results.browse import record_view
from gpt2_scratch.demo.results.compare import RunResults, compare
from gpt2_scratch.demo.results.views import (
    bin_colors,
    diff_spans,
    judge_label,
    plot_metrics,
    record_choices,
    response_label,
    response_slot,
    run_color_maps,
)
from gpt2_scratch.eval.summary import EvalResults
from gpt2_scratch.files import read_jsonl


def test_eval_results_unreadable_or_missing(tmp_path, monkeypatch, make_run):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "r")
    run.predictions.write_text("{not json\n")
    results = EvalResults.load(run, "unused")
    assert results.summary is None and "unreadable" in results.problem
    assert "python evaluate.py --run r" in results.problem
    run.summary.unlink()
    assert EvalResults.load(run, "").problem == (
        "No evaluation results for this run yet (no `r/eval/summary.json`). "
        "Create them with `python evaluate.py --run r`."
    )


# --------------------------------------------------------------------------- eval files of the wrong structure (9.7)


def _rewrite_predictions(run, edit) -> None:
    rows = read_jsonl(run.predictions)
    run.predictions.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))


def _rewrite_summary(run, edit) -> None:
    run.summary.write_text(json.dumps(edit(json.loads(run.summary.read_text()))))


@pytest.mark.parametrize(
    "predictions, summary, message",
    [
        (
            lambda rows: [rows[0], [1, 2], *rows[1:]],
            None,
            "eval/predictions.jsonl, line 2: the record must be an object, got an array",
        ),
        (
            lambda rows: [rows[0], rows[1], {**rows[2], "base": "oops"}],
            None,
            'eval/predictions.jsonl, line 3: "base" must be an object, got a string',
        ),
        (
            lambda rows: [{**rows[0], "id": "7"}],
            None,
            'eval/predictions.jsonl, line 1: "id" must be an integer, got a string',
        ),
        (
            lambda rows: [{**rows[0], "finetuned": {**rows[0]["finetuned"], "rouge_l": "high"}}],
            None,
            'eval/predictions.jsonl, line 1: "finetuned"."rouge_l" must be a number or null, got a string',
        ),
        (None, lambda s: [], "eval/summary.json: the file must be an object, got an array"),
        (
            None,
            lambda s: {**s, "models": {"base": None}},
            'eval/summary.json: "models"."base" must be an object, got null',
        ),
        (None, lambda s: {k: v for k, v in s.items() if k != "models"}, 'eval/summary.json: "models" is missing'),
        (None, lambda s: {**s, "judge": {"url": "x"}}, 'eval/summary.json: "judge"."model" is missing'),
        (None, lambda s: {**s, "generation": 3}, 'eval/summary.json: "generation" must be an object, got a number'),
    ],
)
def test_eval_files_of_the_wrong_structure_name_the_file_and_line(
    tmp_path, monkeypatch, make_run, predictions, summary, message, greedy
):
    """Issue 9.7: the app starts, the eval tab names the file and line, generation still works."""
    from gpt2_scratch.demo import build_demo

    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "r")
    if predictions:
        _rewrite_predictions(run, predictions)
    if summary:
        _rewrite_summary(run, summary)
    app = DemoApp.from_run(run)  # used to raise AttributeError
    problem = (
        f"The evaluation results in `r/eval` are unreadable (r/{message}). "
        "Recreate them with `python evaluate.py --run r`."
    )
    assert EvalResults.load(run, "").problem == problem
    build_demo(app)
    assert app.browser.choose_runs(["r"], None, None, None)[0] == f"r: {problem}"
    assert app.browser.filter_predictions("", "", "", "", "test-set order")[1] == "0 of 0 test records"
    *_, (text, _) = app.generate_base("Hello", 8, 0.0, 0, 1.0, None)
    assert text == greedy("random:tiny", "Hello", 8)


def test_blank_lines_do_not_shift_the_line_named(tmp_path, monkeypatch, make_run):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "r")
    lines = run.predictions.read_text().splitlines()
    run.predictions.write_text("\n".join([lines[0], "", "[1, 2]", *lines[1:]]) + "\n")
    assert "eval/predictions.jsonl, line 3: the record must be an object" in EvalResults.load(run, "").problem


def test_a_model_not_evaluated_is_not_an_error(tmp_path, make_run):
    run = make_run(tmp_path / "r")
    _rewrite_predictions(run, lambda rows: [{k: v for k, v in r.items() if k != "base"} for r in rows])
    _rewrite_summary(run, lambda s: {**s, "models": {"finetuned": s["models"]["finetuned"]}, "judge": None})
    results = EvalResults.load(run, "")
    assert results.problem is None and len(results.predictions) == 4
    loaded = load_run_results(RunSource("r", run))
    assert loaded.problem is None and loaded.info.name == "r" and len(loaded.metrics) == 6
    assert compare([loaded]).pairs == [("r", "finetuned")]


# --------------------------------------------------------------------------- small texts


def test_whitespace_only_text_gets_a_visible_marker():
    """Issue 9.17."""
    assert visible_response("\n" * 128, 128) == "(only whitespace: 128 tokens, 128 newlines)"
    assert visible_response("\n\n", 1) == "(only whitespace: 1 token, 2 newlines)"
    assert visible_response("  ") == "(only whitespace: 2 spaces)"
    assert visible_response(" \n\t", 3) == "(only whitespace: 3 tokens, 3 whitespace characters)"
    assert visible_response("") == "" and visible_response(" a\n") == " a\n"


def test_header_names_the_checkpoint_and_why():
    header = header_markdown("r6", "gpt2", "r6/best", "alpaca", "Serving `best/`, not `final/`: broken.")
    assert "Run `r6` · base model `gpt2` · finetuned checkpoint `r6/best` (prompt style `alpaca`)." in header
    assert header.endswith("\n\n⚠️ Serving `best/`, not `final/`: broken.")
    assert "finetuned checkpoint none." in header_markdown("r7", "gpt2", None, "alpaca")


def test_with_no_run_the_header_says_so_and_how_to_make_one():
    header = header_markdown(None, "gpt2", None, "alpaca")
    assert "`none`" not in header and "Run `" not in header
    assert header.splitlines()[1] == (
        "**No run to serve yet.** Train one with `python finetune.py` (then restart the app), or pick one with "
        "`python app.py --run runs/<name>`. Meanwhile the Base model tab serves `gpt2`. Models load on the first "
        "request, so the first answer takes a few seconds longer."
    )


# --------------------------------------------------------------------------- the results browser's texts


def test_load_run_results_of_a_source_without_a_run():
    loaded = load_run_results(RunSource("me/gone", None, "Could not download the run."))
    assert (loaded.label, loaded.problem, loaded.predictions, loaded.info) == (
        "me/gone",
        "Could not download the run.",
        [],
        None,
    )


def test_record_texts(finished_run):
    cmp = compare([load_run_results(RunSource("run1", finished_run))])
    assert plot_metrics(cmp) == [
        ("ROUGE-L F1", "rouge_l"),
        ("Judge score (0–100)", "judge_score"),
        ("Response length (tokens)", "length_tokens"),
    ]
    assert record_choices(cmp)[1] == ("12 · Rewrite the sentence using a simile.", 12)
    view = record_view(cmp, 12)
    base, tuned = view.responses
    assert response_label(tuned) == (
        "run1 · finetuned · 8 tokens · ROUGE-L F1 0.75 · Judge score (0–100) 80 · Exact match 0"  # stored count
    )
    assert diff_spans(tuned)[-3:] == [
        ("mouse.", "missing from the response"),
        (" ", None),
        ("whisper.", "not in the reference"),
    ]
    assert judge_label(base) == "Judge's reply to run1 · base"
    assert (response_slot(base, ["run1"]), response_slot(tuned, ["x", "run1"])) == (0, 3)


def test_whitespace_and_judge_failure_labels():
    row = {
        "id": 1,
        "instruction": "i",
        "input": "",
        "reference": "ref",
        "finetuned": {"response": "\n\n", "rouge_l": 0.0, "judge_raw": "timeout", "judge_error": True},
    }
    [answer] = record_view(compare([RunResults("x", predictions=[row])]), 1).responses
    assert response_label(answer) == (
        "x · finetuned · 1 token · ROUGE-L F1 0 · Judge score (0–100) — · "
        "Exact match — · (only whitespace: 1 token, 2 newlines)"
    )
    assert judge_label(answer) == "Judge's reply to x · finetuned (the judge call failed)"


def test_plot_colors():
    colors = bin_colors(["0–0.5", "0.5–1"], "rouge_l")
    assert colors == {"0–0.5": "#dc2626", "0.5–1": "#16a34a"}  # the ends of the red-amber-green ramp
    assert bin_colors(["a", "b", "c"], "rouge_l")["b"] == "#f59e0b"
    assert bin_colors(["only"], "length_tokens") == {"only": "#bfdbfe"}
    maps = run_color_maps(["a", "b"])
    assert maps["run"] == {"a": "#1f77b4", "b": "#ff7f0e"}
    assert maps["model"]["b · base"] == "#ffbb78" and maps["model"]["b · finetuned"] == "#ff7f0e"
    assert maps["loss"]["a · val"] == "#aec7e8" and maps["loss"]["a · train"] == "#1f77b4"
