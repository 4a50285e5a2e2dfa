"""The demo's Blocks (``build_demo``) and ``start``: the config's endpoints, events and tabs; then over HTTP.

Inspected through ``demo.config`` first; then the demo served in this process on
a free port, its named endpoints called with gradio_client, with app.py's limits
(no uploads, a bounded queue).
"""

from __future__ import annotations

import http.client
import os
import shutil
import threading
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from gradio_client import Client
from gradio_client.utils import QueueError

from gpt2_scratch.demo import MAX_FILE_SIZE, MAX_RUNS, DemoApp, build_demo, load_examples, start
from gpt2_scratch.demo.generate import backends
from gpt2_scratch.demo.results.tab import NO_RUNS
from gpt2_scratch.prompts import get_prompt_style

# Gradio's own queue code trips pandas deprecation warnings; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = dict(max_new_tokens=16, temperature=0.0, top_k=0, top_p=1.0, seed=123)


@pytest.fixture(scope="module")
def app(finished_run) -> DemoApp:
    return DemoApp.from_run(finished_run)


def _components(demo) -> dict[str, dict]:
    """The config's components by elem_id (those that have one)."""
    return {c["props"]["elem_id"]: c for c in demo.config["components"] if c["props"].get("elem_id")}


def _texts(demo) -> list[str]:
    return [c["props"]["value"] for c in demo.config["components"] if isinstance(c["props"].get("value"), str)]


def test_build_demo_names_its_endpoints(app):
    demo = build_demo(app, load_examples(ROOT / "assets" / "examples.json"))
    deps = demo.config["dependencies"]
    names = {d["api_name"] for d in deps if d.get("api_visibility", "public") == "public"}
    assert {"generate_base", "generate_finetuned", "generate_side_by_side", "filter_predictions"} <= names
    # Each tab's Stop button cancels that tab's generation.
    by_name = {d["api_name"]: i for i, d in enumerate(deps)}
    cancelled = {i for d in deps for i in d.get("cancels", [])}
    generations = {by_name["generate_base"], by_name["generate_finetuned"], by_name["generate_side_by_side"]}
    assert generations <= cancelled
    # "Stopped." is written once the cancellation is complete (a failure listener of the generation),
    # not by the Stop click, whose listeners race the cancel request.
    ids = {c["id"]: c["props"].get("elem_id") for c in demo.config["components"]}
    stopped = {d["trigger_after"]: ids[d["outputs"][0]] for d in deps if d.get("trigger_only_on_failure")}
    assert stopped == {
        by_name["generate_base"]: "base-status",
        by_name["generate_finetuned"]: "ft-status",
        by_name["generate_side_by_side"]: "sbs-status",
    }
    stop_clicks = [d for d in deps if any(ids.get(t[0], "").endswith("-stop") for t in d["targets"])]
    assert stop_clicks and all(not d["outputs"] for d in stop_clicks)


def test_the_three_generation_tabs_share_one_layout(app):
    demo = build_demo(app, load_examples(ROOT / "assets" / "examples.json"))
    ids = set(_components(demo))
    for prefix in ("base", "ft", "sbs"):
        assert {f"{prefix}-generate", f"{prefix}-stop", f"{prefix}-status", f"{prefix}-examples"} <= ids
    assert {
        "base-prompt",
        "base-output",
        "ft-instruction",
        "ft-input",
        "ft-output",
        "sbs-instruction",
        "sbs-input",
        "sbs-base-output",
        "sbs-ft-output",
    } <= ids


def test_examples_file():
    prompts, instructions = load_examples(ROOT / "assets" / "examples.json")
    assert len(prompts) >= 3 and all(p.strip() for p in prompts)
    assert len(instructions) >= 3 and all(i.strip() for i, _ in instructions)
    assert any(inp for _, inp in instructions)
    assert load_examples(ROOT / "assets" / "missing.json") == ([], [])


def test_score_bounds_are_checked_on_submit_or_blur_not_per_keystroke(app):
    """Issue 9.16: typing ".5" must not filter (and warn) at "."."""
    demo = build_demo(app)
    components = _components(demo)
    [dep] = [d for d in demo.config["dependencies"] if d["api_name"] == "filter_predictions"]
    targets = {(t[0], t[1]) for t in dep["targets"]}
    for elem_id in ("results-min", "results-max"):
        box = components[elem_id]["id"]
        assert (box, "change") not in targets and (box, "input") not in targets
        assert {(box, "submit"), (box, "blur")} <= targets
    assert (components["results-search"]["id"], "change") in targets  # the search still filters as you type
    assert (components["results-score"]["id"], "input") in targets
    inputs = [
        components[i]["id"]
        for i in ("results-search", "results-score", "results-min", "results-max", "results-order", "results-runs")
    ]
    assert dep["inputs"] == inputs  # the old five parameters first: older clients still work


