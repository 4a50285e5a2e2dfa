"""The demo's named endpoints, called over HTTP with gradio_client; app.py's arguments, errors and limits."""

from __future__ import annotations

import http.client
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.utils import QueueError

from gpt2_scratch.demo import GRADIO_THREADS, MAX_FILE_SIZE, DemoApp, build_demo, start
from gpt2_scratch.demo.backends import DEFAULT_MAX_ROWS, DEFAULT_MAX_WAITING
from gpt2_scratch.demo.layout import APP_CSS
from gpt2_scratch.prompts import get_prompt_style

# Gradio's own queue code trips pandas deprecation warnings; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = dict(max_new_tokens=16, temperature=0.0, top_k=0, top_p=1.0, seed=123)


@pytest.fixture(scope="module")
def served(finished_run):
    """(client, run, url) for the demo served in this process on a free port, with app.py's limits."""
    demo = build_demo(DemoApp.from_run(finished_run))
    url = start(demo, host="127.0.0.1", port=None)
    try:
        yield Client(url, verbose=False, analytics_enabled=False, download_files=False), finished_run, url
    finally:
        demo.close()


def test_endpoints_are_named(served):
    client, _, _ = served
    api = client.view_api(print_info=False, return_format="dict")
    named = api["named_endpoints"]
    assert {"/generate_base", "/generate_finetuned", "/generate_side_by_side", "/filter_predictions"} <= set(named)
    params = [p["parameter_name"] for p in named["/generate_finetuned"]["parameters"]]
    assert params == ["instruction", "input", "max_new_tokens", "temperature", "top_k", "top_p", "seed"]


def test_generate_base_streams_over_http(served, greedy):
    client, _, _ = served
    job = client.submit(prompt="Every effort moves you", **SETTINGS, api_name="/generate_base")
    text, status = job.result(timeout=60)
    assert text == greedy("random:tiny", "Every effort moves you", 16)
    assert "new tokens in" in status
    assert len(job.outputs()) >= 10  # one message per token, not only the final answer


def test_generate_finetuned_and_side_by_side(served, greedy):
    client, run, _ = served
    prompt = get_prompt_style("alpaca").format("Name a primary color.")
    text, _ = client.predict("Name a primary color.", "", *SETTINGS.values(), api_name="/generate_finetuned")
    assert text == greedy(run.final, prompt, 16)
    base, finetuned, status = client.predict(
        "Name a primary color.", "", *SETTINGS.values(), api_name="/generate_side_by_side"
    )
    assert base == greedy("random:tiny", prompt, 16) and finetuned == text
    assert status.startswith("New tokens: base ")


def test_bad_input_over_http_keeps_the_server_up(served):
    client, _, _ = served
    text, status = client.predict("", "", *SETTINGS.values(), api_name="/generate_finetuned")
    assert (text, status) == ("", "⚠️ Type an instruction first.")
    # Values the UI's sliders could not send get the handlers' own messages.
    _, status = client.predict("Hi", 100_000, 0.0, 0, 1.0, 123, api_name="/generate_base")
    assert status == ("⚠️ max new tokens must be a whole number from 1 to 255 (the context is 256 tokens), got 100000")
    _, status = client.predict("Hi", 16, "warm", 0, 1.0, 123, api_name="/generate_base")
    assert status == "⚠️ temperature must be a number from 0 to 2, got 'warm'"
    _, _, status = client.predict("Hi", "", 16, 0.0, 0, 1.0, -5, api_name="/generate_side_by_side")
    assert status == "⚠️ seed must be a whole number from 0 to 4294967295, got -5"
    text, _ = client.predict("Every effort moves you", *SETTINGS.values(), api_name="/generate_base")
    assert text  # still serving


def test_filter_predictions_endpoint(served):
    client, _, _ = served
    # As older clients call it: five values, the single-run score name; the runs default to the run served.
    table, count = client.predict(
        "quiet", "finetuned.rouge_l", "", "", "score: high to low", api_name="/filter_predictions"
    )
    assert count == "2 of 4 test records"
    assert [row[0] for row in table["data"]] == [41, 12]
    # With the runs named; a record without that score has an empty cell.
    table, count = client.predict(
        "", "run1 · base · judge_score", "", "", "score: low to high", ["run1"], api_name="/filter_predictions"
    )
    assert table["headers"] == ["id", "instruction", "run1 · base", "run1 · finetuned"]
    assert [row[0] for row in table["data"]] == [41, 7, 12, 30] and table["data"][3][2:] == [None, 70]
    _, count = client.predict(
        "", "run1 · base · judge_score", "200", "", "test-set order", ["run1"], api_name="/filter_predictions"
    )
    assert count == "⚠️ min score must be a number from 0 to 100 for Judge score (0–100), got '200'"
    _, count = client.predict("", "", "", "", "test-set order", ["elsewhere"], api_name="/filter_predictions")
    assert count == "⚠️ unknown run 'elsewhere'; choose from: run1"


