"""make_preferences.py's options: --restart and --replace (the options its messages suggest), --out and
--model checked before any answer is generated, the progress file gone after success."""

from __future__ import annotations

import json

import pytest

import make_preferences
from gpt2_scratch.generate import preferences as selfplay

RECORDS = [{"instruction": f"Add {a} and {a + 1}.", "input": "", "output": f"{2 * a + 1}."} for a in range(6)]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    return path


def args(dataset, out, *more: str) -> list[str]:
    return [
        "--model",
        "random:tiny",
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--max-new-tokens",
        "3",
        "--no-progress",
        *more,
    ]


def no_generation(monkeypatch):
    monkeypatch.setattr(selfplay, "generate_batches", lambda *a, **k: pytest.fail("generated answers"))


def test_a_finished_build_leaves_no_progress_file_and_replace_rebuilds_with_another_limit(tmp_path, dataset, capsys):
    out = tmp_path / "p.json"
    assert make_preferences.main(args(dataset, out, "--limit", "4")) == 0
    assert not selfplay.progress_path(out).exists() and len(json.loads(out.read_text())) == 4
    assert make_preferences.main(args(dataset, out, "--limit", "6")) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --out {out} exists; choose another path, or pass --replace to replace it"
    assert make_preferences.main(args(dataset, out, "--limit", "6", "--replace")) == 0
    assert len(json.loads(out.read_text())) == 6 and not selfplay.progress_path(out).exists()


def test_restart_discards_an_unfinished_build_of_other_settings(tmp_path, dataset, capsys, monkeypatch):
    out = tmp_path / "p.json"
    real = selfplay.generate_batches

    def killed_after_one_batch(model, prompts, settings, batches, on_batch, skip, **stops):
        def report(b, *rest):
            on_batch(b, *rest)
            raise KeyboardInterrupt

        real(model, prompts, settings, batches, report, skip, **stops)

    monkeypatch.setattr(selfplay, "generate_batches", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        make_preferences.main(args(dataset, out, "--batch-size", "2"))
    monkeypatch.setattr(selfplay, "generate_batches", real)
    assert make_preferences.main(args(dataset, out, "--batch-size", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {selfplay.progress_path(out)} holds unfinished answers made with other settings")
    assert err.endswith("rerun with the same settings to resume, or pass --restart to start over")
    assert make_preferences.main(args(dataset, out, "--batch-size", "3", "--restart")) == 0
    assert len(json.loads(out.read_text())) == 6


@pytest.mark.parametrize(
    "out, message",
    [
        ("p.csv", "--out {out} must end in .json or .jsonl (the preference file's two formats)"),
        ("folder.json", "--out {out} is a folder; name the preference file to write"),
    ],
)
def test_a_bad_out_is_refused_before_any_answer(out, message, tmp_path, dataset, capsys, monkeypatch):
    (tmp_path / "folder.json").mkdir()
    no_generation(monkeypatch)
    out = tmp_path / out
    assert make_preferences.main(args(dataset, out)) == 2
    assert capsys.readouterr().err.strip() == f"error: {message.format(out=out)}"
    assert not out.exists() or out.is_dir()


def test_a_missing_relative_model_path_is_a_missing_path_not_a_download(tmp_path, dataset, capsys, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    no_generation(monkeypatch)
    assert make_preferences.main(["--model", "runs/nonexist", "--dataset", str(dataset), "--out", "p.json"]) == 2
    assert capsys.readouterr().err.strip() == "error: --model runs/nonexist: no such file or folder"


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--limit", "0", "--limit must be a positive integer, got 0"),
        ("--max-new-tokens", "0", "--max-new-tokens must be a positive integer, got 0"),
        ("--temperature", "-1", "--temperature must be a non-negative number, got -1.0"),
    ],
)
def test_range_errors_name_the_option(option, value, message, tmp_path, dataset, capsys):
    assert make_preferences.main([*args(dataset, tmp_path / "p.json"), option, value]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
