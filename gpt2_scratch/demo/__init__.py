"""The Gradio demo behind ``app.py``: pretrained GPT-2, the finetuned model, both side by side, the test-set results.

    sources = find_runs("runs", hub_repo)                                                # discovery
    run, problem = resolve_run(args.run, runs_dir="runs", hub_repo=hub_repo, sources=sources)
    app = DemoApp.from_run(run, base=args.base, run_problem=problem, sources=sources)
    url = start(build_demo(app, load_examples("assets/examples.json")), host="127.0.0.1", port=None)

By tab: ``generate/`` (the generation tabs: ``tab``, ``handlers`` with ``DemoApp``, ``models`` with
``LazyModel`` and the checkpoint served, ``backends``, ``prompt_fit``) and ``results/`` (the results
browser: ``tab``, ``handlers`` with ``ResultsBrowser``, and without Gradio ``views``, ``compare``,
``browse``, ``figures``); what both share here: ``layout`` (the page), ``discovery``, ``inputs``,
``errors``, ``config`` (``AppConfig``, app.py's options). Their jobs and rules: docs/design.md. The names below are imported on first use, so that ``demo.config`` loads
without Gradio: ``python app.py --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each exported name and the module that defines it.
_EXPORTS = {
    "DemoApp": "generate.handlers",
    "LazyModel": "generate.models",
    "choose_checkpoint": "generate.models",
    "reports_errors": "errors",
    "plain": "errors",
    "UserError": "inputs",
    "clean_text": "inputs",
    "parse_runs": "inputs",
    "parse_score_bounds": "inputs",
    "parse_settings": "inputs",
    "MAX_RUNS": "results.handlers",
    "ResultsBrowser": "results.handlers",
    "MAX_FILE_SIZE": "layout",
    "QUEUE_SIZE": "config",
    "build_demo": "layout",
    "load_examples": "layout",
    "start": "layout",
    "header_markdown": "results.views",
    "load_run_results": "results.views",
    "visible_response": "results.views",
    "Batched": "generate.backends",
    "PerRequest": "generate.backends",
    "choose_backend": "generate.backends",
    "GRADIO_THREADS": "layout",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # the names, for readers and type checkers (re-exported)
    from gpt2_scratch.demo.config import QUEUE_SIZE  # noqa: F401
    from gpt2_scratch.demo.errors import plain, reports_errors  # noqa: F401
    from gpt2_scratch.demo.generate.backends import Batched, PerRequest, choose_backend  # noqa: F401
    from gpt2_scratch.demo.generate.handlers import DemoApp  # noqa: F401
    from gpt2_scratch.demo.generate.models import LazyModel, choose_checkpoint  # noqa: F401
    from gpt2_scratch.demo.inputs import UserError, clean_text, parse_runs, parse_score_bounds, parse_settings  # noqa: F401
    from gpt2_scratch.demo.layout import GRADIO_THREADS, MAX_FILE_SIZE, build_demo, load_examples, start  # noqa: F401
    from gpt2_scratch.demo.results.handlers import MAX_RUNS, ResultsBrowser  # noqa: F401
    from gpt2_scratch.demo.results.views import header_markdown, load_run_results, visible_response  # noqa: F401


def __getattr__(name: str) -> Any:
    """``gpt2_scratch.demo.DemoApp`` and the other exports: their module is imported now (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # once
    return value
