"""evaluate.py, the command line: an end-to-end run, --help, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import evaluate as evaluate_cli

ROOT = Path(__file__).resolve().parents[2]

# Tiny models run fastest on one thread, and do not crawl when other processes share the CPU.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_end_to_end_and_errors(run, capsys, tmp_path):
    assert (
        evaluate_cli.main(
            [
                "--run",
                str(run.root),
                "--models",
                "finetuned",
                "--max-new-tokens",
                "4",
                "--batch-size",
                "3",
                "--limit",
                "4",
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "ROUGE-L F1" in out and "finetuned" in out
    assert len(run.predictions.read_text().splitlines()) == 4

    for argv, message in [
        (["--run", str(tmp_path / "nope")], "no such run folder"),
        (["--run", str(run.root), "--limit", "0"], "--limit must be a positive integer, got 0"),
        (["--run", str(run.root), "--temperature", "-1"], "--temperature must be a non-negative number, got -1.0"),
        (["--run", str(run.root), "--max-new-tokens", "0"], "--max-new-tokens must be a positive integer, got 0"),
        (["--run", str(run.root), "--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--run", str(run.root), "--top-p", "1.5"], "--top-p must be a number in (0, 1], got 1.5"),
        (["--run", str(run.root), "--judge-url", "http://localhost:1/v1"], "--judge-model"),
    ]:
        assert evaluate_cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as e:
        evaluate_cli.main(["--models", "nonsense"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --models")


def test_cli_help_and_bad_run_in_a_subprocess(tmp_path):
    help_ = subprocess.run([sys.executable, "evaluate.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_.returncode == 0
    for option in (
        "--run",
        "--models",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--batch-size",
        "--limit",
        "--device",
        "--judge-url",
        "--judge-model",
        "--judge-api-key",
        "--restart",
    ):
        assert option in help_.stdout, option
    bad = subprocess.run(
        [sys.executable, "evaluate.py", "--run", str(tmp_path / "missing")], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr == f"error: --run {tmp_path / 'missing'}: no such run folder\n"


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_bad_weights_are_reported_before_any_answer(run, damage, capsys, monkeypatch):
    from gpt2_scratch.generate import batched

    weights = run.final / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setattr(batched, "generate", lambda *a, **k: pytest.fail("generated before checking the weights"))
    assert evaluate_cli.main(["--run", str(run.root), "--replace", "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {weights} ") and err.count("\n") == 1
    assert ("truncated or replaced" if damage == "truncated" else "corrupt or replaced") in err
    assert not run.eval_dir.exists()


def test_base_overrides_the_base_the_run_records(run, capsys, monkeypatch):
    info = json.loads(run.run_json.read_text())
    run.run_json.write_text(json.dumps({**info, "base_model": "/moved/away/gpt2"}))
    monkeypatch.chdir(run.root.parent)
    fast = ["--run", str(run.root), "--models", "base", "--limit", "2", "--max-new-tokens", "2", "--no-progress"]
    assert evaluate_cli.main([*fast, "--base", "./missing"]) == 2
    assert capsys.readouterr().err.strip() == "error: --base ./missing: no such file or folder"
    assert evaluate_cli.main(fast) == 2
    assert "/moved/away/gpt2" in capsys.readouterr().err
    assert evaluate_cli.main([*fast, "--base", "random:tiny"]) == 0
    assert json.loads(run.summary.read_text())["base_model"] == "random:tiny"
