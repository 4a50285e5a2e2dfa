"""publish.py, the command line, against ``FakeHub``: token, dry run, weights dtype, GGUF files, one-line failures."""

from __future__ import annotations

import pytest
import torch

import publish
from gpt2_scratch.runs import HUB_REPO_ENV, RunPaths
from tests.fixtures.publish import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunPaths:
    return make_run(tmp_path_factory.mktemp("publish") / "tiny-run")


def test_cli_publishes_with_the_token_from_the_environment(hub, run, tmp_path, capsys):
    rc = publish.main(["--run", str(run.root), "--repo", "me/cli-model", "--export-dir", str(tmp_path / "export")])
    out = capsys.readouterr().out
    assert rc == 0 and f"published me/cli-model: {hub.url}/me/cli-model" in out
    [commit] = hub.commits
    assert "model.safetensors" in commit["files"]


def test_dry_run_prints_what_goes_where_and_uploads_nothing(hub, run, tmp_path, capsys):
    rc = publish.main(
        [
            "--run",
            str(run.root),
            "--repo",
            "me/tiny-alpaca",
            "--space",
            "me/tiny-demo",
            "--dry-run",
            "--export-dir",
            str(tmp_path / "export"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and hub.requests == []
    assert f"model repo {hub.url}/me/tiny-alpaca (public, created if missing)" in out
    assert f"Space (gradio) {hub.url}/spaces/me/tiny-demo" in out
    for line in (
        "  model.safetensors",
        "  tokenizer.json",
        "  eval/summary.json",
        "  app.py",
        "  gpt2_scratch/publish/hub_upload.py",
        f"Space variable: {HUB_REPO_ENV}=me/tiny-alpaca",
        "token: HF_TOKEN",
    ):
        assert line in out, line
    assert "dry run: nothing was written or uploaded" in out
    assert not (tmp_path / "export").exists()  # the dry run's export was a temporary folder, now gone


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_into_the_run_folder_is_refused_and_changes_nothing(hub, run, capsys):
    before = _tree(run.root)
    rc = publish.main(["--run", str(run.root), "--repo", "me/x", "--dry-run", "--export-dir", str(run.root)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: refusing to replace {run.root}: it is a run folder; choose a new or empty folder"
    assert _tree(run.root) == before


def test_export_dir_holding_someone_elses_files_is_refused(hub, run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for dry in ([], ["--dry-run"]):
        rc = publish.main(["--run", str(run.root), "--repo", "me/x", "--export-dir", str(mine), *dry])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"refusing to replace {mine}: it holds files" in err
        assert (mine / "notes.txt").read_text() == "keep me" and [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert hub.requests == []


def test_an_earlier_export_is_replaced(hub, run, tmp_path, capsys):
    out = tmp_path / "export"
    args = ["--run", str(run.root), "--repo", "me/x", "--export-dir", str(out)]
    assert publish.main(args) == 0
    (out / "stale.txt").write_text("from an earlier export")
    assert publish.main(args) == 0
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()


def test_weights_dtype_bfloat16_publishes_half_size_weights(hub, run, tmp_path, capsys):
    from safetensors.torch import load_file

    args = ["--run", str(run.root), "--repo", "me/half", "--export-dir", str(tmp_path / "export")]
    assert publish.main([*args, "--weights-dtype", "bfloat16"]) == 0
    [commit] = hub.commits
    assert "model.safetensors" in commit["files"]
    state = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.bfloat16}
    with pytest.raises(SystemExit) as exit_info:
        publish.main([*args, "--weights-dtype", "int8"])
    assert exit_info.value.code == 2 and "--weights-dtype: invalid choice: 'int8'" in capsys.readouterr().err


def test_gguf_option_lists_and_uploads_the_files_with_the_model(hub, run, tmp_path, capsys):
    args = ["--run", str(run.root), "--repo", "me/ggufs", "--export-dir", str(tmp_path / "export")]
    assert publish.main([*args, "--gguf", "q8_0", "--gguf", "f16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  model-q8_0.gguf" in out and "  model-f16.gguf" in out and "  Modelfile" in out
    assert hub.requests == []
    assert publish.main([*args, "--gguf", "bf16"]) == 0
    [commit] = hub.commits
    assert {"model-bf16.gguf", "Modelfile", "model.safetensors"} <= set(commit["files"])
    assert not {"model-q8_0.gguf", "model-f16.gguf"} & set(commit["files"])  # the export of this run only
    assert commit["files"]["model-bf16.gguf"][:4] == b"GGUF"
    assert b"FROM ./model-bf16.gguf" in commit["files"]["Modelfile"]


def test_unknown_gguf_type_is_one_line(hub, run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        publish.main(["--run", str(run.root), "--repo", "me/x", "--gguf", "q3", "--export-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: argument --gguf: invalid choice: 'q3' (choose from ")
    assert hub.requests == [] and not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- failures: one line, nothing half-uploaded


def _fails(argv: list[str], capsys) -> str:
    rc = publish.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_no_token_stops_before_anything(hub, run, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # no cached login either
    err = _fails(["--run", str(run.root), "--repo", "me/x", "--export-dir", str(tmp_path / "export")], capsys)
    assert "no Hugging Face token: set HF_TOKEN" in err
    assert hub.requests == [] and not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "option, repo",
    [
        ("--repo", "me/bad name"),
        ("--repo", "just-a-name"),
        ("--repo", "a/b/c"),
        ("--repo", "me/x--y"),
        ("--space", "me/.hidden"),
    ],
)
def test_invalid_repo_name_is_refused(hub, run, tmp_path, capsys, option, repo):
    ids = ["--repo", repo] if option == "--repo" else ["--repo", "me/ok", "--space", repo]
    err = _fails(["--run", str(run.root), *ids, "--export-dir", str(tmp_path / "export")], capsys)
    assert f"{option} {repo!r} is not" in err
    assert hub.requests == [] and not (tmp_path / "export").exists()


def test_unfinished_run_is_refused(hub, tmp_path, capsys):
    running = make_run(tmp_path / "running", status="running")
    err = _fails(["--run", str(running.root), "--repo", "me/x"], capsys)
    assert "is not finished (run.json status is 'running')" in err
    no_final = make_run(tmp_path / "no-final")
    for f in no_final.final.iterdir():
        f.unlink()
    no_final.final.rmdir()
    err = _fails(["--run", str(no_final.root), "--repo", "me/x"], capsys)
    assert "has no final checkpoint" in err
    assert hub.requests == []


def test_run_without_evaluation_is_published_with_a_note(hub, tmp_path, capsys):
    run = make_run(tmp_path / "no-eval", with_eval=False)
    assert publish.main(["--run", str(run.root), "--repo", "me/no-eval"]) == 0
    out = capsys.readouterr().out
    assert "note: the run has no evaluation results" in out
    [commit] = hub.commits
    assert not any(path.startswith("eval/") for path in commit["files"])
    assert b"has not been evaluated yet" in commit["files"]["README.md"]


def test_refused_token_is_one_line(hub, run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_valid")
    err = _fails(["--run", str(run.root), "--repo", "me/x", "--export-dir", str(tmp_path / "export")], capsys)
    assert "creating the model repo me/x: the Hub answered 401: the token was refused" in err
    assert hub.commits == []
