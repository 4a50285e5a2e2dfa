"""Uploading an export and the app to the Hub (gpt2_scratch/publish/hub_upload.py), against ``FakeHub``.

``FakeHub`` (tests/fixtures/publish.py) is a local stand-in for the Hub's HTTP
API: the user is ``me``; ``someone/taken`` (model) and ``someone/space`` exist
and belong to someone else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2_scratch.files import MARKER
from gpt2_scratch.publish.hub_upload import PROJECT_ROOT, PublishError, prepare_publish, space_files, upload
from gpt2_scratch.runs import HUB_REPO_ENV, RunPaths
from tests.fixtures.publish import TOKEN, make_run


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
        if p.is_file() and p.name != MARKER
    }
    assert model_commit["files"] == exported  # every file but the local marker, byte for byte, in one commit
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