def test_results_tab_wiring(app):
    """Choosing runs fills everything in order; selecting a table row or dragging across a scatter opens a record."""
    demo = build_demo(app)
    components = _components(demo)
    by_id = {c["id"]: c["props"].get("elem_id") for c in demo.config["components"]}
    deps = demo.config["dependencies"]

    def outputs_of(trigger_elem: str, event: str) -> list[list[str]]:
        return [
            [by_id[o] for o in d["outputs"]]
            for d in deps
            if (components[trigger_elem]["id"], event) in {(t[0], t[1]) for t in d["targets"]}
        ]

    [chosen] = outputs_of("results-runs", "change")
    assert chosen == [
        "results-message",
        "results-summary",
        "results-loss",
        "results-options-message",
        "results-options",
        "results-metric",
        "results-score",
        "results-record",
    ]
    load = [i for i, d in enumerate(deps) if any(t[1] == "load" for t in d["targets"])]
    picker = ["results-none", "results-sources", "results-browser", "results-runs"]
    # When the page opens: the runs offered now (a refresh may have changed them), then the same overview, in
    # one chain (the picker on its own could finish after a visitor's first choice).
    assert [[by_id[o] for o in deps[i]["outputs"]] for i in load] == [picker]
    after = [[by_id[o] for o in d["outputs"]] for d in deps if d.get("trigger_after") == load[0]]
    assert after == [chosen]
    assert not components["results-refresh"]["props"]["visible"]  # this app cannot list its runs again
    for trigger, event in (("results-table", "select"), ("results-scatter", "select"), ("results-length", "select")):
        [picked] = outputs_of(trigger, event)
        assert picked[:4] == ["results-record", "results-selection", "results-record-title", "results-instruction"]
        assert "results-diff-0" in picked and "results-judge-11" in picked
    assert components["results-runs"]["props"]["multiselect"] and components["results-runs"]["props"]["value"] == [
        "run1"
    ]
    assert components["results-runs"]["props"]["max_choices"] == MAX_RUNS
    # The diff: colors for the two kinds of words, and no category tag inside the text.
    diff = components["results-diff-0"]["props"]
    assert diff["color_map"] == {"not in the reference": "#bbf7d0", "missing from the response": "#fecaca"}
    assert diff["show_inline_category"] is False and diff["show_legend"] is True


def test_no_run_is_said_once_without_an_empty_browser(tmp_path, monkeypatch, make_run):
    """Issue 9.18: the message appeared twice, with empty filter widgets and table under it."""
    monkeypatch.chdir(tmp_path)
    demo = build_demo(DemoApp.from_run(None, run_problem="No finished run under `runs/`."))
    assert [t for t in _texts(demo) if "No finished run to compare" in t] == [NO_RUNS]
    assert _components(demo)["results-browser"]["props"]["visible"] is False
    # With a run, the browser is visible; without its eval files the tab says so once the runs are compared.
    assert _components(build_demo(DemoApp.from_run(make_run(tmp_path / "s", with_eval=False))))["results-browser"][
        "props"
    ]["visible"]


def test_score_dropdown_has_room_for_its_longest_choice(app):
    """Issue 9.18: "finetuned ROUGE-L" was clipped under the dropdown's arrow; choices now name the run too."""
    assert _components(build_demo(app))["results-score"]["props"]["min_width"] >= 260


def test_header_and_finetuned_tabs_say_which_checkpoint(tmp_path, make_run):
    """Issue 9.6: a broken final/ is not served silently from best/."""
    run = make_run(tmp_path / "r6", with_eval=False)
    shutil.copytree(run.final, run.best)
    (run.final / "config.json").write_text("not json")
    demo = build_demo(DemoApp.from_run(run))
    header = demo.config["components"][0]["props"]["value"]
    assert "finetuned checkpoint `r6/best` (prompt style `alpaca`)" in header
    assert "⚠️ Serving `best/`, not `final/`: `final/` is unusable (" in header
    notes = [
        t
        for t in _texts(demo)
        if t.endswith("(Expecting value: line 1 column 1 (char 0))).") and "Serving `best/`" in t
    ]
    assert len(notes) == 3  # the header, the finetuned tab and the side-by-side tab


