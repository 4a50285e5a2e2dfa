"""The Gradio demo behind ``app.py``: pretrained GPT-2, the finetuned model, both side by side, the test-set results.

    sources = find_runs("runs", hub_repo)                                                # discovery
    run, problem = resolve_run(args.run, runs_dir="runs", hub_repo=hub_repo, sources=sources)
    app = DemoApp.from_run(run, base=args.base, run_problem=problem, sources=sources)
    url = start(build_demo(app, load_examples("assets/examples.json")), host="127.0.0.1", port=None)

Modules: ``layout``, ``generate_tab``, ``results_tab`` (the page); ``generate_handlers`` (``DemoApp``),
``models`` (``LazyModel``, the checkpoint served), ``results_handlers`` (``ResultsBrowser``),
``backends``, ``discovery``; ``views``, ``compare``,
``browse`` (no Gradio); ``inputs``, ``errors``. Their jobs and rules: docs/design.md.
"""

from .backends import Batched, PerRequest, choose_backend
from .errors import plain, reports_errors
from .generate_handlers import DemoApp
from .inputs import UserError, clean_text, parse_runs, parse_score_bounds, parse_settings
from .layout import GRADIO_THREADS, MAX_FILE_SIZE, QUEUE_SIZE, build_demo, load_examples, start
from .models import LazyModel, choose_checkpoint
from .results_handlers import MAX_RUNS, ResultsBrowser
from .views import header_markdown, load_run_results, visible_response

__all__ = [
    "DemoApp",
    "LazyModel",
    "choose_checkpoint",
    "reports_errors",
    "plain",
    "UserError",
    "clean_text",
    "parse_runs",
    "parse_score_bounds",
    "parse_settings",
    "MAX_RUNS",
    "ResultsBrowser",
    "MAX_FILE_SIZE",
    "QUEUE_SIZE",
    "build_demo",
    "load_examples",
    "start",
    "header_markdown",
    "load_run_results",
    "visible_response",
    "Batched",
    "PerRequest",
    "choose_backend",
    "GRADIO_THREADS",
]
