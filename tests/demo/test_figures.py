"""The results tab's figures (gpt2_scratch.demo.results.figures): a loss panel per method; legends whole, every bin named."""

from __future__ import annotations

import pytest

from gpt2_scratch.demo.results.compare import RunResults, compare, histogram_frame
from gpt2_scratch.demo.results.figures import histogram_figure, loss_curves_figure
from gpt2_scratch.demo.results.views import bin_colors, run_color_maps
from tests.fixtures.results import PRED_A, SUMMARY_A, info, metrics


def dpo_metrics() -> list[dict]:
    """A DPO run's eval events: its loss from log 2 (0.693) down, with the rewards that mark it as DPO."""
    return [
        {
            "event": "eval",
            "step": s,
            "tokens_seen": 100 * s,
            "train_loss": 0.693 - 0.05 * s,
            "val_loss": 0.693 - 0.04 * s,
            "val_reward_margin": 0.1 * s,
            "val_reward_accuracy": 0.5 + 0.1 * s,
        }
        for s in range(3)
    ]


def inside(fig, artist) -> bool:
    """Whether ``artist`` is drawn wholly inside the figure (nothing of it cut off at an edge)."""
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    box, page = artist.get_window_extent(renderer), fig.bbox
    return box.x0 >= page.x0 - 1 and box.y0 >= page.y0 - 1 and box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1


def test_sft_and_dpo_losses_get_a_panel_each_so_neither_is_flat():
    runs = [
        RunResults("sft", info("sft"), SUMMARY_A, PRED_A, metrics(4.0)),  # losses 4 to 16
        RunResults("dpo", info("dpo"), SUMMARY_A, PRED_A, dpo_metrics()),  # losses 0.61 to 0.69
    ]
    fig = loss_curves_figure(compare(runs), run_color_maps(["sft", "dpo"])["loss"])
    sft, dpo = fig.axes
    assert (sft.get_ylabel(), dpo.get_ylabel()) == ("loss (cross-entropy)", "DPO loss")
    assert {line.get_label() for line in sft.get_lines()} == {"sft · train", "sft · val"}
    assert {line.get_label() for line in dpo.get_lines()} == {"dpo · train", "dpo · val"}
    low, high = dpo.get_ylim()
    assert 0.5 < low and high < 0.75  # the DPO curves fill their own axis
    assert sft.get_ylim()[0] > 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "sft · train",
        "sft · val",
        "dpo · train",
        "dpo · val",
    ]
    assert inside(fig, fig.legends[0])


def test_with_five_runs_the_loss_legend_is_below_the_panel_and_whole():
    labels = [f"a-long-run-name-{k}" for k in range(5)]
    runs = [RunResults(label, info(label), SUMMARY_A, PRED_A, metrics(1.0 + k)) for k, label in enumerate(labels)]
    fig = loss_curves_figure(compare(runs), run_color_maps(labels)["loss"])
    [panel] = fig.axes
    legend = fig.legends[0]
    assert len(legend.get_texts()) == 10 and inside(fig, legend) and inside(fig, panel)
    assert legend.get_window_extent().y1 <= panel.get_window_extent().y0  # below the axes, not over the curves


def test_no_loss_curve_is_said_in_the_figure():
    fig = loss_curves_figure(compare([RunResults("a", info("a"), SUMMARY_A, PRED_A, [])]))
    assert [t.get_text() for t in fig.axes[0].texts] == ["No loss curves: no evaluations in metrics.jsonl"]


@pytest.mark.parametrize("n_runs", [1, 5])
def test_the_score_distribution_legend_names_every_bin_and_fits(n_runs):
    labels = [f"run-{k}" for k in range(n_runs)]
    cmp = compare([RunResults(label, info(label), SUMMARY_A, PRED_A, metrics(1.0)) for label in labels])
    hist = histogram_frame(cmp, "rouge_l", bins=10)
    bins = list(dict.fromkeys(hist["bin"]))
    series = [f"{run} · {model}" for run, model in cmp.pairs]
    fig = histogram_figure(hist, series, bin_colors(bins, "rouge_l"), "ROUGE-L F1")
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == bins[::-1] and texts[0] == "0.9–1" and len(texts) == 10  # the last bin has its label
    assert legend.get_title().get_text() == "ROUGE-L F1"
    assert inside(fig, legend) and inside(fig, fig.axes[0])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == series
