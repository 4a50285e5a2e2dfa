"""The demo's handlers (``DemoApp``), called directly on a tiny run: no server, no browser.

The run is the demo conftest's ``finished_run``: base ``random:tiny``, a finetuned
checkpoint that differs from it, and a handmade eval/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpt2_scratch.demo import DemoApp, choose_checkpoint, clean_text
from gpt2_scratch.demo.discovery import resolve_run
from gpt2_scratch.demo.generate import backends as backends_module
from gpt2_scratch.demo.generate import handlers as handlers_module
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.runs import RunInfo, RunPaths
from gpt2_scratch.tokenizer import decode, encode

# Handlers show problems as gr.Warning toasts; outside a request Gradio turns them into UserWarnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GREEDY = (24, 0.0, 0, 1.0, None)  # max new tokens, temperature, top-k, top-p, seed as the UI sends them


@pytest.fixture(scope="module")
def run(finished_run) -> RunPaths:
    return finished_run


@pytest.fixture(scope="module")
def app(run) -> DemoApp:
    return DemoApp.from_run(run)


# --------------------------------------------------------------------------- generation


@pytest.fixture
def every_token(monkeypatch):
    """Pages updated after every token (the tiny model outruns the default pacing of updates)."""
    monkeypatch.setattr(backends_module, "UPDATE_INTERVAL_S", 0.0)


def test_base_streams_growing_text_equal_to_generate(app, greedy, every_token):
    outputs = list(app.generate_base("Every effort moves you", *GREEDY))
    texts = [text for text, _ in outputs]
    expected = greedy("random:tiny", "Every effort moves you")
    assert texts[-1] == expected and expected
    # Streaming: one yield per token, each text extending the previous one.
    assert len(set(texts)) >= 10
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
    assert outputs[1][1].startswith("Generating…")
    assert outputs[-1][1].startswith(f"{len(encode(expected))} new tokens in ")


def test_finetuned_uses_checkpoint_and_its_prompt_style(app, run, greedy):
    *_, (text, status) = app.generate_finetuned("  Name a primary color. ", "", *GREEDY)
    prompt = get_prompt_style("alpaca").format("Name a primary color.")
    assert text == greedy(run.final, prompt)
    assert text != greedy("random:tiny", prompt)  # really the finetuned weights
    assert "new tokens in" in status and "⚠️" not in status


def test_side_by_side_streams_both_columns_together(app, run, greedy, every_token):
    outputs = list(app.generate_side_by_side("Rewrite the sentence using a simile.", "The cat is quiet.", *GREEDY))
    prompt = get_prompt_style("alpaca").format("Rewrite the sentence using a simile.", "The cat is quiet.")
    base, finetuned, status = outputs[-1]
    assert base == greedy("random:tiny", prompt)
    assert finetuned == greedy(run.final, prompt)
    assert base != finetuned
    assert status.startswith("New tokens: base ") and "finetuned" in status
    # Interleaved: early on, both columns have started and neither is finished.
    early = outputs[3]
    assert early[0] and early[1] and len(early[0]) < len(base) and len(early[1]) < len(finetuned)


def test_sampling_settings_are_applied(app, greedy):
    sampled = (12, 1.0, 40, 0.9, 7)
    first = list(app.generate_base("Every effort moves you", *sampled))[-1][0]
    second = list(app.generate_base("Every effort moves you", *sampled))[-1][0]
    model, _ = load_model("random:tiny")
    ids = generate(
        model,
        [encode("Every effort moves you")],
        SamplingSettings(max_new_tokens=12, temperature=1.0, top_k=40, top_p=0.9, seed=7),
    )[0]
    assert first == second == decode(ids)
    assert first != greedy("random:tiny", "Every effort moves you", 12)


@pytest.mark.parametrize("handler", ["generate_base", "generate_finetuned", "generate_side_by_side"])
def test_empty_text_gives_a_message(app, handler):
    args = ("  \n ",) if handler == "generate_base" else (" ", "some input")
    outputs = list(getattr(app, handler)(*args, *GREEDY))
    assert len(outputs) == 1
    *texts, status = outputs[0]
    assert all(t == "" for t in texts)
    what = "prompt" if handler == "generate_base" else "instruction"
    assert status == f"⚠️ Type {'a' if what == 'prompt' else 'an'} {what} first."


def test_long_prompt_is_cropped_from_the_left_with_a_notice(app):
    prompt = " ".join(f"word{i}" for i in range(300))  # far more than the 256-token context
    ids = encode(prompt)
    *_, (text, status) = app.generate_base(prompt, 56, 0.0, 0, 1.0, None)
    n_cropped = len(ids) - (256 - 56)
    assert (
        f"The prompt is {len(ids)} tokens, half the 256-token context or more: max new tokens is 56, "
        f"and the prompt's first {n_cropped} tokens were dropped"
    ) in status
    model, _ = load_model("random:tiny")
    assert text == decode(generate(model, [ids[n_cropped:]], SamplingSettings(max_new_tokens=56))[0])


def test_control_characters_are_removed_with_a_notice(app, greedy):
    *_, (text, status) = app.generate_base("Every\x00 effort\x1b moves\x07 you", *GREEDY)
    assert text == greedy("random:tiny", "Every effort moves you")
    assert "Removed 3 control character(s) from the prompt." in status
    assert clean_text("a\r\nb\rc\td\u200be\ud800", "x") == ("a\nb\nc\td\u200be", 1)


def test_endoftext_typed_by_a_user_is_plain_text(app):
    *_, (text, _) = app.generate_base("<|endoftext|>", *GREEDY)
    model, _ = load_model("random:tiny")
    literal = [27, 91, 437, 1659, 5239, 91, 29]  # "<|endoftext|>" spelled out in BPE pieces, not id 50256
    assert text == decode(generate(model, [literal], SamplingSettings(max_new_tokens=GREEDY[0]))[0])


@pytest.mark.parametrize(
    "index, value, message",
    [
        (0, "abc", "max new tokens must be a whole number from 1 to 255 (the context is 256 tokens), got 'abc'"),
        (0, 0, "max new tokens must be a whole number from 1 to 255"),
        (0, 256, "max new tokens must be a whole number from 1 to 255"),
        (0, 2.5, "max new tokens must be a whole number"),
        (0, None, "max new tokens must be a whole number"),
        (1, -0.5, "temperature must be a number from 0 to 2, got -0.5"),
        (1, float("nan"), "temperature must be a number from 0 to 2, got nan"),
        (1, "hot", "temperature must be a number from 0 to 2, got 'hot'"),
        (2, -1, "top-k must be a whole number from 0 to 50257"),
        (2, 1.5, "top-k must be a whole number"),
        (3, 0, "top-p must be greater than 0 (1 turns it off), got 0"),
        (3, 1.5, "top-p must be a number from 0 to 1, got 1.5"),
        (4, -1, "seed must be a whole number from 0 to 4294967295, got -1"),
        (4, "x", "seed must be a whole number"),
        (4, True, "seed must be a whole number"),
    ],
)
def test_bad_settings_give_a_message(app, index, value, message):
    settings = list(GREEDY)
    settings[index] = value
    outputs = list(app.generate_base("Every effort moves you", *settings))
    assert len(outputs) == 1 and outputs[0][0] == ""
    assert outputs[0][1].startswith("⚠️ " + message)
    # The same message from the other two tabs.
    assert list(app.generate_finetuned("Say hi.", "", *settings))[0][1].startswith("⚠️ " + message)
    base, finetuned, status = list(app.generate_side_by_side("Say hi.", "", *settings))[0]
    assert base.startswith("[" + message) and finetuned.startswith("[" + message) and message in status


def test_too_long_text_is_refused(app):
    outputs = list(app.generate_finetuned("x" * 20_001, "", *GREEDY))
    assert outputs == [("", "⚠️ the instruction is 20,001 characters long; the limit is 20,000")]
    assert list(app.generate_base(123, *GREEDY)) == [("", "⚠️ the prompt must be text, got int")]


def test_a_bug_in_a_handler_is_one_message_and_one_toast(app, monkeypatch):
    """The one error wrapper: a crash mid-stream ends the stream with a one-line message, shown once."""

    def broken(*args, **kwargs):
        yield [1], "Once"
        raise RuntimeError("boom")

    toasts = []
    monkeypatch.setattr(backends_module, "stream", broken)  # the per-request path's generation.stream
    monkeypatch.setattr(handlers_module.gr, "Warning", toasts.append)
    *_, last = app.generate_base("Every effort moves you", *GREEDY)
    assert last == ("", "⚠️ Generation failed (RuntimeError: boom).")
    assert toasts == ["Generation failed (RuntimeError: boom)."]
    # The results browser's bad input is also one toast, not two.
    toasts.clear()
    _, count = app.browser.filter_predictions("", "finetuned.rouge_l", "high", "", "test-set order")
    assert count.startswith("⚠️ min score must be a number") and len(toasts) == 1


# --------------------------------------------------------------------------- whitespace-only answers (issue 9.17)


@pytest.mark.parametrize("handler", ["generate_base", "generate_finetuned", "generate_side_by_side"])
def test_whitespace_only_answer_shows_a_marker(app, monkeypatch, handler):
    def newlines(model, ids, settings, stop_ids):
        for n in range(1, 5):
            yield [198] * n, "\n" * n  # 198 is "\n"

    monkeypatch.setattr(backends_module, "stream", newlines)
    args = ("Hello",) if handler == "generate_base" else ("Say hi.", "")
    *_, texts_status = getattr(app, handler)(*args, *GREEDY)
    *texts, status = texts_status
    assert texts == ["(only whitespace: 4 tokens, 4 newlines)"] * len(texts)
    assert "4 new tokens in" in status or "base 4, finetuned 4" in status


# --------------------------------------------------------------------------- missing pieces


def test_no_run_says_how_to_create_one(tmp_path, greedy):
    run, problem = resolve_run(None, runs_dir=tmp_path / "runs")
    assert run is None and "python finetune.py" in problem
    app = DemoApp.from_run(None, base="random:tiny", run_problem=problem)
    [(text, status)] = list(app.generate_finetuned("Say hi.", "", *GREEDY))
    assert text == "" and status == f"⚠️ {problem}"
    assert app.browser.offered() == []  # the results tab says how to create a run
    # The base model still answers, alone in the side-by-side tab too.
    assert list(app.generate_base("Every effort moves you", *GREEDY))[-1][0] == greedy(
        "random:tiny", "Every effort moves you"
    )
    base, finetuned, status = list(app.generate_side_by_side("Say hi.", "", *GREEDY))[-1]
    assert base and finetuned == f"[{problem}]" and "New tokens: base " in status


def test_run_without_eval_or_curve_says_which_command(tmp_path, monkeypatch, make_run):
    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "runs" / "r1", with_eval=False, with_metrics=False)
    app = DemoApp.from_run(run)
    message = (
        "No evaluation results for this run yet (no `runs/r1/eval/predictions.jsonl`). "
        "Create them with `python evaluate.py --run runs/r1`."
    )
    assert (
        app.browser.choose_runs(["r1"], None, None, None)[0] == f"r1: {message} No loss curve for r1 (no "
        "evaluations in `metrics.jsonl`)."
    )
    assert resolve_run(None, runs_dir="runs")[0].root.resolve() == run.root  # the newest run under runs/


def test_run_without_checkpoint_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r2").mkdir(parents=True)
    app = DemoApp.from_run(RunPaths(Path("runs/r2")))
    [(_, status)] = list(app.generate_finetuned("Say hi.", "", *GREEDY))
    assert status.startswith("⚠️ No usable finetuned checkpoint in `runs/r2` (")
    assert status.endswith("Create one with `python finetune.py`.")
    assert app.base.source == "gpt2"  # no run.json: the default base model


def test_unloadable_base_model_says_to_pass_a_local_path(run, tmp_path):
    # A file that is there but does not load (a missing one is refused at start-up, issue 19 item 12).
    (tmp_path / "missing").mkdir()
    (tmp_path / "missing" / "model.safetensors").write_bytes(b"not safetensors")
    app = DemoApp.from_run(run, base=str(tmp_path / "missing" / "model.safetensors"))
    [(text, status)] = list(app.generate_base("Hello", *GREEDY))
    assert text == "" and status.startswith("⚠️ Could not load the base model")
    assert "`python app.py --base /path/to/model.safetensors`" in status
    # The finetuned model is unaffected.
    assert list(app.generate_finetuned("Say hi.", "", *GREEDY))[-1][0]


# --------------------------------------------------------------------------- which checkpoint (issue 9.6)


def test_a_published_export_is_served_from_its_root(tmp_path, make_run, greedy):
    """A Hub repo written by publish.py: the model at the root in transformers' layout, no final/."""
    run = make_run(tmp_path / "r")
    exported = RunPaths(export_run(run.root, tmp_path / "snapshot").folder)
    assert not exported.final.exists()
    info, problem, note = choose_checkpoint(exported)
    assert (info.path, info.prompt_style, problem, note) == (exported.root, "alpaca", None, None)
    app = DemoApp.from_run(exported)
    assert app.finetuned.source == str(exported.root) and app.checkpoint_name == "r (exported model)"
    assert app.context == 256 and app.prompt_style.name == "alpaca"
    prompt = get_prompt_style("alpaca").format("Say hi.")
    assert list(app.generate_finetuned("Say hi.", "", *GREEDY))[-1][0] == greedy(run.final, prompt)
    # Its run files are read as a run folder's.
    assert app.browser.choose_runs(["snapshot"], None, None, None)[0] == "4 test records of snapshot."
    # The old layout keeps working: final/ is served.
    assert DemoApp.from_run(run).checkpoint_name == "r/final"
    config = json.loads((exported.root / "config.json").read_text())
    config["gpt2_scratch"]["format_version"] = 99
    (exported.root / "config.json").write_text(json.dumps(config))
    info, problem, _ = choose_checkpoint(exported)
    assert info is None and problem.startswith("The exported model in `") and "format_version" in problem


