"""The run folder writer: two runs started together never share a folder."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

from gpt2_scratch.checkpoint import load_checkpoint
from gpt2_scratch.train import run_writer
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.loop import train
from tests.fixtures.training import events, small_config


def run_in_threads(configs: list[TrainConfig]) -> list:
    """Start a training run per config at the same moment; each result is its RunPaths or the exception it raised."""
    results: list = [None] * len(configs)
    start = threading.Barrier(len(configs))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = train(configs[i])
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_runs_started_together_never_share_a_folder(tmp_path, fixture_json, monkeypatch):
    # Both runs get the same default name, as two runs started in the same second do.
    monkeypatch.setattr(run_writer, "time", SimpleNamespace(strftime=lambda fmt: "20250101-120000"))
    configs = [
        small_config(tmp_path, fixture_json, epochs=1, save_every=0, eval_every=100, lr=lr) for lr in (1e-3, 2e-3)
    ]
    results = run_in_threads(configs)
    assert sorted(r.root.name for r in results) == ["20250101-120000", "20250101-120000-2"]
    for config, paths in zip(configs, results):
        run = json.loads(paths.run_json.read_text())
        assert run["training"]["lr"] == config.lr and run["name"] == run["training"]["name"] == paths.root.name
        assert [r["step"] for r in events(paths.metrics, "train")] == [1, 2, 3]  # its own lines only
        assert {r["lr"] for r in events(paths.metrics, "train")} == {config.lr}
        assert load_checkpoint(paths.final)[1].metadata["training"]["lr"] == config.lr

    # The same --name: one run gets the folder, the other stops with a one-line error.
    configs = [
        small_config(tmp_path, fixture_json, name="same", epochs=1, save_every=0, eval_every=100, lr=lr)
        for lr in (1e-3, 2e-3)
    ]
    results = run_in_threads(configs)
    errors = [r for r in results if isinstance(r, Exception)]
    (winner,) = [c for c, r in zip(configs, results) if not isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and "already exists" in str(errors[0])
    assert json.loads((tmp_path / "runs" / "same" / "run.json").read_text())["training"]["lr"] == winner.lr
    assert {r["lr"] for r in events(tmp_path / "runs" / "same" / "metrics.jsonl", "train")} == {winner.lr}
