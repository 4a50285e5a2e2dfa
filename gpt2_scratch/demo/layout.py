"""The app's page: ``build_demo`` lays out the header, the three generation tabs (``generate.tab``)
and the results tab (``results.tab``); ``start`` queues and launches it with the app's limits
(no uploads, a bounded queue) and returns at once; ``app.py`` prints its own line and blocks.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import gradio as gr

from gpt2_scratch.demo.config import QUEUE_SIZE
from gpt2_scratch.demo.generate.handlers import DemoApp
from gpt2_scratch.demo.generate.tab import generation_tab, generation_tabs, settings_accordion
from gpt2_scratch.demo.results.tab import results_tab
from gpt2_scratch.demo.results.views import header_markdown

log = logging.getLogger(__name__)

# The app takes no uploads: anything larger than a form field is refused (HTTP 413).
MAX_FILE_SIZE = "1kb"
# Gradio's default worker threads. A streaming generation holds one while it waits for its next token,
# so with batching ``start`` needs as many more as generations may run at once.
GRADIO_THREADS = 40


# Gradio breaks words anywhere to fit a narrow table header ("Perplexit y") or a highlighted text ("Generati on"):
# words stay whole here (a table scrolls sideways instead). A string with no break in it (a model's run of
# tokens without spaces) wraps anywhere rather than running past its box: ``overflow-wrap: anywhere`` breaks
# only what cannot fit a line, and, unlike ``break-word``, also lets the box itself shrink (its min-content).
# The record view's columns may shrink below their content's width (flex items do not by default).
# The options table scrolls sideways within the page when the runs' columns are wider than it; the figures
# (loss curves, score distributions) shrink to their boxes, legends included.
APP_CSS = """
#results-browser th, #results-browser th * { word-break: normal; overflow-wrap: normal; hyphens: none; }
#results-browser .textfield, #results-browser .textfield * { word-break: normal; overflow-wrap: anywhere; }
#results-browser textarea { word-break: normal; overflow-wrap: anywhere; }
#results-browser [id^="results-row-"] > * { min-width: 0; }
#results-options { max-width: 100%; overflow-x: auto; }
#results-loss img, #results-hist img { max-width: 100%; height: auto; }
"""


def load_examples(path: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """(base-model prompts, (instruction, input) pairs) from the examples file; a missing file gives none."""
    path = Path(path)
    if not path.is_file():
        log.warning("no examples file at %s", path)
        return [], []
    data = json.loads(path.read_text(encoding="utf-8"))
    prompts = [str(p) for p in data.get("prompts", [])]
    instructions = [(str(e["instruction"]), str(e.get("input", ""))) for e in data.get("instructions", [])]
    return prompts, instructions


def _header(app: DemoApp) -> str:
    return header_markdown(
        app.run_name, app.base.source, app.checkpoint_name, app.prompt_style.name, app.checkpoint_note
    )


def _serving_line(app: DemoApp) -> str:
    """The header's second line: the models' inference format (and the evaluation's, when it differs),
    and whether visitors' requests are batched."""
    backend = app.backend
    serving = (
        f"every request to a model joins one shared batch (up to {backend.max_rows} at once)"
        if backend.batching
        else "each request generates on its own"
    )
    line = f"Inference in `{app.dtype}` (kernels: {app.kernel_plan()}); {serving}."
    evaluated = app.eval_dtype()
    if evaluated and evaluated != app.dtype:
        line += (
            f" The test-set results were generated in `{evaluated}`, so answers here can differ from those "
            f"(`python app.py --dtype {evaluated}` gives the evaluated ones)."
        )
    return line


def build_demo(app: DemoApp, examples: tuple[list[str], list[tuple[str, str]]] = ([], [])) -> gr.Blocks:
    """The four-tab Blocks app wired to ``app``'s handlers; ``start`` queues and launches it."""
    with gr.Blocks(title="GPT-2 from scratch") as demo:
        gr.Markdown(_header(app))
        gr.Markdown(_serving_line(app), elem_id="serving")
        settings = settings_accordion(app)
        # With batching, requests reach the engines at once (the engines queue them) instead of Gradio's 2 slots.
        limit = app.backend.gradio_limit
        with gr.Tabs():
            for tab in generation_tabs(app, examples):
                generation_tab(tab, settings, limit)
            results_tab(demo, app.browser)
    return demo


def start(
    demo: gr.Blocks,
    *,
    host: str,
    port: int | None,
    concurrency: int = 2,
    queue_size: int | None = QUEUE_SIZE,
    max_threads: int = GRADIO_THREADS,
) -> str:
    """Queue and launch ``demo`` without blocking (``demo.block_thread()`` waits); returns its local URL.

    No share link, no uploads (``MAX_FILE_SIZE``), at most ``queue_size``
    requests waiting in Gradio's queue (None: no limit, as with batching, where the
    engines queue and refuse): one more gets Gradio's "busy, try again" at once. Gradio's
    own startup lines are silenced; the caller says where the app is. Raises
    OSError when it cannot listen on the port. ``max_threads``: Gradio's worker
    threads (``GRADIO_THREADS`` plus, with batching, the generations' concurrency limit).
    """
    demo.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=MAX_FILE_SIZE,
        quiet=True,
        prevent_thread_lock=True,
        max_threads=max_threads,
        css=APP_CSS,
    )
    return url