def test_broken_final_serves_best_and_says_why(tmp_path, make_run, greedy):
    run = make_run(tmp_path / "r")
    shutil.copytree(run.final, run.best)
    (run.final / "config.json").write_text("not json")
    app = DemoApp.from_run(run)
    assert app.finetuned.source == str(run.best)
    assert app.checkpoint_note.startswith("Serving `best/`, not `final/`: `final/` is unusable (")
    assert "config.json is not valid JSON" in app.checkpoint_note
    prompt = get_prompt_style("alpaca").format("Say hi.")
    assert list(app.generate_finetuned("Say hi.", "", *GREEDY))[-1][0] == greedy(run.best, prompt)


def test_run_still_training_serves_best_and_says_so(tmp_path, make_run):
    run = make_run(tmp_path / "r", with_eval=False)
    run.final.rename(run.best)
    run.write_info(RunInfo(name="r", base_model="random:tiny", prompt_style="alpaca", status="running"))
    app = DemoApp.from_run(run)
    assert app.finetuned.source == str(run.best)
    assert app.checkpoint_note == (
        "Serving `best/` (the lowest validation loss so far): the run has no `final/` yet (still training?)."
    )
    assert DemoApp.from_run(make_run(tmp_path / "ok")).checkpoint_note is None  # final/ is used: nothing to say


def test_offline_the_base_tab_says_its_error_once_with_one_hint(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    app = DemoApp.from_run(None)
    [(text, status)] = list(app.generate_base("Hello", *GREEDY))
    assert text == "" and status == (
        "⚠️ Could not load the base model `gpt2`: cannot download 'openai-community/gpt2' from the Hugging Face Hub "
        "(HF_HUB_OFFLINE is set). If you are offline, pass a local copy of the weights: "
        "`python app.py --base /path/to/model.safetensors` (or a folder holding it)."
    )
    assert status.count("Could not load") == 1 and status.count("pass a local") == 1


def test_tokens_within_the_update_interval_go_out_together_and_the_last_update_has_the_whole_answer(
    app, greedy, monkeypatch
):
    monkeypatch.setattr(backends_module, "UPDATE_INTERVAL_S", 3600.0)  # decoding far faster than the page updates
    outputs = list(app.generate_base("Every effort moves you", *GREEDY))
    texts = [text for text, _ in outputs]
    expected = greedy("random:tiny", "Every effort moves you")
    assert len(expected.split()) > 3
    # "Generating…", the first token, the rest at once (the last always goes out), the final status.
    assert texts == ["", texts[1], expected, expected] and expected.startswith(texts[1]) and texts[1] != expected
