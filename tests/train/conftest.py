"""Training fixtures: a dataset file, the 16-record fixture, and one uninterrupted reference run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt2_scratch.train.loop import train
from tests.fixtures.training import small_config


def _write_dataset(path: Path, n: int = 16) -> Path:
    records = [
        {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
        for a, b in zip(range(3, 3 + n), range(20, 20 + n))
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def write_dataset():
    """``write_dataset(path, n=16) -> path``: ``n`` short arithmetic instructions as a dataset .json file.

    Split 85/10/5 in file order: 13 train / 1 test / 2 validation records for n=16,
    34 / 4 / 2 for n=40. Record i asks "What is {3+i} plus {20+i}?".
    """
    return _write_dataset


@pytest.fixture(scope="package")
def fixture_json(tmp_path_factory, write_dataset) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "fixture.json")


@pytest.fixture(scope="package")
def reference_run(tmp_path_factory, fixture_json):
    """An uninterrupted 6-step run (2 epochs x 3 steps)."""
    tmp = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(2)
    return train(small_config(tmp, fixture_json, name="ref"))