def test_filter_predictions_parameters(served):
    client, _, _ = served
    params = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/filter_predictions"][
        "parameters"
    ]
    assert [p["parameter_name"] for p in params] == ["query", "score", "min_score", "max_score", "order", "runs"]
    assert params[-1]["parameter_has_default"] and params[-1]["parameter_default"] == ["run1"]


def _post_file(url: str, size: int) -> int | None:
    """HTTP status of a multipart POST of ``size`` bytes to Gradio's upload route.

    None: the server closed the connection before taking the whole body (what a
    server does when it refuses a large body early: the client's send fails).
    """
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + b"\0" * size
        + f"\r\n--{boundary}--\r\n".encode()
    )
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/gradio_api/upload",
            body=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        return conn.getresponse().status
    except (ConnectionResetError, BrokenPipeError):
        return None
    finally:
        conn.close()


def test_uploads_are_refused(served, tmp_path):
    """Issue 9.19: the app takes no uploads; an anonymous 20 MB POST used to be stored (HTTP 200)."""
    _, _, url = served
    assert MAX_FILE_SIZE == "1kb"
    assert _post_file(url, 2000) == 413
    assert _post_file(url, 20 * 1024 * 1024) in (413, None)
    assert _post_file(url, 100) == 200  # a form-field-sized body still passes: the limit is what refused
    with urllib.request.urlopen(url, timeout=10) as response:  # and the server is still up
        assert response.status == 200


def test_a_full_queue_says_busy_at_once(finished_run):
    """Issue 9.19: with one generation running and ``queue_size`` waiting, the next request is refused at once."""
    app = DemoApp.from_run(finished_run)
    release = threading.Event()
    real_get = app.base.get

    def slow_get():
        release.wait(60)
        return real_get()

    app.base.get = slow_get
    demo = build_demo(app)
    url = start(demo, host="127.0.0.1", port=None, concurrency=1, queue_size=1)
    client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
    try:
        running = client.submit("Hi", *SETTINGS.values(), api_name="/generate_base")
        _wait_until(lambda: running.status().code.name == "PROCESSING")
        waiting = client.submit("Hi", *SETTINGS.values(), api_name="/generate_base")
        _wait_until(lambda: waiting.status().code.name == "IN_QUEUE")
        refused = client.submit("Hi", *SETTINGS.values(), api_name="/generate_base")
        with pytest.raises(QueueError, match="Queue is full! Please try again."):  # the browser: "busy, try again"
            refused.result(timeout=30)
        release.set()
        assert running.result(timeout=60)[0] and waiting.result(timeout=60)[0]  # the others are served
    finally:
        release.set()
        demo.close()


