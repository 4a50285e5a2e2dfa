"""The comparison of runs (gpt2_scratch/demo/compare.py): hand-made runs, hand-computed answers."""

from __future__ import annotations

import math

import pytest

from gpt2_scratch.demo.results.browse import filter_records, record_view
from gpt2_scratch.demo.results.compare import (
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
from tests.fixtures.results import PRED_A

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


def test_the_browser_compares_the_training_options_the_card_publishes():
    from gpt2_scratch.config import GPTConfig
    from gpt2_scratch.publish.model_card import model_card

    def run(name: str, device: str, lr: float) -> RunInfo:
        bookkeeping = {"name": name, "out_dir": f"runs-{name}", "resume": name, "device": device}
        top = {"base": f"gpt2-{name}", "prompt_style": f"style-{name}", "dataset": f"{name}.json"}
        return RunInfo(name, "gpt2", "alpaca", training={**bookkeeping, **top, "lr": lr, "epochs": 2})

    a, b = run("a", "cpu", 1e-4), run("b", "cuda:1", 2e-4)
    diff = option_differences(compare([RunResults("a", a), RunResults("b", b)]))
    assert diff.frame["option"].tolist() == ["lr"] and sorted(diff.same) == ["base_model", "epochs", "prompt_style"]
    card = model_card(
        a,
        GPTConfig.from_preset("tiny"),
        None,
        repo_id="me/a",
        license="mit",
        num_params=10,
        has_loss_plot=False,
        prompt_style="alpaca",
    )
    table = card.split("| option | value |\n|---|---|\n")[1].split("\n\n")[0].splitlines()
    assert [row.split(" | ")[0].lstrip("| ") for row in table] == [
        "base model",
        "prompt style",
        "dataset",
        "lr",
        "epochs",
    ]


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
