"""metrics.jsonl: a torn last line is skipped, truncation keeps the steps before a resume."""

from __future__ import annotations

from gpt2_scratch.files import read_jsonl
from gpt2_scratch.train.log import MetricsLog, read_metrics


def test_metrics_truncate_and_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(4):
        log.log("train", step, step * 10, loss=1.0)
    with open(path, "a") as f:
        f.write('{"event": "train", "st')  # a torn last line
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3]
    log.truncate_after(1)
    assert [r["step"] for r in read_jsonl(path)] == [0, 1]