def _wait_until(condition, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


# --------------------------------------------------------------------------- app.py


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


def test_app_refuses_a_folder_without_run_json(app_module, tmp_path, capsys):
    """Issue 9.10: it used to start, show "finetuned checkpoint none" and download gpt2."""
    (tmp_path / "notarun").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        app_module.main(["--run", str(tmp_path / "notarun")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'notarun'} is not a run folder: no run.json\n"


def test_app_binds_localhost_or_all_interfaces_on_a_space(tmp_path, monkeypatch, make_run, launch_app):
    run = make_run(tmp_path / "run1", with_eval=False)
    for var in ("SPACE_ID", "GRADIO_SERVER_NAME", "GPT2_SCRATCH_HUB_REPO"):
        monkeypatch.delenv(var, raising=False)
    demo, kw = launch_app(["--run", str(run.root), "--concurrency", "3"])
    # Batching is on by default: a streaming generation holds a Gradio thread while it waits for a token.
    threads = GRADIO_THREADS + DEFAULT_MAX_ROWS + DEFAULT_MAX_WAITING
    limits = {
        "share": False,
        "max_file_size": "1kb",
        "quiet": True,
        "prevent_thread_lock": True,
        "max_threads": threads,
        "css": APP_CSS,
    }
    assert kw == {"server_name": "127.0.0.1", "server_port": None, **limits}
    assert demo._queue.default_concurrency_limit == 3
    assert demo._queue.max_size is None  # batching: the engines queue a burst, not Gradio (issue 19 item 18)
    monkeypatch.setenv("SPACE_ID", "someone/gpt2-from-scratch")
    demo, kw = launch_app(["--run", str(run.root), "--port", "7999", "--queue-size", "4", "--no-batching"])
    assert kw == {"server_name": "0.0.0.0", "server_port": 7999, **limits, "max_threads": GRADIO_THREADS}
    assert demo._queue.max_size == 4


def _runs_offered(demo) -> list:
    [picker] = [c for c in demo.config["components"] if c["props"].get("elem_id") == "results-runs"]
    return [choice[1] for choice in picker["props"]["choices"]]


def test_app_takes_its_run_from_the_hub_repo(tmp_path, monkeypatch, make_run, launch_app):
    import gpt2_scratch.demo.discovery as runs_module

    run = make_run(tmp_path / "snapshot")
    asked = []
    monkeypatch.setattr(runs_module, "download_run", lambda repo: asked.append(repo) or run)
    monkeypatch.setenv("GPT2_SCRATCH_HUB_REPO", "someone/gpt2-alpaca")
    monkeypatch.chdir(tmp_path)  # no runs/ here: the Hub repo is the only source
    demo, _ = launch_app([])
    assert asked == ["someone/gpt2-alpaca"]  # downloaded once
    header = demo.config["components"][0]["props"]["value"]
    assert "Run `snapshot` · base model `random:tiny` · finetuned checkpoint `snapshot/final`" in header
    assert _runs_offered(demo) == ["someone/gpt2-alpaca"]


def test_app_offers_the_runs_of_several_hub_repos(tmp_path, monkeypatch, make_run, capsys, launch_app):
    import gpt2_scratch.demo.discovery as runs_module

    snapshots = {"me/a": make_run(tmp_path / "a"), "me/b": make_run(tmp_path / "b")}

    def download(repo):
        if repo not in snapshots:
            raise ConnectionError("offline")
        return snapshots[repo]

    monkeypatch.setattr(runs_module, "download_run", download)
    monkeypatch.setenv("GPT2_SCRATCH_HUB_REPO", "me/gone,me/a, me/b")
    monkeypatch.chdir(tmp_path)
    demo, _ = launch_app([])
    assert _runs_offered(demo) == ["me/a", "me/b"]
    assert "Run `a` · " in demo.config["components"][0]["props"]["value"]  # the first repo that loads is served
    err = capsys.readouterr().err
    assert err == (
        "warning: Could not download the run from the Hub repo me/gone (ConnectionError). Check "  # plain text
        "GPT2_SCRATCH_HUB_REPO, or run locally with python app.py --run runs/<name>.\n"
    )
    texts = [c["props"].get("value") for c in demo.config["components"]]
    assert any(
        isinstance(t, str) and t.startswith("⚠️ Could not download the run from the Hub repo `me/gone`") for t in texts
    )  # said in the results tab too


def test_app_offers_every_finished_run_under_runs_dir(tmp_path, monkeypatch, make_run, launch_app):
    monkeypatch.delenv("GPT2_SCRATCH_HUB_REPO", raising=False)
    for name in ("first", "second"):
        make_run(tmp_path / "elsewhere" / name, with_eval=False)
    other = make_run(tmp_path / "other", with_eval=False)
    demo, _ = launch_app(["--runs-dir", str(tmp_path / "elsewhere")])
    assert _runs_offered(demo) == ["second", "first"]  # newest first; the newest is served
    assert "Run `second`" in demo.config["components"][0]["props"]["value"]
    demo, _ = launch_app(["--runs-dir", str(tmp_path / "elsewhere"), "--run", str(other.root)])
    assert _runs_offered(demo) == ["other", "second", "first"]  # --run is offered too, first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_prints_its_own_line_not_gradios_share_hint(app_module, finished_run, monkeypatch, capsys):
    """Issue 9.18: "To create a public link, set `share=True`" was printed although the app has no share option."""
    served = []
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: served.append(self))
    port = _free_port()
    app_module.main(["--run", str(finished_run.root), "--port", str(port)])
    try:
        out = capsys.readouterr().out
        assert out == f"Serving run `run1` at http://127.0.0.1:{port}/ (Ctrl-C to stop)\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
    finally:
        served[0].close()


def test_busy_port_is_one_line_naming_port(app_module, finished_run, monkeypatch, capsys):
    """Issue 9.9: an 11-line traceback whose hint named Gradio's launch()."""
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: pytest.fail("the app started on a busy port"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            app_module.main(["--run", str(finished_run.root), "--port", str(port)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (the port is in use "
        "or not allowed); pick another with --port N\n"
    )


def test_port_problem_without_port(app_module):
    error = OSError("Cannot find empty port in range: 7860-7959. You can specify a different port by setting ...")
    assert app_module.port_problem(error, "0.0.0.0", None) == (
        "no free port from 7860 to 7959 on 0.0.0.0; pick one with --port N"
    )
    assert app_module.port_problem(OSError("disk full"), "0.0.0.0", None) is None


def test_generation_runs_under_spaces_gpu_when_available(monkeypatch):
    import types

    from gpt2_scratch.demo.generate_tab import _on_gpu

    def fn():
        return "answer"

    assert _on_gpu(fn) is fn  # no spaces package here
    wrapped = []
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda f: wrapped.append(f) or "gpu"))
    assert _on_gpu(fn) == "gpu" and wrapped == [fn]
