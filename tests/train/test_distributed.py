"""Distributed training: two torchrun processes compute the steps of one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2_scratch.checkpoint import load_checkpoint
from tests.fixtures.training import events, losses

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, reference_run, fixture_json):
    """torchrun with 2 gloo processes (2 examples each) computes the same steps as one process with batch 4."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "finetune.py"),
        "--base",
        "random:tiny",
        "--dataset",
        str(fixture_json),
        "--out-dir",
        str(tmp_path),
        "--name",
        "ddp",
        "--batch-size",
        "4",
        "--lr",
        "3e-3",
        "--epochs",
        "1",
        "--eval-every",
        "2",
        "--eval-batches",
        "2",
        "--save-every",
        "2",
        "--sample-tokens",
        "4",
        "--seed",
        "7",
        "--prompt-style",
        "phi3",
        "--no-mask-prompt",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder: ") == 1  # rank 0 says it; the other rank does not repeat it
    metrics = tmp_path / "ddp" / "metrics.jsonl"
    got, ref = losses(metrics), losses(reference_run.metrics)
    assert [s for s, _ in got["train"]] == [1, 2, 3]
    torch.testing.assert_close(
        torch.tensor([loss for _, loss in got["train"]]),
        torch.tensor([loss for _, loss in ref["train"][:3]]),
        rtol=1e-5,
        atol=1e-5,
    )
    # Evaluation batches are shared among the ranks and reduced: same numbers too.
    assert [e[0] for e in got["eval"]] == [0, 2, 3]
    torch.testing.assert_close(torch.tensor(got["eval"][:2]), torch.tensor(ref["eval"][:2]), rtol=1e-5, atol=1e-5)
    # Rank 0 alone logs: one line per step.
    assert len(events(metrics, "train")) == 3 and len(events(metrics, "baseline")) == 1
    load_checkpoint(tmp_path / "ddp" / "final")
