"""A run's log: ``metrics.jsonl`` (one JSON object per event) and its loss figure ``loss.png``.

Each line has ``event``, ``step``, ``tokens_seen`` and ``time``, plus the event's own fields:
``baseline`` (the base model's answer to a test instruction, before training), ``train`` (loss,
lr, tokens_per_second of one step), ``eval`` (train_loss, val_loss; ``best``: a new best val_loss;
a DPO run: the DPO loss, each step's ``DPO_METRICS``, and ``val_<m>``/``train_<m>`` in ``eval``),
``sample`` (the answer to the first validation instruction, after each epoch), ``resume`` (from
the state saved at ``step``), ``done`` (val_loss, best_val_loss).
Written by training (rank 0, ``MetricsLog``), read by the app for the loss curve.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

from gpt2_scratch.files import append_jsonl, atomic_write, atomic_write_jsonl, read_jsonl

# What a DPO run logs besides its loss (train/dpo.py): rewards are beta * (log pi - log pi_ref).
DPO_METRICS = ("reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")
# The DPO panels of the figure: (metric, axis label).
DPO_PANELS = (("reward_margin", "reward margin (chosen - rejected)"), ("reward_accuracy", "reward accuracy"))


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl.

    Each line goes out in a single ``write`` on an ``O_APPEND`` descriptor, so a
    killed process leaves whole lines behind (at worst a torn last line after a
    power cut, which ``read_metrics`` skips and a resume removes).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def log(self, event: str, step: int, tokens_seen: int, **fields: Any) -> None:
        row = {"event": event, "step": step, "tokens_seen": tokens_seen, **fields, "time": round(time.time(), 3)}
        append_jsonl(self.path, row)

    def truncate_after(self, step: int) -> None:
        """Drop the lines logged after ``step`` (they are about to be replayed by a resume)."""
        if self.path.exists():
            atomic_write_jsonl(self.path, [r for r in read_metrics(self.path) if r.get("step", 0) <= step])


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl; a torn (unparsable) line is skipped."""
    return [row for row in read_jsonl(path, skip_bad=True) if isinstance(row, dict)]


def is_dpo_log(metrics: Sequence[dict[str, Any]]) -> bool:
    """Whether the eval events of ``metrics`` are a DPO run's (they carry the rewards)."""
    return any(r.get("event") == "eval" and f"val_{DPO_METRICS[0]}" in r for r in metrics)


def loss_figure(metrics: Sequence[dict[str, Any]]):
    """A matplotlib Figure of train and validation loss of the eval events against tokens seen.

    A DPO run gets two more panels: the reward margin and the reward accuracy, train and validation.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    evals = [r for r in metrics if r.get("event") == "eval"]
    panels = [("loss", "DPO loss" if is_dpo_log(metrics) else "loss")]
    panels += list(DPO_PANELS) if is_dpo_log(metrics) else []
    fig = Figure(figsize=(6, 4) if len(panels) == 1 else (4.8 * len(panels), 4))
    FigureCanvasAgg(fig)
    for k, (metric, label) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), k)
        for split, style, name in (("train", "-", "training"), ("val", "-.", "validation")):
            rows = [r for r in evals if f"{split}_{metric}" in r]
            values = [r[f"{split}_{metric}"] for r in rows]
            ax.plot([r["tokens_seen"] for r in rows], values, marker=".", linestyle=style, label=f"{name} {label}")
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(metrics_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Plot the losses logged in ``metrics_path`` to a PNG (atomically)."""
    fig = loss_figure(read_metrics(metrics_path))
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
