"""app.py, the command line: its arguments and errors, where it binds, which runs it offers, dtypes, batching."""

from __future__ import annotations

import os
import socket
import urllib.request

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
import pytest
from gradio_client import Client

from gpt2_scratch.demo import GRADIO_THREADS, Batched, PerRequest, choose_backend
from gpt2_scratch.demo.generate.backends import DEFAULT_MAX_ROWS, DEFAULT_MAX_WAITING, ZERO_GPU_ENV
from gpt2_scratch.demo.layout import APP_CSS
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.tokenizer import decode, encode
from tests.fixtures.demo import PROMPTS, greedy_args

# Gradio's own queue code trips pandas deprecation warnings; handlers' toasts are UserWarnings outside a request.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*no_silent_downcasting", "ignore:The copy keyword", "ignore::UserWarning"
)

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


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "int4"])
def test_app_starts_and_generates_in_each_dtype(app_module, finished_run, monkeypatch, capsys, dtype):
    served = []
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: served.append(self))
    port = _free_port()
    app_module.main(["--run", str(finished_run.root), "--port", str(port), "--dtype", dtype])
    try:
        assert capsys.readouterr().out.startswith("Serving run `run1`")
        texts = [c["props"].get("value") for c in served[0].config["components"]]
        (line,) = [t for t in texts if isinstance(t, str) and t.startswith("Inference in")]
        assert line.startswith(f"Inference in `{dtype}` (kernels: c_attn ") and " head " in line
        assert line.endswith("; every request to a model joins one shared batch (up to 16 at once).")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False, download_files=False)
        text, status = client.predict(PROMPTS[0], *greedy_args(16), api_name="/generate_base")
        model, _ = load_model("random:tiny", dtype=dtype)
        assert text == decode(generate(model, [encode(PROMPTS[0])], SamplingSettings(max_new_tokens=16))[0])
        assert "16 new tokens in" in status
    finally:
        served[0].close()


def test_app_batching_options(app_module, finished_run, monkeypatch, capsys, launch_app):
    monkeypatch.delenv(ZERO_GPU_ENV, raising=False)
    run = ["--run", str(finished_run.root)]
    demo, kw = launch_app([*run, "--max-batch", "4", "--max-waiting", "6"])
    assert kw["max_threads"] == GRADIO_THREADS + 10
    assert {fn.concurrency_limit for fn in demo.fns.values() if fn.api_name == "generate_base"} == {None}
    assert demo._queue.max_size is None  # no Gradio queue limit with batching: the engines queue
    demo, kw = launch_app([*run, "--no-batching", "--dtype", "float32"])
    assert kw["max_threads"] == GRADIO_THREADS
    assert {fn.concurrency_limit for fn in demo.fns.values() if fn.api_name == "generate_base"} == {"default"}
    texts = [c["props"].get("value") for c in demo.config["components"]]
    (line,) = [t for t in texts if isinstance(t, str) and t.startswith("Inference in")]
    assert line.startswith("Inference in `float32` (kernels: c_attn ") and line.endswith(
        "; each request generates on its own."
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        app_module.main([*run, "--max-batch", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --max-batch must be at least 1, got 0\n"


def test_batching_is_off_on_zero_gpu(finished_run, monkeypatch, capsys, launch_app):
    monkeypatch.setenv(ZERO_GPU_ENV, "true")
    backend, note = choose_backend(batching=True)
    assert isinstance(backend, PerRequest) and "ZeroGPU" in note
    backend, note = choose_backend(batching=False)
    assert isinstance(backend, PerRequest) and note is None
    launch_app(["--run", str(finished_run.root)])
    assert "warning: Batching is off on a ZeroGPU Space" in capsys.readouterr().err
    monkeypatch.setenv(ZERO_GPU_ENV, "false")
    assert isinstance(choose_backend(batching=True)[0], Batched)


def test_with_no_run_the_app_says_there_is_none_and_how_to_make_one(tmp_path, monkeypatch, launch_app, capsys):
    monkeypatch.delenv("GPT2_SCRATCH_HUB_REPO", raising=False)
    monkeypatch.chdir(tmp_path)  # a fresh clone: no runs/
    demo, _ = launch_app([])
    header = demo.config["components"][0]["props"]["value"]
    assert "**No run to serve yet.** Train one with `python finetune.py`" in header and "`none`" not in header
    out, err = capsys.readouterr()
    assert out == "Serving no run (only the base model `gpt2`) at http://127.0.0.1:7860/ (Ctrl-C to stop)\n"
    assert err == (
        "warning: No finished run under runs/. Create one with python finetune.py, "
        "or pick one with python app.py --run runs/<name>.\n"
    )
