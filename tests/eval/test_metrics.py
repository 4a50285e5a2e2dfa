"""The metric table drives every place that shows a metric: one entry added there reaches the prediction rows,
the summary and its checks, evaluate.py's table, the model card (text and model-index) and the results browser
(summary table, score picker, filters, plots, record view, CSV)."""

from __future__ import annotations

import pytest
import yaml

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.data.records import Record
from gpt2_scratch.demo.inputs import UserError, parse_score_bounds
from gpt2_scratch.demo.results.browse import csv_bytes, filter_records, record_view, score_choices
from gpt2_scratch.demo.results.compare import RunResults, compare, histogram_frame, summary_frame
from gpt2_scratch.demo.results.views import bin_colors, plot_metrics, response_label
from gpt2_scratch.eval import metrics
from gpt2_scratch.eval.metrics import Metric, PerRecord, record_metric, record_metrics, shown_metrics
from gpt2_scratch.eval.summary import (
    ModelResults,
    aggregate,
    check_prediction,
    check_summary,
    format_table,
    prediction_rows,
)
from gpt2_scratch.publish.model_card import model_card
from gpt2_scratch.runs import RunInfo

RECORDS = [Record(1, "Name a color.", "", "Red."), Record(2, "Say hi.", "", "Hello there.")]


def _results(responses: list[str], lengths: list[int]) -> ModelResults:
    return ModelResults(responses, lengths, 2.0, sum(lengths) + 2, 1.5, 20, None, [])


def _evaluation() -> tuple[list[dict], dict]:
    """(prediction rows, summary) as evaluation.py writes them, for two models and two records, no judge."""
    results = {"base": _results(["Blue", "Hello  "], [1, 2]), "finetuned": _results(["Red.", "Hello there."], [2, 3])}
    rows = prediction_rows(RECORDS, results)
    models = {name: aggregate(name, res, rows, judged=False) for name, res in results.items()}
    summary = {"num_records": 2, "test_records_total": 2, "judge": None, "generation": {}, "models": models}
    return rows, summary


# A metric the table does not have: the characters of each response, lower is better.
CHARS = Metric(
    "mean_chars",
    "Mean response length (characters)",
    ".1f",
    lambda values, _: sum(values) / len(values),
    PerRecord("chars", "Response length (characters)", lambda a: len(a.response), higher_is_better=False),
    hub_type="chars",
)


@pytest.fixture
def with_chars(monkeypatch):
    """The table with ``CHARS`` added at its end: the one change a new metric makes."""
    monkeypatch.setattr(metrics, "METRICS", (*metrics.METRICS, CHARS))


def test_keys_and_labels_are_unique_and_the_judge_metrics_are_marked():
    keys = [m.key for m in metrics.METRICS]
    record_keys = [m.key for m in record_metrics()]
    assert len(set(keys)) == len(keys) and len(set(record_keys)) == len(record_keys)
    assert len({m.label for m in metrics.METRICS}) == len(keys)
    assert [m.key for m in metrics.METRICS if m.judge] == ["judge_mean", "judge_unparsed"]
    assert [m.key for m in shown_metrics(judged=False)] == [m.key for m in metrics.METRICS if not m.judge]


def test_the_browser_lists_the_plotted_scores_first_and_names_the_keys_of_an_unknown_one():
    assert record_metrics() == [record_metric(k) for k in ("rouge_l", "judge_score", "length_tokens", "exact_match")]
    with pytest.raises(
        ValueError, match=r"^unknown score 'bleu'; choose one of: rouge_l, judge_score, length_tokens, exact_match$"
    ):
        record_metric("bleu")


