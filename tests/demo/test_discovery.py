"""Which runs the demo finds and serves: runs/ folders, Hub repos, a folder that is not a run."""

from __future__ import annotations

import os
import time

import pytest

from gpt2_scratch.demo import DemoApp
from gpt2_scratch.demo import discovery as runs_module
from gpt2_scratch.demo.discovery import RunSource, find_runs, hub_repos, include_run, resolve_run
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.runs import RunPaths, finished_runs

# Handlers show problems as gr.Warning toasts; outside a request Gradio turns them into UserWarnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_resolve_run_explicit_and_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="--run .*nope: no such folder"):
        resolve_run(tmp_path / "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run, problem = resolve_run(None, runs_dir=tmp_path, hub_repo="someone/gpt2-alpaca")
    assert run is None and problem.startswith("Could not download the run from the Hub repo `someone/gpt2-alpaca`")


def test_finished_runs_newest_first_exports_included(tmp_path, make_run):
    runs = tmp_path / "runs"
    old, new = make_run(runs / "old", with_eval=False), make_run(runs / "new", with_eval=False)
    still = make_run(runs / "still-training", with_eval=False)
    still.final.rename(still.best)
    (runs / "notes").mkdir()
    exported = export_run(old.root, runs / "published").folder
    for age, path in (
        (300, old.final / "config.json"),
        (100, new.final / "config.json"),
        (200, exported / "config.json"),
    ):
        os.utime(path, (time.time() - age, time.time() - age))
    assert [r.root.name for r in finished_runs(runs)] == ["new", "published", "old"]
    assert [s.label for s in find_runs(runs)] == ["new", "published", "old"]
    assert finished_runs(tmp_path / "missing") == []
    assert resolve_run(None, runs_dir=runs)[0].root == new.root


def test_several_hub_repos_one_failing(tmp_path, monkeypatch, make_run):
    """GPT2_SCRATCH_HUB_REPO names several repos: each is downloaded; one that fails is said, the others load."""
    snapshots = {"me/a": make_run(tmp_path / "snap-a"), "me/b": make_run(tmp_path / "snap-b")}

    def download(repo):
        if repo not in snapshots:
            raise OSError("offline")
        return snapshots[repo]

    monkeypatch.setattr(runs_module, "download_run", download)
    value = " me/broken, me/a,,me/b , me/a"
    assert hub_repos(value) == ["me/broken", "me/a", "me/b"]
    sources = find_runs(tmp_path / "runs", value)
    assert [(s.label, s.run) for s in sources] == [
        ("me/broken", None),
        ("me/a", snapshots["me/a"]),
        ("me/b", snapshots["me/b"]),
    ]
    assert sources[0].problem == (
        "Could not download the run from the Hub repo `me/broken` (OSError). Check "
        "`GPT2_SCRATCH_HUB_REPO`, or run locally with `python app.py --run runs/<name>`."
    )
    run, problem = resolve_run(None, sources=sources)
    assert run == snapshots["me/a"] and problem is None  # the first repo that loads is served
    app = DemoApp.from_run(run, sources=sources)
    assert app.browser.offered() == ["me/a", "me/b"] and "`me/broken` (OSError)" in app.browser.sources_message()
    assert app.browser.choose_runs(["me/a", "me/b"], None, None, None)[0] == (
        "All 2 runs were evaluated on the same 4 test records."
    )
    run, problem = resolve_run(None, sources=sources[:1])
    assert run is None and problem == sources[0].problem


def test_include_run_puts_the_served_run_first(tmp_path, make_run):
    runs = tmp_path / "runs"
    a, b = make_run(runs / "a", with_eval=False), make_run(runs / "b", with_eval=False)
    elsewhere = make_run(tmp_path / "other" / "a", with_eval=False)
    sources = [RunSource("b", b), RunSource("a", a)]
    assert [s.label for s in include_run(sources, a)] == ["a", "b"]
    assert [s.label for s in include_run(sources, RunPaths(runs / "." / "b"))] == ["b", "a"]  # same folder
    assert [s.label for s in include_run(sources, elsewhere)] == [str(elsewhere.root), "b", "a"]  # name taken
    assert include_run(sources, None) == sources


def test_resolve_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    """Issue 9.10: like evaluate.py, a folder without run.json (or with a broken one) is refused."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^\S*empty is not a run folder: no run\.json$"):
        resolve_run(tmp_path / "empty")
    (tmp_path / "empty" / "run.json").write_text("[]")
    with pytest.raises(ValueError, match=r"run\.json is not a JSON object$"):
        resolve_run(tmp_path / "empty")


def test_an_unreachable_hub_repo_fails_fast_and_is_named(tmp_path, monkeypatch):
    # Not "offline" by the env var: the endpoint does not answer (a closed local port), and nothing is cached.
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    run, problem = resolve_run(None, runs_dir=tmp_path, hub_repo="someone/gpt2-alpaca")
    assert time.monotonic() - start < 5
    assert run is None and problem.startswith("Could not download the run from the Hub repo `someone/gpt2-alpaca`")


def test_a_run_whose_run_json_is_not_json_is_named_as_the_cli_names_it_and_never_offered(tmp_path, make_run, capsys):
    import evaluate

    runs = tmp_path / "runs"
    good = make_run(runs / "good")
    bad = make_run(runs / "bad")
    bad.run_json.write_text('{"name": "bad",', encoding="utf-8")  # cut short
    os.utime(good.final / "config.json", (time.time() - 100, time.time() - 100))  # bad is the newest
    assert evaluate.main(["--run", str(bad.root)]) == 2
    cli = capsys.readouterr().err.strip().removeprefix("error: ")
    assert cli.startswith(f"{bad.run_json} is not valid JSON (")
    sources = find_runs(runs)
    assert [(s.label, s.run) for s in sources] == [("bad", None), ("good", good)]
    assert sources[0].problem == f"`bad` is not usable: {cli}."
    run, problem = resolve_run(None, sources=sources)
    assert run == good and problem is None
    app = DemoApp.from_run(run, sources=sources)
    assert app.browser.offered() == ["good"]  # not offered, so never compared
    assert app.browser.sources_message() == f"⚠️ `bad` is not usable: {cli}."
    message = app.browser.choose_runs(["good", "bad"], None, None, None)[0]
    assert message == "⚠️ unknown run 'bad'; choose from: good"  # refused, not compared


def test_by_default_the_newest_evaluated_run_is_served_else_the_newest(tmp_path, make_run):
    runs = tmp_path / "runs"
    evaluated = make_run(runs / "evaluated")
    newer = make_run(runs / "newer", with_eval=False)
    os.utime(evaluated.final / "config.json", (time.time() - 100, time.time() - 100))
    assert [s.label for s in find_runs(runs)] == ["newer", "evaluated"]
    assert resolve_run(None, runs_dir=runs) == (evaluated, None)  # its results tab has something to show
    app = DemoApp.from_run(evaluated, sources=find_runs(runs))
    assert app.browser.offered() == ["evaluated", "newer"] and app.browser.default_selection() == ["evaluated"]
    evaluated.summary.unlink()
    assert resolve_run(None, runs_dir=runs) == (newer, None)  # none evaluated: the newest
