"""Publishing a run, against a local stand-in for the Hugging Face Hub's HTTP API (no network).

``FakeHub`` answers the calls ``huggingface_hub`` makes for ``create_repo``,
``repo_info``, ``preupload_lfs_files``, ``create_commit`` (README metadata
check, preupload, ndjson commit) and ``add_space_variable``, and records what
arrives. Every file is declared "regular" (sent inside the commit), so no LFS
storage is needed. The user is ``me``; ``someone/taken`` (model) and
``someone/space`` exist and belong to someone else.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_run

import publish
from gpt2_scratch.files import atomic_write_json
from gpt2_scratch.publish.hub_upload import PROJECT_ROOT, PublishError, prepare_publish, space_files, upload
from gpt2_scratch.runs import HUB_REPO_ENV, RunPaths

TOKEN = "hf_fake_write_token"


class FakeHub:
    """The Hub's endpoints that publishing uses, in memory."""

    def __init__(self, owner: str = "me"):
        self.owner = owner
        self.repos: dict[tuple[str, str], dict] = {("model", "someone/taken"): {}, ("space", "someone/space"): {}}
        self.requests: list[tuple[str, str]] = []
        self.commits: list[dict] = []
        self.variables: dict[str, dict[str, str]] = {}
        self.fail_commits_to: set[str] = set()  # repo ids whose commit answers 500
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                return self._reply(*hub.route(self.command, self.path.split("?")[0], body))

            do_GET = do_POST = _handle

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "POST" and path == "/api/repos/create":
            return self._create(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        m = re.fullmatch(r"/api/(model|space)s/([\w.-]+/[\w.-]+)(?:/(preupload|commit|variables)(?:/main)?)?", path)
        if not m:
            return 404, {"error": f"no route for {method} {path}"}
        kind, repo_id, action = m.groups()
        if (kind, repo_id) not in self.repos:
            return 404, {"error": "Repository not found"}
        if action is None and method == "GET":  # repo_info
            return 200, {"id": repo_id, "sha": "0" * 40, "private": False, "siblings": []}
        if repo_id.split("/")[0] != self.owner:
            return 403, {"error": "You don't have the rights to write to this repo"}
        if action == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        if action == "commit":
            return self._commit(kind, repo_id, body)
        if action == "variables":
            payload = json.loads(body)
            self.variables.setdefault(repo_id, {})[payload["key"]] = payload["value"]
            return 200, {
                k: {"value": v, "updatedAt": "2026-01-01T00:00:00.000Z"} for k, v in self.variables[repo_id].items()
            }
        return 404, {"error": "unknown action"}

    def _create(self, payload: dict) -> tuple[int, dict]:
        kind = payload.get("type", "model")
        repo_id = f"{payload.get('organization') or self.owner}/{payload['name']}"
        if repo_id.split("/")[0] != self.owner:
            return 403, {"error": f"You don't have the rights to create a {kind} under this namespace"}
        if (kind, repo_id) in self.repos:
            return 409, {"error": "You already created this repo", "url": f"{self.url}/{repo_id}"}
        self.repos[(kind, repo_id)] = {"visibility": payload.get("visibility"), "sdk": payload.get("sdk")}
        return 200, {"url": f"{self.url}/{'spaces/' if kind == 'space' else ''}{repo_id}"}

    def _commit(self, kind: str, repo_id: str, body: bytes) -> tuple[int, dict]:
        if repo_id in self.fail_commits_to:
            return 500, {"error": "Internal Error"}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header, files = lines[0], lines[1:]
        assert header["key"] == "header" and all(f["key"] == "file" for f in files)
        oid = f"{len(self.commits) + 1:040x}"
        self.commits.append(
            {
                "kind": kind,
                "repo": repo_id,
                "summary": header["value"]["summary"],
                "files": {f["value"]["path"]: base64.b64decode(f["value"]["content"]) for f in files},
            }
        )
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub(monkeypatch):
    """A FakeHub that huggingface_hub talks to: offline mode off for this test (the server is local)."""
    from huggingface_hub import constants

    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", fake.url)  # what a plain HfApi() uses, as publish.py's does
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield fake
    fake.close()


def make_run(root: Path, *, status: str = "finished", with_eval: bool = True) -> RunPaths:
    """A tiny run: random:tiny weights as final/, run.json, and (optionally) an evaluation summary."""
    run = write_tiny_run(
        root, status=status, training={"epochs": 1, "lr": 1e-4}, noise=0.0, with_eval=False, with_metrics=False
    )
    if with_eval:
        models = {
            name: {"rouge_l": score, "perplexity": 10.0 / score} for name, score in (("base", 0.1), ("finetuned", 0.5))
        }
        atomic_write_json(run.summary, {"num_records": 2, "generation": {}, "judge": None, "models": models})
        run.predictions.write_text('{"id": 1}\n')
    return run


def make_app_tree(root: Path) -> Path:
    """The app's files as a Space needs them, plus what must stay out (caches, tests, runs)."""
    for rel in (
        "app.py",
        "requirements.txt",
        "README.md",
        "gpt2_scratch/__init__.py",
        "gpt2_scratch/demo/views.py",
        "assets/examples.json",
        "gpt2_scratch/__pycache__/x.py",
        "tests/test_x.py",
        "runs/r/run.json",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    return root


SPACE_FILES = [
    "app.py",
    "requirements.txt",
    "README.md",
    "gpt2_scratch/__init__.py",
    "gpt2_scratch/demo/views.py",
    "assets/examples.json",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunPaths:
    return make_run(tmp_path_factory.mktemp("publish") / "tiny-run")


def test_upload_sends_every_file_in_one_commit_per_repo_and_sets_the_space_variable(hub, run, tmp_path):
    plan = prepare_publish(
        run.root,
        "me/tiny-alpaca",
        space_id="me/tiny-demo",
        export_dir=tmp_path / "export",
        app_root=make_app_tree(tmp_path / "app"),
    )
    result = upload(plan, token=TOKEN)
    [model_commit, space_commit] = hub.commits
    assert model_commit["repo"] == "me/tiny-alpaca" and model_commit["kind"] == "model"
    assert model_commit["summary"] == "Publish run tiny-run (gpt2_scratch export)"
    exported = {
        p.relative_to(tmp_path / "export").as_posix(): p.read_bytes()
        for p in (tmp_path / "export").rglob("*")
        if p.is_file()
    }
    assert model_commit["files"] == exported  # every file, byte for byte, in one commit
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "run.json", "eval/summary.json"} <= set(
        exported
    )
    assert space_commit["repo"] == "me/tiny-demo" and space_commit["kind"] == "space"
    assert space_commit["files"] == {rel: (tmp_path / "app" / rel).read_bytes() for rel in SPACE_FILES}
    assert hub.repos[("space", "me/tiny-demo")]["sdk"] == "gradio"
    assert hub.variables == {"me/tiny-demo": {HUB_REPO_ENV: "me/tiny-alpaca"}}
    assert result.model_url == f"{hub.url}/me/tiny-alpaca" and result.model_commit == f"{1:040x}"
    assert result.space_url == f"{hub.url}/spaces/me/tiny-demo" and result.space_commit == f"{2:040x}"
    # Both repos are created and sent their files before the first commit.
    first_commit = next(i for i, (_, path) in enumerate(hub.requests) if "/commit/" in path)
    assert sum("/preupload/" in path for _, path in hub.requests[:first_commit]) == 2


def test_private_flag_creates_private_repos_and_rerun_is_accepted(hub, run, tmp_path):
    app = make_app_tree(tmp_path / "app")
    plan = prepare_publish(
        run.root, "me/secret", space_id="me/secret-demo", private=True, export_dir=tmp_path / "export", app_root=app
    )
    upload(plan, token=TOKEN)
    assert hub.repos[("model", "me/secret")]["visibility"] == "private"
    assert hub.repos[("space", "me/secret-demo")]["visibility"] == "private"
    # Publishing again: the repos exist (409, fine), and a new commit goes in.
    plan = prepare_publish(run.root, "me/secret", export_dir=tmp_path / "export", app_root=app)
    upload(plan, token=TOKEN)
    assert [c["repo"] for c in hub.commits] == ["me/secret", "me/secret-demo", "me/secret"]


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
    assert "dry run: nothing was uploaded" in out and (tmp_path / "export" / "README.md").is_file()


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


def test_space_files_are_the_apps_and_nothing_else():
    files = {rel for _, rel in space_files(PROJECT_ROOT)}
    assert {
        "app.py",
        "README.md",
        "requirements.txt",
        "gpt2_scratch/publish/hub_upload.py",
        "gpt2_scratch/model.py",
    } <= files
    assert not any(rel.startswith(("tests/", "runs/", "benchmarks/", ".")) or "__pycache__" in rel for rel in files)


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


@pytest.mark.parametrize("repo, space", [("someone/taken", None), ("me/fine", "someone/space")])
def test_repo_of_someone_else_is_refused_before_any_commit(hub, run, tmp_path, repo, space):
    plan = prepare_publish(
        run.root, repo, space_id=space, export_dir=tmp_path / "export", app_root=make_app_tree(tmp_path / "app")
    )
    with pytest.raises(PublishError) as e:
        upload(plan, token=TOKEN)
    message = str(e.value)
    target = space or repo
    assert f"sending the files to {target}: the Hub answered 403: no write access" in message and "\n" not in message
    assert hub.commits == [] and hub.variables == {}


def test_refused_token_is_one_line(hub, run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_valid")
    err = _fails(["--run", str(run.root), "--repo", "me/x", "--export-dir", str(tmp_path / "export")], capsys)
    assert "creating the model repo me/x: the Hub answered 401: the token was refused" in err
    assert hub.commits == []


def test_space_failing_after_the_model_commit_says_what_was_published(hub, run, tmp_path):
    hub.fail_commits_to.add("me/demo")
    plan = prepare_publish(
        run.root,
        "me/model",
        space_id="me/demo",
        export_dir=tmp_path / "export",
        app_root=make_app_tree(tmp_path / "app"),
    )
    with pytest.raises(PublishError, match="committing to the Space me/demo: the Hub answered 500") as e:
        upload(plan, token=TOKEN)
    assert f"the model repo is published: {hub.url}/me/model" in str(e.value) and "\n" not in str(e.value)
    assert [c["repo"] for c in hub.commits] == ["me/model"] and hub.variables == {}


def test_unreachable_hub_is_one_line(run, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    plan = prepare_publish(run.root, "me/model", export_dir=tmp_path / "export")
    with pytest.raises(
        PublishError, match=r"creating the model repo me/model: cannot reach the Hub at http://127.0.0.1:9"
    ):
        upload(plan, token=TOKEN, api=HfApi(endpoint="http://127.0.0.1:9"))
