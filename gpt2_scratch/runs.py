"""The layout of a run folder, shared by finetune.py, evaluate.py and app.py.

    runs/<name>/
      run.json              training config, base model, dataset source and split
      final/                checkpoint after the last step (checkpoint.save_checkpoint)
      best/                 checkpoint with the lowest validation loss
      data/test.jsonl       held-out test records, each with a stable "id"
      data/val.jsonl        validation records
      metrics.jsonl         one JSON object per logged event
      loss.png              train/validation loss against tokens seen
      train_state/          periodic resume state (model, optimizer, RNG, position)
      eval/predictions.jsonl  one line per test record (evaluate.py)
      eval/summary.json       aggregates per model (evaluate.py)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_RUNS_DIR = Path("runs")


@dataclass(frozen=True)
class RunPaths:
    """Paths inside one run folder."""

    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def read_run_json(self) -> dict[str, Any]:
        """The run's ``run.json``; a missing or malformed file is a one-line error naming it."""
        if not self.run_json.is_file():
            raise FileNotFoundError(f"{self.root} is not a run folder: no run.json")
        try:
            run = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.run_json} is not valid JSON ({e})") from None
        if not isinstance(run, dict):
            raise ValueError(f"{self.run_json} is not a JSON object")
        return run

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def test_records(self) -> Path:
        return self.root / "data" / "test.jsonl"

    @property
    def val_records(self) -> Path:
        return self.root / "data" / "val.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def train_state(self) -> Path:
        return self.root / "train_state"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def predictions(self) -> Path:
        return self.eval_dir / "predictions.jsonl"

    @property
    def summary(self) -> Path:
        return self.eval_dir / "summary.json"


def latest_run(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> RunPaths:
    """The most recently modified run under ``runs_dir`` that has a final checkpoint."""
    runs_dir = Path(runs_dir)
    candidates = [p for p in runs_dir.glob("*") if (p / "final" / "config.json").is_file()] if runs_dir.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"no finished run under {runs_dir}/; create one with: python finetune.py")
    return RunPaths(max(candidates, key=lambda p: (p / "final" / "config.json").stat().st_mtime))