def test_refresh_button_lists_the_runs_again_then_shows_the_chosen_ones(finished_run):
    app = DemoApp.from_run(finished_run, find_sources=lambda: [])
    demo = build_demo(app)
    components = _components(demo)
    by_id = {c["id"]: c["props"].get("elem_id") for c in demo.config["components"]}
    deps = demo.config["dependencies"]
    assert components["results-refresh"]["props"]["visible"]
    [refresh] = [
        i for i, d in enumerate(deps) if (components["results-refresh"]["id"], "click") in map(tuple, d["targets"])
    ]
    assert [by_id[o] for o in deps[refresh]["outputs"]] == [
        "results-none",
        "results-sources",
        "results-browser",
        "results-runs",
    ]
    # Then the chosen runs' overview, then their plots, and so on down the chain.
    [overview] = [i for i, d in enumerate(deps) if d.get("trigger_after") == refresh]
    assert [by_id[o] for o in deps[overview]["outputs"]][:2] == ["results-message", "results-summary"]
    assert any(d.get("trigger_after") == overview for d in deps)
    # The app's own run stays offered after a refresh that finds nothing else.
    assert app.browser.refresh_sources(force=True) and app.browser.offered() == [finished_run.root.name]


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
    # The repetition penalty came last: callers that send the first five settings by position still work.
    assert params == [
        "instruction",
        "input",
        "max_new_tokens",
        "temperature",
        "top_k",
        "top_p",
        "seed",
        "repetition_penalty",
    ]


def test_generate_base_streams_over_http(served, greedy, monkeypatch):
    monkeypatch.setattr(backends, "UPDATE_INTERVAL_S", 0.0)  # every token sent (the tiny model outruns the pacing)
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


def _parents(layout: dict, target: int, path: tuple = ()) -> tuple | None:
    """The ids of the layout nodes above component ``target``, outermost first (None: not in ``layout``)."""
    if layout.get("id") == target:
        return path
    for child in layout.get("children", []):
        found = _parents(child, target, (*path, layout.get("id")))
        if found is not None:
            return found
    return None


def test_stop_is_small_and_plain_until_a_generation_runs(app):
    from gpt2_scratch.demo.generate.tab import _stop_button, _stopped

    demo = build_demo(app)
    components = _components(demo)
    ids = {c["id"]: c["props"].get("elem_id") for c in demo.config["components"]}
    deps = demo.config["dependencies"]
    by_name = {d["api_name"]: i for i, d in enumerate(deps)}
    for prefix, api in (("base", "generate_base"), ("ft", "generate_finetuned"), ("sbs", "generate_side_by_side")):
        stop, go = components[f"{prefix}-stop"]["props"], components[f"{prefix}-generate"]["props"]
        assert (stop["variant"], stop["size"], stop["scale"]) == ("secondary", "sm", 0)
        assert go["variant"] == "primary"
        # Generate turns it red at once; the end of the generation, or its cancellation, turns it back.
        on_go = [
            d for d in deps if (components[f"{prefix}-generate"]["id"], "click") in {tuple(t) for t in d["targets"]}
        ]
        looks = [d for d in on_go if [ids[o] for o in d["outputs"]] == [f"{prefix}-stop"]]
        assert len(looks) == 1 and looks[0]["queue"] is False
        after = [d for d in deps if d.get("trigger_after") == by_name[api]]
        assert sorted([ids[o] for o in d["outputs"]] for d in after) == sorted(
            [[f"{prefix}-stop"], [f"{prefix}-status", f"{prefix}-stop"]]
        )
    assert _stop_button(True).variant == "stop" and _stop_button(False).variant == "secondary"
    assert _stopped()[1].variant == "secondary"


def test_the_loss_plot_and_the_options_table_each_get_the_full_width(app):
    demo = build_demo(app)
    components = _components(demo)
    types = {c["id"]: c["type"] for c in demo.config["components"]}
    loss, options = components["results-loss"], components["results-options"]
    assert loss["type"] == "plot" and components["results-hist"]["type"] == "plot"  # figures: demo.figures
    above = {k: _parents(demo.config["layout"], components[k]["id"]) for k in ("results-loss", "results-options")}
    # Both directly in the browser's column: not squeezed side by side in a row.
    assert above["results-loss"] == above["results-options"]
    assert above["results-loss"][-1] == components["results-browser"]["id"]
    assert "row" not in [types.get(i) for i in above["results-options"]]
    assert options["props"]["max_height"] == 400


def test_css_wraps_unbroken_strings_in_the_record_view_and_scrolls_the_options_table():
    from gpt2_scratch.demo.layout import APP_CSS

    rules = dict(
        (selector.strip(), body.strip()) for selector, body in (r.split("{") for r in APP_CSS.split("}") if "{" in r)
    )
    assert "overflow-wrap: anywhere" in rules["#results-browser .textfield, #results-browser .textfield *"]
    assert "word-break: normal" in rules["#results-browser .textfield, #results-browser .textfield *"]
    assert "overflow-wrap: anywhere" in rules["#results-browser textarea"]
    assert "min-width: 0" in rules['#results-browser [id^="results-row-"] > *']
    assert "overflow-x: auto" in rules["#results-options"]
    assert "max-width: 100%" in rules["#results-loss img, #results-hist img"]
