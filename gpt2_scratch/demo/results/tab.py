"""The results tab's layout: the run picker, the chosen runs' overview and plots, the records table, one record.

Entry point: ``results_tab(demo, browser)``, wired to ``ResultsBrowser``'s handlers
(``results.handlers``; DPO runs add a reward plot); ``filter_predictions`` is the named endpoint (search, score, min, max,
order, runs). Invariant: everything the data or a model wrote is shown as text (Textbox,
HighlightedText, Dataframe, plot tooltips): markup in a response is never rendered.
The layout drawn: docs/design.md.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from gpt2_scratch.demo.results.browse import ORDERS
from gpt2_scratch.demo.results.handlers import DEFAULT_METRIC, MAX_RUNS, NO_RECORD, ResultsBrowser
from gpt2_scratch.demo.results.views import DIFF_COLORS
from gpt2_scratch.eval.metrics import record_metrics
from gpt2_scratch.eval.summary import MODEL_NAMES

# The browsing handlers are quick lookups: none waits for a generation slot, none shows a spinner.
# preprocess=False: the handlers check the raw values themselves (the API may send anything).
# One results event at a time, in the order they were triggered: a chain of updates started by the page's
# load must not finish after (and overwrite) the one a visitor's later choice started. Each step is cheap.
BROWSE_EVENT = {"concurrency_limit": 1, "concurrency_id": "results", "show_progress": "hidden", "preprocess": False}
PRIVATE = {**BROWSE_EVENT, "api_visibility": "private"}
NO_RUNS = (
    "**No finished run to compare. Create one with `python finetune.py`, then evaluate it with "
    "`python evaluate.py --run runs/<name>`.**"
)


def _plots() -> list[gr.components.Component]:
    """[score distributions (a figure), base vs finetuned, score vs reference length (native plots, selectable)];
    their values come from ``plots``."""
    with gr.Row():
        # A matplotlib figure (demo.figures): its legend names every bin, the last one too.
        hist = gr.Plot(format="png", elem_id="results-hist", label="Score distributions")
        scatter = gr.ScatterPlot(
            x="base",
            y="finetuned",
            color="run",
            tooltip=["id", "instruction"],
            elem_id="results-scatter",
            label="Base against finetuned",
        )
    length = gr.ScatterPlot(
        x="reference_words",
        y="score",
        color="series",
        tooltip=["id"],
        x_title="reference length (words)",
        elem_id="results-length",
        label="Score against reference length",
    )
    return [hist, scatter, length]


def _record_view() -> tuple[gr.Dropdown, list[gr.components.Component]]:
    """The record picker, and [title, instruction, input, reference, a row per run, per (run, model) its diff
    and judge reply]: the outputs of ``show_record``."""
    record = gr.Dropdown([], value=None, label="Record", elem_id="results-record", allow_custom_value=False)
    title = gr.Markdown(NO_RECORD, elem_id="results-record-title")
    with gr.Row():
        instruction = gr.Textbox(label="Instruction", lines=2, interactive=False, elem_id="results-instruction")
        input_ = gr.Textbox(label="Input", lines=2, interactive=False, elem_id="results-input")
    reference = gr.Textbox(label="Reference", lines=2, interactive=False, elem_id="results-reference")
    rows, slots = [], []
    for k in range(MAX_RUNS):
        with gr.Row(visible=False, elem_id=f"results-row-{k}") as row:
            rows.append(row)
            for m in range(len(MODEL_NAMES)):
                with gr.Column():
                    slot = k * len(MODEL_NAMES) + m
                    slots.append(
                        gr.HighlightedText(
                            [],
                            color_map=DIFF_COLORS,
                            show_legend=True,
                            show_inline_category=False,
                            visible=False,
                            elem_id=f"results-diff-{slot}",
                        )
                    )
                    slots.append(gr.Textbox(lines=2, interactive=False, visible=False, elem_id=f"results-judge-{slot}"))
    return record, [title, instruction, input_, reference, *rows, *slots]


def results_tab(demo: gr.Blocks, browser: ResultsBrowser) -> None:
    """The "Test-set results" tab, its values loaded with the page (``demo.load``) and on every change of runs.

    With ``browser.can_refresh``, a button lists the runs again (runs finished or
    evaluated while the app runs); a page opened later gets the current list too.
    """
    with gr.Tab("Test-set results", id="results"):
        none = gr.Markdown(NO_RUNS, visible=not browser.offered(), elem_id="results-none")
        sources = gr.Markdown(
            browser.sources_message(), visible=bool(browser.sources_message()), elem_id="results-sources"
        )
        refresh = gr.Button(
            "Look for new runs and results",
            size="sm",
            visible=browser.can_refresh,
            elem_id="results-refresh",
            scale=0,
            min_width=260,
        )
        with gr.Column(visible=bool(browser.offered()), elem_id="results-browser") as column:
            runs, show_after = _browser(demo, browser)
        picker = [none, sources, column, runs]
        # On load the picker first, then the chosen runs, in one chain: a picker running on its own could finish
        # after a visitor's first choice and put the page's first selection back (seen in the browser test).
        show_after(demo.load(browser.picker, [runs], picker, **PRIVATE))
        show_after(refresh.click(browser.refresh, [runs], picker, **PRIVATE))


def _overview() -> tuple[gr.components.Component, ...]:
    """The chosen runs' overview: a message, the summary table, the loss curves and the options that differ."""
    message = gr.Markdown(elem_id="results-message")
    summary = gr.Dataframe(
        interactive=False, wrap=True, label="Summary: one row per run and model", elem_id="results-summary"
    )
    # A matplotlib figure (demo.figures): a panel per training method, its legend below the panels.
    loss = gr.Plot(format="png", elem_id="results-loss", label="Training and validation loss")
    # Full width, below the plot: with several runs the table needs the room (it scrolls sideways beyond).
    options_message = gr.Markdown(elem_id="results-options-message")
    options = gr.Dataframe(
        interactive=False,
        wrap=True,
        max_height=400,
        elem_id="results-options",
        label="Training options that differ (highlighted: unlike the first run's)",
    )
    rewards = gr.LinePlot(
        x="tokens_seen",
        y="value",
        color="series",
        x_title="tokens seen",
        visible=False,  # shown when a chosen run is a DPO run
        label="DPO: validation reward margin and reward accuracy",
        elem_id="results-rewards",
    )
    return message, summary, loss, rewards, options_message, options


