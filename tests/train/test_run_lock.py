"""A run folder is locked by the process that writes it: training, evaluation; a second writer is one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate as evaluate_cli
import finetune
from gpt2_scratch.files import Locked
from gpt2_scratch.runs import RunPaths
from gpt2_scratch.train.loop import Trainer, train
from tests.fixtures.training import small_config

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from gpt2_scratch.runs import RunPaths\n"
    "with RunPaths(Path(sys.argv[1])).lock('finetune.py'):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """A second process that holds the lock of ``tmp_path / "run"`` (as a training process does) until killed."""
    root = tmp_path / "run"
    root.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "locked\n"
        yield root, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_with_the_pid_of_the_holder(holder, capsys):
    root, proc = holder
    message = f"error: run folder {root} is in use by process {proc.pid} (finetune.py); wait until it ends, or stop it"
    assert finetune.main(["--resume", str(root)]) == 2
    assert capsys.readouterr().err.strip() == message
    assert evaluate_cli.main(["--run", str(root), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == message
    assert sorted(p.name for p in root.iterdir()) == [".lock"]  # neither wrote anything


def test_kill_9_of_the_holder_leaves_no_stale_lock(holder):
    root, proc = holder
    with pytest.raises(Locked):
        with RunPaths(root).lock("test"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunPaths(root).lock("test"):  # the kernel released it with the process
        pass


def test_training_holds_the_lock_until_it_returns(tmp_path, fixture_json, monkeypatch):
    seen = []
    evaluate = Trainer._evaluate

    def evaluate_and_try_the_lock(self):
        try:  # another open file description: flock refuses it even within this process
            with self.paths.lock("test"):
                seen.append("free")
        except Locked as e:
            seen.append(str(e))
        evaluate(self)

    monkeypatch.setattr(Trainer, "_evaluate", evaluate_and_try_the_lock)
    paths = train(small_config(tmp_path, fixture_json, name="locked", max_steps=2))
    assert seen and all(f"is in use by process {os.getpid()} (finetune.py)" in s for s in seen)
    with paths.lock("test"):  # released at the end
        pass


def test_publish_waits_for_no_one_and_names_the_holder(holder, capsys, monkeypatch):
    import publish

    monkeypatch.setenv("HF_TOKEN", "hf_test")  # past the token check; nothing is uploaded
    root, proc = holder
    assert publish.main(["--run", str(root), "--repo", "me/x", "--export-dir", str(root.parent / "export")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: run folder {root} is in use by process {proc.pid} (finetune.py); wait until it ends, or stop it"
    )
    assert not (root.parent / "export").exists()
