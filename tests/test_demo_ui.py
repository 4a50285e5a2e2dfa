"""The demo's Blocks (``build_demo``), inspected through its config: endpoints, events, what each tab shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gpt2_scratch.demo import MAX_RUNS, DemoApp, build_demo, load_examples
from gpt2_scratch.demo.results_tab import NO_RUNS

ROOT = Path(__file__).resolve().parent.parent


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
    load = [d for d in deps if any(t[1] == "load" for t in d["targets"])]
    picker = ["results-none", "results-sources", "results-browser", "results-runs"]
    # When the page opens: the runs offered now (a refresh may have changed them), and the same overview.
    assert sorted([by_id[o] for o in d["outputs"]] for d in load) == sorted([picker, chosen])
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
