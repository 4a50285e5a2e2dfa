"""Tests of finetune.py, the command line: an offline end-to-end smoke run, --help, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import finetune
from gpt2_scratch.checkpoint import load_checkpoint
from gpt2_scratch.data.records import read_records
from gpt2_scratch.files import read_jsonl
from gpt2_scratch.train.step import StepRunner

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(REPO / "finetune.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path, write_dataset):
    dataset = write_dataset(tmp_path / "data.json", 40)  # 34 train / 4 test / 2 validation
    proc = run_cli(
        "--base",
        "random:tiny",
        "--dataset",
        str(dataset),
        "--epochs",
        "1",
        "--out-dir",
        str(tmp_path / "runs"),
        "--name",
        "smoke",
        "--eval-batches",
        "2",
        "--sample-tokens",
        "8",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "runs" / "smoke"
    assert f"run folder: {root}" in proc.stdout

    run = json.loads((root / "run.json").read_text())
    assert set(run) == {
        *("name", "created", "base_model", "prompt_style", "dataset", "training", "status"),
        *("saved_step", "total_steps"),  # issue 19 item 4
    }
    assert (run["name"], run["base_model"], run["prompt_style"], run["status"]) == (
        "smoke",
        "random:tiny",
        "alpaca",
        "finished",
    )
    assert run["dataset"]["source"] == str(dataset) and len(run["dataset"]["sha256"]) == 64
    assert run["dataset"]["num_records"] == 40
    assert run["dataset"]["split"] == {"train": 34, "test": 4, "val": 2, "shuffle": False, "seed": 123}
    # "training" holds every CLI option, with the defaults of the reference run.
    assert set(run["training"]) == {a.dest for a in finetune.build_parser()._actions if a.dest != "help"}
    assert run["training"]["lr"] == 5e-5 and run["training"]["batch_size"] == 8 and run["training"]["epochs"] == 1

    test = read_records(root / "data" / "test.jsonl")
    assert [r.id for r in test] == [34, 35, 36, 37]
    assert [r.id for r in read_records(root / "data" / "val.jsonl")] == [38, 39]

    model, info = load_checkpoint(root / "final")
    assert info.prompt_style == "alpaca" and info.metadata["base_model"] == "random:tiny"
    assert info.metadata["step"] == 4  # 34 records // batch 8
    assert info.metadata["dataset"]["split"]["test"] == 4
    assert load_checkpoint(root / "best")[1].prompt_style == "alpaca"

    rows = read_jsonl(root / "metrics.jsonl")
    assert {r["event"] for r in rows} >= {"baseline", "train", "eval", "sample", "done"}
    assert [r["id"] for r in rows if r["event"] == "baseline"] == [34, 35, 36]
    assert all({"event", "step", "tokens_seen"} <= set(r) for r in rows)
    assert all("train_loss" in r and "val_loss" in r for r in rows if r["event"] == "eval")
    assert (root / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (root / "train_state").exists()


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune.main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # the wrapping depends on the terminal width
    for option in (
        "--base",
        "--dataset",
        "--out-dir",
        "--name",
        "--epochs",
        "--lr",
        "--weight-decay",
        "--batch-size",
        "--grad-accum",
        "--max-length",
        "--schedule",
        "--warmup-steps",
        "--grad-clip",
        "--seed",
        "--eval-every",
        "--precision",
        "--compile",
        "--no-compile",
        "--device",
        "--limit",
        "--mask-prompt",
        "--resume",
        "--shuffle-split",
        "--prompt-style",
        "--save-every",
        "--no-group-by-length",
    ):
        assert option in out, option
    assert "(default: 0.1)" in out and "(default: gpt2)" in out  # defaults are shown
    assert "default: 5e-5 (sft), 5e-6 (dpo)" in out  # those that depend on --method, per method


def test_missing_dataset_is_a_one_line_error(tmp_path):
    out = tmp_path / "runs"
    proc = run_cli(
        "--base",
        "random:tiny",
        "--dataset",
        str(tmp_path / "nope.json"),
        "--out-dir",
        str(out),
        "--name",
        "failed",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: dataset file not found: {tmp_path / 'nope.json'}"]
    assert not (out / "failed").exists()  # a run that never started leaves no empty folder


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "error: --batch-size must be a positive integer, got 0"),
        (["--schedule", "linear"], "error: argument --schedule: invalid choice: 'linear'"),
        (["--lr", "fast"], "error: argument --lr: invalid float value: 'fast'"),
        (["--resume", "no/such/run"], "error: no/such/run is not a run folder: no run.json"),
        (["--beta", "0.5"], "error: --beta is for --method dpo; --method sft does not use it"),
        (
            ["--method", "sft", "--dpo-logps", "mean"],
            "error: --dpo-logps is for --method dpo; --method sft does not use it",
        ),
        (["--max-steps", "0"], "error: --max-steps must be a positive integer, got 0"),
        (
            ["--resume", "runs/x", "--epochs", "2", "--lr", "1e-3"],
            "error: --resume continues a run with the settings in its run.json; drop --epochs, --lr",
        ),
    ],
)
def test_bad_options_are_one_line_errors(args, message, capsys):
    try:
        code = finetune.main(args)
    except SystemExit as e:  # argparse's own errors go through the parser's error()
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_mask_prompt_is_the_default_and_the_help_says_so(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping (argparse also breaks lines at hyphens)
    parser = finetune.build_parser()
    assert parser.parse_args([]).mask_prompt is True
    assert parser.parse_args(["--no-mask-prompt"]).mask_prompt is False
    assert parser.parse_args(["--max-steps", "7"]).max_steps == 7 and parser.parse_args([]).max_steps is None
    with pytest.raises(SystemExit):
        finetune.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "--no-mask-prompt also learns the prompts, as the LLMs-from-scratch reference run does (default: True)" in out
    )
    assert "--max-steps N stop after N optimizer steps" in out


def test_ctrl_c_prints_the_real_run_folder(tmp_path, monkeypatch, capsys, write_dataset):
    dataset = write_dataset(tmp_path / "data.json", 40)
    original = StepRunner.train_step

    def train_step(self, batch, lr):
        if self.optimizer.state:  # the second step: Ctrl-C
            raise KeyboardInterrupt
        return original(self, batch, lr)

    monkeypatch.setattr(StepRunner, "train_step", train_step)
    args = [
        "--base",
        "random:tiny",
        "--dataset",
        str(dataset),
        "--out-dir",
        str(tmp_path / "runs"),
        "--name",
        "stop",
        "--eval-batches",
        "1",
        "--sample-tokens",
        "2",
        "--max-steps",
        "3",
    ]
    assert finetune.main([*args, "--save-every", "1"]) == 130
    root = tmp_path / "runs" / "stop"
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's lines
    assert last_line == f"interrupted at step 1 of 3, its state saved at that step: continue with --resume {root}"

    assert finetune.main([*args, "--name", "stop2", "--save-every", "5"]) == 130
    root = tmp_path / "runs" / "stop2"
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == f"interrupted at step 1 of 3, before the first saved state; --resume {root} starts the run over"


def test_an_out_dir_that_is_a_file_is_one_line(tmp_path, capsys, write_dataset):
    dataset = write_dataset(tmp_path / "data.json")
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0\n")
    for out in (file, file / "runs"):
        assert finetune.main(["--base", "random:tiny", "--dataset", str(dataset), "--out-dir", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"error: --out-dir {out}: {file} is a file, not a folder"
    assert file.read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_only_the_first_torchrun_process_prints_the_run_folder(rank, printed, tmp_path, monkeypatch, capsys):
    from gpt2_scratch.runs import RunPaths

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(finetune, "train", lambda config: RunPaths(tmp_path / "runs" / "x"))
    assert finetune.main(["--base", "random:tiny"]) == 0
    assert capsys.readouterr().out.count(f"run folder: {tmp_path / 'runs' / 'x'}") == int(printed)
