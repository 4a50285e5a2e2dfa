"""The demo's fixtures: a tiny finished run, greedy reference answers, app.py, hand-made comparisons."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt2_scratch.demo.results.compare import RunResults, compare
from tests.fixtures.results import PRED_A, PRED_B, SUMMARY_A, info, metrics
from tests.fixtures.runs import GREEDY_TOKENS, write_tiny_run


@pytest.fixture(scope="session")
def make_run():
    """``make_run(root, **options) -> RunPaths``: ``write_tiny_run``, a tiny finished run written at ``root``.

    Base model ``random:tiny``; a "finetuned" checkpoint (prompt style alpaca) whose
    weights differ from it, so a swapped column would show; run.json; metrics.jsonl;
    and a handmade eval/ (four records, both models, ROUGE-L and judge scores).
    """
    return write_tiny_run


@pytest.fixture(scope="session")
def finished_run(make_run, tmp_path_factory):
    """One shared ``make_run`` run (``<tmp>/run1``); tests must not modify it."""
    return make_run(tmp_path_factory.mktemp("finished") / "run1")


@pytest.fixture(scope="session")
def greedy():
    """``greedy(model_source, prompt, n=24) -> str``: the greedy answer that ``generate()`` gives (a reference)."""
    from gpt2_scratch.generate.sampling import SamplingSettings, generate
    from gpt2_scratch.inference import load_model
    from gpt2_scratch.tokenizer import decode, encode

    def answer(model_source: str | Path, prompt: str, n: int = GREEDY_TOKENS) -> str:
        model, _ = load_model(str(model_source))
        return decode(generate(model, [encode(prompt)], SamplingSettings(max_new_tokens=n))[0])

    return answer


# --------------------------------------------------------------------------- app.py, imported in-process


@pytest.fixture
def app_module():
    """The ``app`` module (app.py at the repository root)."""
    import app  # the repository root is on sys.path (pyproject's pythonpath)

    return app


@pytest.fixture
def launch_app(app_module, monkeypatch):
    """``launch_app(argv) -> (Blocks, launch's keyword arguments)``: ``app.main(argv)`` with the server not started."""
    import gradio as gr

    def run(argv):
        seen = {}

        def launch(self, **kw):
            seen.update(demo=self, **kw)
            return None, "http://127.0.0.1:7860/", None

        monkeypatch.setattr(gr.Blocks, "launch", launch)
        monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)
        app_module.main(argv)
        return seen.pop("demo"), seen

    return run


@pytest.fixture
def runs() -> list[RunResults]:
    return [
        RunResults("a", info("a"), SUMMARY_A, PRED_A, metrics(1.0)),
        RunResults(
            "b",
            info("b", lr=1e-4, mask_prompt=True),
            {"num_records": 4, "models": {"finetuned": {"rouge_l": 0.85}}},
            PRED_B,
            metrics(2.0),
        ),
        RunResults(
            "broken", info("broken"), None, [], metrics(3.0), problem="eval/predictions.jsonl: line 3 is not valid JSON"
        ),
    ]


@pytest.fixture
def cmp(runs):
    return compare(runs)