def _records_table() -> tuple[gr.components.Component, ...]:
    """The filters over the test records, the filtered table and its CSV export."""
    with gr.Row():
        search = gr.Textbox(
            label="Search text",
            placeholder="word in instruction, input, reference or responses",
            elem_id="results-search",
            scale=3,
        )
        # min_width: room for the longest choice beside the dropdown's arrow.
        score = gr.Dropdown([], value=None, label="Score", elem_id="results-score", min_width=260, scale=2)
        # Textboxes, not gr.Number: blank must mean "no bound", not 0.
        min_score = gr.Textbox(label="Min score", placeholder="blank = none", elem_id="results-min")
        max_score = gr.Textbox(label="Max score", placeholder="blank = none", elem_id="results-max")
        order = gr.Dropdown(list(ORDERS), value=ORDERS[0], label="Sort", elem_id="results-order")
    count = gr.Markdown(elem_id="results-count")
    table = gr.Dataframe(
        interactive=False,
        wrap=True,
        max_height=400,
        elem_id="results-table",
        label="Test records (select a row to read it)",
    )
    with gr.Row():
        export = gr.Button(
            "Export the filtered table as CSV", size="sm", elem_id="results-export", scale=0, min_width=260
        )
        csv_file = gr.File(visible=False, interactive=False, elem_id="results-csv")
    return search, score, min_score, max_score, order, count, table, export, csv_file


def _browser(demo: gr.Blocks, browser: ResultsBrowser) -> tuple[gr.Dropdown, Callable]:
    """The browser's components and events: (the run picker, a function that shows the chosen runs again
    after a given event)."""
    runs = gr.Dropdown(
        browser.offered(),
        value=browser.default_selection(),
        multiselect=True,
        max_choices=MAX_RUNS,
        label=f"Runs to compare (up to {MAX_RUNS})",
        elem_id="results-runs",
    )
    message, summary, loss, rewards, options_message, options = _overview()
    metric = gr.Dropdown(
        [(m.label, m.key) for m in record_metrics()],
        value=DEFAULT_METRIC,
        label="Score to plot",
        elem_id="results-metric",
    )
    plots = _plots()
    selection = gr.Markdown(elem_id="results-selection")
    search, score, min_score, max_score, order, count, table, export, csv_file = _records_table()
    record, record_outputs = _record_view()

    filters = [search, score, min_score, max_score, order, runs]
    # First, so that the endpoint gets this name (the same handler runs again below, unnamed).
    # Score bounds are checked when typed in full (Enter or leaving the box), not at every keystroke:
    # ".5" passes through "." on the way.
    gr.on(
        [search.change, score.input, min_score.submit, min_score.blur, max_score.submit, max_score.blur, order.input],
        browser.filter_predictions,
        filters,
        [table, count],
        api_name="filter_predictions",
        **BROWSE_EVENT,
    ).then(browser.clear_hidden_record, [*filters, record], [record, *record_outputs], **PRIVATE)
    overview = [message, summary, loss, options_message, options, metric, score, record]

    def show_runs(chosen: Any) -> None:
        """After ``chosen`` (an event that ran ``choose_runs``): the chosen runs' plots, table and record."""
        (
            chosen.then(browser.plots, [runs, metric], plots, **PRIVATE)
            .then(browser.reward_curves, [runs], rewards, **PRIVATE)
            .then(browser.redraw, [runs, metric], plots[1:], **PRIVATE)  # see redraw: after the values
            .then(browser.reward_caption, [runs], rewards, **PRIVATE)
            .then(browser.filter_predictions, filters, [table, count], **PRIVATE)
            .then(browser.show_record, [runs, record], record_outputs, **PRIVATE)
        )

    def show_after(event: Any) -> None:
        """After ``event``: everything of the chosen runs, from their overview on."""
        show_runs(event.then(browser.choose_runs, [runs, metric, score, record], overview, **PRIVATE))

    show_runs(runs.change(browser.choose_runs, [runs, metric, score, record], overview, **PRIVATE))
    metric.input(browser.plots, [runs, metric], plots, **PRIVATE).then(
        browser.redraw, [runs, metric], plots[1:], **PRIVATE
    )
    export.click(browser.export_csv, filters, [csv_file], **PRIVATE)
    record.input(browser.show_record, [runs, record], record_outputs, **PRIVATE)
    picked = [record, selection, *record_outputs]
    table.select(browser.select_row, [runs], picked, **PRIVATE)
    plots[1].select(browser.select_scatter, [runs, metric], picked, **PRIVATE)
    plots[2].select(browser.select_length, [runs, metric], picked, **PRIVATE)
    return runs, show_after
