"""The Gradio demo: pretrained GPT-2, the finetuned model, both side by side, and the test-set results.

``app.py`` only parses arguments and calls into this package:

    run, problem = resolve_run(args.run, runs_dir="runs", hub_repo=os.environ.get(HUB_REPO_ENV))  # runs.py
    app = DemoApp.from_run(run, base=args.base, run_problem=problem)
    demo = build_demo(app, load_examples("assets/examples.json"))
    url = start(demo, host="127.0.0.1", port=None)

- ``inputs``: checks of what users type or send (one-line ``UserError``s);
- ``views``: a run's files as Markdown, tables and figures, without Gradio;
- ``handlers``: ``DemoApp``, the shared state and the event handlers;
- ``ui``: the layout (``build_demo``) and ``start``.
"""

from .handlers import DemoApp, LazyModel, choose_checkpoint, reports_errors
from .inputs import UserError, clean_text, parse_score_bounds, parse_settings
from .ui import MAX_FILE_SIZE, QUEUE_SIZE, build_demo, load_examples, start
from .views import (
    ORDER_CHOICES,
    SCORE_CHOICES,
    EvalResults,
    header_markdown,
    loss_curve,
    prediction_detail,
    summary_markdown,
    visible_response,
)

__all__ = [
    "DemoApp", "LazyModel", "choose_checkpoint", "reports_errors", "UserError", "clean_text", "parse_score_bounds",
    "parse_settings", "MAX_FILE_SIZE", "QUEUE_SIZE", "build_demo", "load_examples", "start", "ORDER_CHOICES",
    "SCORE_CHOICES", "EvalResults", "header_markdown", "loss_curve", "prediction_detail", "summary_markdown",
    "visible_response",
]
