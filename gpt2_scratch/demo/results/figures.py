"""The results tab's matplotlib figures (no Gradio here): the loss curves and the score distributions.

    loss_curves_figure(cmp)                            # a panel per training method, legend below
    histogram_figure(hist, series, colors, "ROUGE-L")  # stacked shares per run and model, every bin labelled

Why figures, not Gradio's native plots: these need a panel per method (DPO's loss, about 0.69,
and SFT's, about 2 to 10, on one axis flatten every curve) and a legend that wraps below or
beside the axes, never past the plot's edge, however many runs are chosen.
Invariant: every curve and every bin has a legend entry.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

from gpt2_scratch.demo.results.compare import Comparison, loss_frame, reward_frame

# (method, y label) of each loss panel, in this order; a run is DPO when its evaluations carry rewards.
LOSS_PANELS = (("SFT", "loss (cross-entropy)"), ("DPO", "DPO loss"))
SPLITS = (("train", "-", "o"), ("val", "--", "s"))  # split, line style, marker


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")  # constrained: the outside legend gets room
    FigureCanvasAgg(fig)
    return fig


def _legend_columns(labels: Sequence[str], width: float) -> int:
    """As many legend columns as fit ``width`` inches: at 8 pt a character is under 0.07 in; the line
    sample and the gaps take about 0.6 in per entry."""
    entry = 0.07 * max((len(label) for label in labels), default=1) + 0.6
    return max(1, min(len(labels), int(width // entry)))


def loss_curves_figure(cmp: Comparison, colors: dict[str, str] | None = None) -> Figure:
    """The chosen runs' train and validation loss against tokens seen: one panel per training method.

    ``colors``: by "run · split" (``views.run_color_maps(...)["loss"]``). The legend is below the
    panels, in as many rows as it needs. No curve at all: one empty panel saying so.
    """
    frame = loss_frame(cmp)
    dpo = set(reward_frame(cmp)["run"])
    frame["method"] = ["DPO" if run in dpo else "SFT" for run in frame["run"]]
    panels = [(m, label) for m, label in LOSS_PANELS if (frame["method"] == m).any()]
    fig = _figure(4.6 * max(len(panels), 1) + 0.6, 4.2)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "No loss curves: no evaluations in metrics.jsonl", ha="center", va="center")
        ax.set_axis_off()
        return fig
    for k, (m, ylabel) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), k)
        rows = frame[frame["method"] == m]
        for series, curve in rows.groupby("series", sort=False):
            split = curve["split"].iloc[0]
            _, style, marker = next(s for s in SPLITS if s[0] == split)
            ax.plot(
                curve["tokens_seen"],
                curve["loss"],
                linestyle=style,
                marker=marker,
                markersize=3,
                color=(colors or {}).get(series),
                label=series,
            )
        ax.set_title(f"{m} runs" if len(panels) > 1 else f"{m} runs: training and validation loss", fontsize=10)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.append(h)
            labels.append(label)
    columns = _legend_columns(labels, fig.get_figwidth() - 0.2)
    fig.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize=8)
    return fig


def histogram_figure(hist: pd.DataFrame, series: Sequence[str], colors: dict[str, str], label: str) -> Figure:
    """``compare.histogram_frame``'s shares as one stacked bar per series (run · model), in ``series`` order.

    ``colors``: by bin label (``views.bin_colors``). The legend, beside the bars, names every bin,
    the last one included, low scores at the bottom as in the bars.
    """
    bins = list(dict.fromkeys(hist["bin"]))
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(series))
    bottom = np.zeros(len(series))
    for b in bins:
        rows = hist[hist["bin"] == b].set_index("series")
        share = np.array([float(rows["share"].get(s, 0.0)) for s in series])
        ax.bar(x, share, bottom=bottom, color=colors.get(b), label=b, width=0.7, edgecolor="white", linewidth=0.5)
        bottom += share
    ax.set_xticks(x, list(series), rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_ylabel("share of records")
    ax.set_title(f"{label}: share of the records in each score bin", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    # Reversed: the top entry is the highest bin, as the stacked bars read.
    fig.legend(handles[::-1], labels[::-1], loc="outside right center", title=label, fontsize=8, title_fontsize=8)
    return fig