def test_rows_and_aggregates_come_from_the_table():
    rows, summary = _evaluation()
    tuned = rows[1]["finetuned"]
    assert tuned == {
        "response": "Hello there.",
        "rouge_l": 1.0,
        "exact_match": 1,
        "judge_score": None,
        "length_tokens": 3,
        "judge_raw": None,
        "judge_error": False,
    }
    assert rows[1]["base"]["rouge_l"] == pytest.approx(2 * 1 * 0.5 / 1.5)  # "Hello" of "Hello there"
    base = summary["models"]["base"]
    assert base["rouge_l"] == pytest.approx(1 / 3) and base["exact_match"] == 0.0
    assert base["mean_length_tokens"] == 1.5 and base["empty_share"] == 0.0 and base["tokens_per_second"] == 2.5
    assert base["judge_mean"] is None and base["judge_unparsed"] == 0 and base["judge_errors"] == 0
    assert base["reference_loss"] == 1.5 and base["reference_loss_tokens"] == 20


def test_a_metric_added_to_the_table_reaches_the_files_and_evaluate_table(with_chars):
    rows, summary = _evaluation()
    assert [rows[0][m]["chars"] for m in ("base", "finetuned")] == [4, 4]
    assert summary["models"]["base"]["mean_chars"] == 5.5  # "Blue", "Hello  "
    check_summary(summary, "")
    check_prediction(rows[0], "")
    with pytest.raises(ValueError, match=r'^"finetuned"\."chars" must be a number or null, got a string$'):
        check_prediction({**rows[0], "finetuned": {**rows[0]["finetuned"], "chars": "4"}}, "")
    with pytest.raises(ValueError, match=r'^"models"\."base"\."mean_chars" must be a number or null, got a string$'):
        check_summary({"models": {"base": {"mean_chars": "x"}}}, "")
    last = format_table(summary).splitlines()[-1]
    assert last.split() == ["Mean", "response", "length", "(characters)", "5.5", "8.0"]


def test_a_metric_added_to_the_table_reaches_the_model_card(with_chars):
    _, summary = _evaluation()
    card = model_card(
        RunInfo(name="r", base_model="gpt2", prompt_style="alpaca"),
        GPTConfig.from_preset("tiny"),
        summary,
        repo_id="me/r",
        license="mit",
        num_params=1000,
        has_loss_plot=False,
        prompt_style="alpaca",
    )
    assert "| Mean response length (characters) | 5.5 | 8.0 |" in card
    [index] = yaml.safe_load(card.split("---\n")[1])["model-index"]
    chars = [m for m in index["results"][0]["metrics"] if m["type"] == "chars"]
    assert chars == [{"type": "chars", "value": 8.0, "name": "Mean response length (characters)"}]


def test_a_metric_added_to_the_table_reaches_the_results_browser(with_chars):
    rows, summary = _evaluation()
    cmp = compare([RunResults("a", summary=summary, predictions=rows)])
    frame = summary_frame(cmp, formatted=True)
    assert frame["Mean response length (characters)"].tolist() == ["5.5", "8.0"]
    assert ("a · finetuned · Response length (characters)", "a · finetuned · chars") in score_choices(cmp)
    shorter = filter_records(cmp, "", "a · base · chars", None, 4)
    assert shorter.columns.tolist() == ["id", "instruction", "a · base", "a · finetuned"]
    assert shorter["id"].tolist() == [1] and shorter["a · base"].tolist() == [4]
    assert b"a \xc2\xb7 finetuned \xc2\xb7 chars" in csv_bytes(filter_records(cmp, full=True))
    assert parse_score_bounds("chars", "0", "10") == (0.0, 10.0)
    with pytest.raises(UserError, match="min score must be a number of at least 0 for Response length"):
        parse_score_bounds("chars", "-1", None)
    assert ("Response length (characters)", "chars") in plot_metrics(cmp)
    assert histogram_frame(cmp, "chars", bins=2)["count"].sum() == 4
    assert bin_colors(["short", "long"], "chars") == {"short": "#16a34a", "long": "#dc2626"}  # lower is better
    tuned = record_view(cmp, 2).responses[1]
    assert tuned.scores["Response length (characters)"] == 12.0
    assert response_label(tuned).endswith("· Response length (characters) 12 · Exact match 1")  # plotted first
