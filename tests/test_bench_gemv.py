"""benchmarks/bench_gemv.py refuses bad input in one line, before building or timing anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--against", "no-such-revision"], "--against no-such-revision: no gpt2_scratch/gemv.c there"),
        (["--against", "HEAD", "--rows", "1,x"], "--rows '1,x': not a comma-separated list of whole numbers"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, says):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gemv", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says)
