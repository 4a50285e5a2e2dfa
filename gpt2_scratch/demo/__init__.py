"""The Gradio demo: pretrained GPT-2, the finetuned model, both side by side, and the runs' test-set results.

``app.py`` only parses arguments and calls into this package:

    sources = find_runs("runs", hub_repo=os.environ.get(HUB_REPO_ENV))            # runs.py
    run, problem = resolve_run(args.run, runs_dir="runs", sources=sources)
    app = DemoApp.from_run(run, base=args.base, run_problem=problem, sources=sources)
    demo = build_demo(app, load_examples("assets/examples.json"))
    url = start(demo, host="127.0.0.1", port=None)

- ``inputs``: checks of what users type or send (one-line ``UserError``s);
- ``errors``: ``reports_errors``, how a handler's error becomes a message;
- ``views``: a run's files as texts and values for the UI, without Gradio;
- ``handlers``: ``DemoApp``, the shared state and the generation handlers;
- ``backends``: how a generation runs: on its own, or batched with every other
  request to its model (``choose_backend``);
- ``results``: ``ResultsBrowser``, the results tab's state and handlers;
- ``ui`` and ``results_tab``: the layout (``build_demo``) and ``start``.
"""

from .backends import Batched, PerRequest, choose_backend
from .errors import plain, reports_errors
from .generate_handlers import DemoApp, LazyModel, choose_checkpoint
from .inputs import UserError, clean_text, parse_runs, parse_score_bounds, parse_settings
from .layout import GRADIO_THREADS, MAX_FILE_SIZE, QUEUE_SIZE, build_demo, load_examples, start
from .results_handlers import MAX_RUNS, ResultsBrowser
from .views import EvalResults, header_markdown, load_run_results, visible_response

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
    "EvalResults",
    "header_markdown",
    "load_run_results",
    "visible_response",
    "Batched",
    "PerRequest",
    "choose_backend",
    "GRADIO_THREADS",
]
