"""The demo's named endpoints, called over HTTP with gradio_client; app.py's argument errors."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from gradio_client import Client

from gpt2_scratch.demo import DemoApp, build_demo
from gpt2_scratch.prompts import get_prompt_style
from test_demo import greedy, make_run

# Gradio's own queue code trips pandas deprecation warnings; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = dict(max_new_tokens=16, temperature=0.0, top_k=0, top_p=1.0, seed=123)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, run) for the demo served in this process on a free port."""
    run = make_run(tmp_path_factory.mktemp("client") / "run1")
    demo = build_demo(DemoApp.from_run(run)).queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(url, verbose=False, analytics_enabled=False, download_files=False), run
    finally:
        demo.close()


def test_endpoints_are_named(served):
    client, _ = served
    api = client.view_api(print_info=False, return_format="dict")
    named = api["named_endpoints"]
    assert {"/generate_base", "/generate_finetuned", "/generate_side_by_side", "/filter_predictions"} <= set(named)
    params = [p["parameter_name"] for p in named["/generate_finetuned"]["parameters"]]
    assert params == ["instruction", "input", "max_new_tokens", "temperature", "top_k", "top_p", "seed"]


def test_generate_base_streams_over_http(served):
    client, _ = served
    job = client.submit(prompt="Every effort moves you", **SETTINGS, api_name="/generate_base")
    text, status = job.result(timeout=60)
    assert text == greedy("random:tiny", "Every effort moves you", 16)
    assert "new tokens in" in status
    assert len(job.outputs()) >= 10  # one message per token, not only the final answer


def test_generate_finetuned_and_side_by_side(served):
    client, run = served
    prompt = get_prompt_style("alpaca").format("Name a primary color.")
    text, _ = client.predict("Name a primary color.", "", *SETTINGS.values(), api_name="/generate_finetuned")
    assert text == greedy(run.final, prompt, 16)
    base, finetuned, status = client.predict("Name a primary color.", "", *SETTINGS.values(),
                                             api_name="/generate_side_by_side")
    assert base == greedy("random:tiny", prompt, 16) and finetuned == text
    assert status.startswith("New tokens: base ")


def test_bad_input_over_http_keeps_the_server_up(served):
    client, _ = served
    text, status = client.predict("", "", *SETTINGS.values(), api_name="/generate_finetuned")
    assert (text, status) == ("", "⚠️ Type an instruction first.")
    # Values the UI's sliders could not send get the handlers' own messages.
    _, status = client.predict("Hi", 100_000, 0.0, 0, 1.0, 123, api_name="/generate_base")
    assert status == ("⚠️ max new tokens must be a whole number from 1 to 255 (the context is 256 tokens), "
                      "got 100000")
    _, status = client.predict("Hi", 16, "warm", 0, 1.0, 123, api_name="/generate_base")
    assert status == "⚠️ temperature must be a number from 0 to 2, got 'warm'"
    _, _, status = client.predict("Hi", "", 16, 0.0, 0, 1.0, -5, api_name="/generate_side_by_side")
    assert status == "⚠️ seed must be a whole number from 0 to 4294967295, got -5"
    text, _ = client.predict("Every effort moves you", *SETTINGS.values(), api_name="/generate_base")
    assert text  # still serving


def test_filter_predictions_endpoint(served):
    client, _ = served
    table, count = client.predict("quiet", "finetuned.rouge_l", "", "", "score: high to low",
                                  api_name="/filter_predictions")
    assert count == "2 of 4 test records"
    assert [row[0] for row in table["data"]] == [41, 12]


def test_app_cli_errors_exit_2(app_module, tmp_path, capsys):
    app = app_module
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--run", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --run {tmp_path / 'missing'}: no such folder\n"
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--concurrency", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --concurrency must be at least 1, got 0\n"


@pytest.fixture
def app_module():
    sys.path.insert(0, str(ROOT))
    try:
        import app
    finally:
        sys.path.remove(str(ROOT))
    return app


def _launch_kwargs(app_module, monkeypatch, argv):
    """Run app.main(argv) with Blocks.launch replaced: (the Blocks, launch's keyword arguments)."""
    import gradio as gr

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(demo=self, **kw))
    app_module.main(argv)
    return seen.pop("demo"), seen


def test_app_binds_localhost_or_all_interfaces_on_a_space(app_module, tmp_path, monkeypatch):
    run = make_run(tmp_path / "run1", with_eval=False)
    for var in ("SPACE_ID", "GRADIO_SERVER_NAME", "GPT2_SCRATCH_HUB_REPO"):
        monkeypatch.delenv(var, raising=False)
    demo, kw = _launch_kwargs(app_module, monkeypatch, ["--run", str(run.root), "--concurrency", "3"])
    assert kw == {"server_name": "127.0.0.1", "server_port": None, "share": False}
    assert demo._queue.default_concurrency_limit == 3
    monkeypatch.setenv("SPACE_ID", "someone/gpt2-from-scratch")
    _, kw = _launch_kwargs(app_module, monkeypatch, ["--run", str(run.root), "--port", "7999"])
    assert kw == {"server_name": "0.0.0.0", "server_port": 7999, "share": False}


def test_app_takes_its_run_from_the_hub_repo(app_module, tmp_path, monkeypatch):
    import gpt2_scratch.demo as demo_module

    run = make_run(tmp_path / "snapshot")
    asked = []
    monkeypatch.setattr(demo_module, "download_run", lambda repo: asked.append(repo) or run)
    monkeypatch.setenv("GPT2_SCRATCH_HUB_REPO", "someone/gpt2-alpaca")
    monkeypatch.chdir(tmp_path)  # no runs/ here: the Hub repo is the only source
    demo, _ = _launch_kwargs(app_module, monkeypatch, [])
    assert asked == ["someone/gpt2-alpaca"]
    header = demo.config["components"][0]["props"]["value"]
    assert "Run `snapshot` · base model `random:tiny` · finetuned checkpoint `snapshot/final`" in header


def test_generation_runs_under_spaces_gpu_when_available(monkeypatch):
    import types

    from gpt2_scratch.demo import _on_gpu

    def fn():
        return "answer"

    assert _on_gpu(fn) is fn  # no spaces package here
    wrapped = []
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda f: wrapped.append(f) or "gpu"))
    assert _on_gpu(fn) == "gpu" and wrapped == [fn]
