"""The demo's pure views and input checks: summary, loss curve, eval files' structure, markers (no Gradio)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from gpt2_scratch.demo import (
    DemoApp,
    EvalResults,
    UserError,
    header_markdown,
    loss_curve,
    parse_score_bounds,
    parse_settings,
    summary_markdown,
    visible_response,
)
from gpt2_scratch.files import read_jsonl
from gpt2_scratch.generation import SamplingSettings


def test_parse_settings_maps_ui_values():
    s = parse_settings("12", 0.7, 0, 1.0, "", block_size=256)
    assert s == SamplingSettings(max_new_tokens=12, temperature=0.7, top_k=None, top_p=None, seed=None)
    s = parse_settings(12.0, 0, 40.0, 0.9, " 7 ", block_size=1024)
    assert s == SamplingSettings(max_new_tokens=12, temperature=0.0, top_k=40, top_p=0.9, seed=7)
    assert parse_settings(512, 0, 0, 1, None, block_size=1024).max_new_tokens == 512
    with pytest.raises(UserError, match="from 1 to 512"):
        parse_settings(513, 0, 0, 1, None, block_size=1024)


def test_score_bounds_fit_the_score():
    """Issue 9.16: 0 to 1 for ROUGE-L, 0 to 100 for the judge; blank is no bound."""
    assert parse_score_bounds("finetuned.rouge_l", " .5 ", "") == (0.5, None)
    assert parse_score_bounds("base.judge_score", "50", "100") == (50.0, 100.0)
    with pytest.raises(UserError, match=r"^max score must be a number from 0 to 1 for ROUGE-L, got '50'$"):
        parse_score_bounds("base.rouge_l", "", "50")
    with pytest.raises(UserError, match=r"^min score must be a number from 0 to 100 for the judge score, got '\.'$"):
        parse_score_bounds("finetuned.judge_score", ".", None)


def test_summary_shows_both_models(finished_run):
    md = summary_markdown(EvalResults.load(finished_run, "unused"))
    assert "| Metric | base | finetuned |" in md
    assert "| ROUGE-L F1 | 0.163 | 0.838 |" in md  # rounded half to even by format
    assert "| Exact match | 0.0% | 50.0% |" in md
    assert "| Judge score (0–100) | 10.0 | 86.2 |" in md
    assert "| Perplexity | 33.12 | 3.49 |" in md
    assert "4 test records" in md and "`llama3`" in md and "`0123456789ab`" in md


def test_loss_curve_from_png_or_metrics(finished_run, make_run, tmp_path):
    replotted = loss_curve(finished_run)  # the fixture has metrics.jsonl but no loss.png
    assert replotted is not None and replotted.size == (600, 400)  # the figure training saves as loss.png
    other = make_run(tmp_path / "r", with_eval=False, with_metrics=False)
    Image.new("RGB", (32, 16), "white").save(other.loss_plot)
    assert loss_curve(other).size == (32, 16)


def test_eval_results_unreadable(tmp_path, make_run):
    run = make_run(tmp_path / "r")
    run.predictions.write_text("{not json\n")
    results = EvalResults.load(run, "unused")
    assert results.summary is None and "unreadable" in results.problem and "python evaluate.py --run" in results.problem


# --------------------------------------------------------------------------- eval files of the wrong structure (9.7)


def _rewrite_predictions(run, edit) -> None:
    rows = read_jsonl(run.predictions)
    run.predictions.write_text("".join(json.dumps(r) + "\n" for r in edit(rows)))


def _rewrite_summary(run, edit) -> None:
    run.summary.write_text(json.dumps(edit(json.loads(run.summary.read_text()))))


@pytest.mark.parametrize(
    "predictions, summary, message",
    [
        (lambda rows: [rows[0], [1, 2], *rows[1:]], None,
         "eval/predictions.jsonl, line 2: the record must be an object, got an array"),
        (lambda rows: [rows[0], rows[1], {**rows[2], "base": "oops"}], None,
         'eval/predictions.jsonl, line 3: "base" must be an object, got a string'),
        (lambda rows: [{**rows[0], "id": "7"}], None, 'eval/predictions.jsonl, line 1: "id" must be an integer, '
                                                      "got a string"),
        (lambda rows: [{**rows[0], "finetuned": {**rows[0]["finetuned"], "rouge_l": "high"}}], None,
         'eval/predictions.jsonl, line 1: "finetuned"."rouge_l" must be a number or null, got a string'),
        (None, lambda s: [], "eval/summary.json: the file must be an object, got an array"),
        (None, lambda s: {**s, "models": {"base": None}}, 'eval/summary.json: "models"."base" must be an object, '
                                                          "got null"),
        (None, lambda s: {k: v for k, v in s.items() if k != "models"}, 'eval/summary.json: "models" is missing'),
        (None, lambda s: {**s, "judge": {"url": "x"}}, 'eval/summary.json: "judge"."model" is missing'),
        (None, lambda s: {**s, "generation": 3}, 'eval/summary.json: "generation" must be an object, got a number'),
    ],
)
def test_eval_files_of_the_wrong_structure_name_the_file_and_line(tmp_path, monkeypatch, make_run, predictions,
                                                                  summary, message, greedy):
    """Issue 9.7: the app starts, the eval tab names the file and line, generation still works."""
    from gpt2_scratch.demo import build_demo

    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "r")
    if predictions:
        _rewrite_predictions(run, predictions)
    if summary:
        _rewrite_summary(run, summary)
    app = DemoApp.from_run(run)  # used to raise AttributeError
    assert app.results.problem == (f"The evaluation results in `r/eval` are unreadable (r/{message}). "
                                   "Recreate them with `python evaluate.py --run r`.")
    assert summary_markdown(app.results) == f"**{app.results.problem}**"
    build_demo(app)
    assert app.filter_predictions("", "finetuned.rouge_l", "", "", "test-set order")[1] == f"**{app.results.problem}**"
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
    assert "| Metric | finetuned |" in summary_markdown(results) and "judge: none" in summary_markdown(results)


# --------------------------------------------------------------------------- small texts


def test_whitespace_only_text_gets_a_visible_marker():
    """Issue 9.17."""
    assert visible_response("\n" * 128, 128) == "(only whitespace: 128 tokens, 128 newlines)"
    assert visible_response("\n\n", 1) == "(only whitespace: 1 token, 2 newlines)"
    assert visible_response("  ") == "(only whitespace: 2 spaces)"
    assert visible_response(" \n\t", 3) == "(only whitespace: 3 tokens, 3 whitespace characters)"
    assert visible_response("") == "" and visible_response(" a\n") == " a\n"


def test_header_names_the_checkpoint_and_why():
    header = header_markdown("r6", "gpt2", "/x/r6/best", "alpaca", "Serving `best/`, not `final/`: broken.")
    assert "Run `r6` · base model `gpt2` · finetuned checkpoint `r6/best` (prompt style `alpaca`)." in header
    assert header.endswith("\n\n⚠️ Serving `best/`, not `final/`: broken.")
    assert "finetuned checkpoint none." in header_markdown(None, "gpt2", None, "alpaca")
