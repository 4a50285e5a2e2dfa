"""The results browser's state and handlers: the chosen runs compared, plotted, filtered and read record by record.

Entry point: ``ResultsBrowser(sources, find)``, whose methods are the results tab's event handlers
(``results.tab`` wires them); ``sources`` are ``discovery.RunSource``s. Each run is read once
(``views.load_run_results``) and each selection's ``compare.Comparison`` is cached (``MAX_CACHED``),
so filtering, sorting and opening a record are look-ups. Handlers take raw values, check them
(``inputs``) and report bad input as a one-line message and a toast (``errors.reports_errors``).
A plot's dragged range opens the record nearest its middle (``compare.points_in_range``): Gradio's
plots report a drag, not a click. Design: docs/design.md.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import pandas as pd

from gpt2_scratch.demo.discovery import RunSource
from gpt2_scratch.demo.errors import reports_errors
from gpt2_scratch.demo.inputs import UserError, blank, clean_text, parse_runs, parse_score_bounds
from gpt2_scratch.demo.results.browse import (
    ORDERS,
    csv_filename,
    filter_records,
    record_view,
    score_choices,
    select_rows,
    write_csv,
)
from gpt2_scratch.demo.results.compare import (
    Comparison,
    RunResults,
    compare,
    histogram_frame,
    length_frame,
    option_differences,
    points_in_range,
    reward_frame,
    scatter_frame,
    summary_frame,
)
from gpt2_scratch.demo.results.figures import histogram_figure, loss_curves_figure
from gpt2_scratch.demo.results.views import (
    bin_colors,
    diff_spans,
    judge_label,
    load_run_results,
    plot_metrics,
    record_choices,
    record_title,
    response_label,
    response_slot,
    run_color_maps,
)
from gpt2_scratch.eval.metrics import DEFAULT_RECORD_METRIC, record_metric
from gpt2_scratch.eval.summary import MODEL_NAMES
from gpt2_scratch.train.log import is_dpo_log

MAX_RUNS = 6  # runs compared at once; the record view has a row for each, base and finetuned side by side
RECORD_SLOTS = MAX_RUNS * len(MODEL_NAMES)
RECORD_OUTPUTS = 4 + MAX_RUNS + 2 * RECORD_SLOTS  # title, instruction, input, reference, a row per run, the slots
MAX_CACHED = 8  # comparisons kept, most recently used first
CSV_KEPT = 8  # CSV exports kept on disk (Gradio copies each into its own cache as it sends it)
HISTOGRAM_BINS = 10
DEFAULT_METRIC = DEFAULT_RECORD_METRIC.key
# A refresh lists the runs again at most this often: on a public Space every visitor shares the
# listing, and listing Hub repos downloads them again.
REFRESH_MIN_S = 10.0
NO_RECORD = "Choose a record: select a row of the table, drag across points of a scatter plot, or pick its id."
NO_MATCH = "No record matches the search and filters: change them to see records here."


def _kept(value: Any, choices: list[tuple[str, Any]]) -> Any:
    """``value`` if it is still one of ``choices``, else the first choice (None: no choices)."""
    values = [v for _, v in choices]
    return value if value in values else (values[0] if values else None)


class ResultsBrowser:
    """The runs offered, their comparisons (cached per selection), and the results tab's handlers."""

    def __init__(self, sources: list[RunSource], find: Callable[[], list[RunSource]] | None = None):
        """``sources``: the runs offered; ``find``: lists them again (the refresh button), None: no refresh."""
        self.sources = list(sources)
        self._find = find
        self._found_at = time.monotonic()
        self._results: dict[str, RunResults] = {}
        self._comparisons: OrderedDict[tuple[str, ...], Comparison] = OrderedDict()
        self._lock = threading.Lock()
        self._csv_root: Path | None = None

    # ---- the runs offered

    @property
    def can_refresh(self) -> bool:
        return self._find is not None

    def refresh_sources(self, *, force: bool = False) -> bool:
        """List the runs again: new runs appear, removed ones go, and every run is read afresh
        (one evaluated again shows its new results). At most once every ``REFRESH_MIN_S`` seconds
        unless ``force``; returns whether it listed them."""
        if self._find is None:
            return False
        with self._lock:
            if not force and time.monotonic() - self._found_at < REFRESH_MIN_S:
                return False
            self._found_at = time.monotonic()
        sources = self._find()  # outside the lock: it may download Hub repos
        with self._lock:
            self.sources = list(sources)
            self._results.clear()
            self._comparisons.clear()
        return True

    def picker(self, runs: Any) -> tuple:
        """For the runs offered now: (no-runs note, sources message, browser, run picker) updates.

        The chosen runs that are still offered stay chosen; none left: the default selection.
        Runs on page load (a page opened after a refresh gets the current list) and after a refresh.
        """
        offered = self.offered()
        kept = [r for r in runs if isinstance(r, str) and r in offered] if isinstance(runs, list) else []
        chosen = list(dict.fromkeys(kept))[:MAX_RUNS] or self.default_selection()
        note = self.sources_message()
        # The selection is sent only when it changes: a page-load update that arrives after the visitor's first
        # choice (the tab's components mount when it is first opened) would otherwise put the old one back.
        picked = gr.update(choices=offered) if chosen == runs else gr.update(choices=offered, value=chosen)
        return (
            gr.update(visible=not offered),
            gr.update(value=note, visible=bool(note)),
            gr.update(visible=bool(offered)),
            picked,
        )

    @reports_errors(
        lambda self, status: (gr.skip(), gr.update(value=status, visible=True), gr.skip(), gr.skip()),
        action="Listing the runs",
    )
    def refresh(self, runs: Any) -> tuple:
        """The refresh button: list the runs again (``refresh_sources``), then ``picker``'s updates."""
        self.refresh_sources()
        return self.picker(runs)

    def offered(self) -> list[str]:
        """The names of the runs the picker offers (a Hub repo that failed to download is not one)."""
        return [s.label for s in self.sources if s.run is not None]

    def default_selection(self) -> list[str]:
        """The runs chosen when the page opens: the run the app serves."""
        return self.offered()[:1]

    def sources_message(self) -> str:
        """Why some runs are not offered (Hub repos that could not be downloaded); "" when all are."""
        return "\n\n".join(f"⚠️ {s.problem}" for s in self.sources if s.run is None)

    def comparison(self, runs: Any) -> Comparison:
        """The comparison of the chosen runs (names, in the order chosen), built on first use and kept."""
        labels = parse_runs(runs, self.offered(), MAX_RUNS)
        with self._lock:
            if labels in self._comparisons:
                self._comparisons.move_to_end(labels)
                return self._comparisons[labels]
            by_label = {s.label: s for s in self.sources}
            for label in labels:
                if label not in self._results:
                    self._results[label] = load_run_results(by_label[label])
            cmp = compare([self._results[label] for label in labels])
            self._comparisons[labels] = cmp
            while len(self._comparisons) > MAX_CACHED:
                self._comparisons.popitem(last=False)
            return cmp

    def message(self, cmp: Comparison) -> str:
        """What is compared (records shared, runs left out and why), as Markdown."""
        no_curve = [r.label for r in cmp.runs if not any(m.get("event") == "eval" for m in r.metrics)]
        parts = [cmp.message]
        if no_curve:
            parts.append(f"No loss curve for {', '.join(no_curve)} (no evaluations in `metrics.jsonl`).")
        return " ".join(parts)

    # ---- the chosen runs: overview and plots

    @reports_errors(lambda self, status: (status, *[gr.skip()] * 7), action="Comparing")
    def choose_runs(self, runs: Any, metric: Any, score: Any, record: Any) -> tuple:
        """For the chosen runs: (message, summary table, loss curves, options message, options that differ,
        metric picker, score picker, record picker); the pickers keep their values where those still apply."""
        cmp = self.comparison(runs)
        diff = option_differences(cmp)
        metrics = plot_metrics(cmp)
        scores = score_choices(cmp)
        records = record_choices(cmp)
        summary = summary_frame(cmp, formatted=True)
        if not summary["note"].any():
            summary = summary.drop(columns="note")  # a column for the runs whose eval files could not be used
        return (
            self.message(cmp),
            summary,
            loss_curves_figure(cmp, run_color_maps([r.label for r in cmp.runs])["loss"]),
            diff.message,
            gr.Dataframe(value=diff.styler(), visible=not diff.frame.empty),
            gr.Dropdown(choices=metrics, value=_kept(metric, metrics)),
            gr.Dropdown(choices=scores, value=_kept(score, scores)),
            gr.Dropdown(choices=records, value=_kept(record, records)),
        )

    @reports_errors(lambda self, status: gr.skip(), action="Plotting")
    def reward_curves(self, runs: Any) -> gr.LinePlot:
        """The DPO runs' validation reward margin and accuracy; hidden when no chosen run is a DPO run."""
        cmp = self.comparison(runs)
        frame = reward_frame(cmp)
        colors = run_color_maps([r.label for r in cmp.runs])["rewards"]
        return gr.LinePlot(value=frame, color_map=colors, visible=not frame.empty)

    @reports_errors(lambda self, status: gr.skip(), action="Plotting")
    def reward_caption(self, runs: Any) -> gr.LinePlot:
        """The reward plot's caption, sent after its value so that it redraws (see ``redraw``)."""
        dpo = [r.label for r in self.comparison(runs).runs if is_dpo_log(r.metrics)]
        return gr.LinePlot(caption=f"DPO runs: {', '.join(dpo) or 'none'} · rewards include beta")

    def _metric(self, metric: Any) -> str:
        if blank(metric):
            return DEFAULT_METRIC
        try:
            return record_metric(metric).key
        except ValueError as e:
            raise UserError(str(e)) from None

    @reports_errors(lambda self, status: (gr.skip(), gr.skip(), gr.skip()), action="Plotting")
    def plots(self, runs: Any, metric: Any) -> tuple:
        """(score distributions, base-vs-finetuned scatter, score-vs-reference-length scatter) of ``metric``."""
        cmp = self.comparison(runs)
        m = record_metric(self._metric(metric))
        hist = histogram_frame(cmp, m.key, bins=HISTOGRAM_BINS)
        bins = list(dict.fromkeys(hist["bin"]))
        # A margin around a fixed range: a point on its edge is not cut in half.
        fixed = [m.range[0] - 0.03 * (m.range[1] - m.range[0]), m.range[1] * 1.03] if m.range else None
        length = length_frame(cmp, m.key)
        words = [0, 1.05 * float(length["reference_words"].max()) + 1] if len(length) else None
        colors = run_color_maps([r.label for r in cmp.runs])
        return (
            histogram_figure(hist, [f"{run} · {model}" for run, model in cmp.pairs], bin_colors(bins, m.key), m.label),
            gr.ScatterPlot(
                value=scatter_frame(cmp, m.key),
                x_lim=fixed,
                y_lim=fixed,
                color_map=colors["run"],
                x_title=f"base model: {m.label}",
                y_title=f"finetuned model: {m.label}",
                title=f"{m.label} per record, base against finetuned",
            ),
            gr.ScatterPlot(
                value=length,
                x_lim=words,
                y_lim=fixed,
                y_title=m.label,
                color_map=colors["model"],
                title=f"{m.label} against the reference's length",
            ),
        )

    @reports_errors(lambda self, status: (gr.skip(),) * 2, action="Plotting")
    def redraw(self, runs: Any, metric: Any) -> tuple:
        """Captions of the two scatter plots (base vs finetuned, score vs length) naming the runs and score shown.

        Sent after the plots' new values, on purpose: Gradio puts a new value into
        a drawn plot without redrawing it, so series new to it get no color, and a
        change of any other property redraws it with the data it had. A caption
        that changes after the value makes it redraw with the new data. (The loss
        curves and the score distributions are figures, drawn whole each time.)
        """
        cmp = self.comparison(runs)
        label = record_metric(self._metric(metric)).label
        chosen = f"Runs: {', '.join(r.label for r in cmp.runs) or 'none'}"
        drag = (
            f"{chosen} · {len(cmp.records)} shared records · {label} · "
            "drag across points to open the record nearest the middle"
        )
        return gr.ScatterPlot(caption=drag), gr.ScatterPlot(caption=drag)

    # ---- the records table and its CSV

    def _score(self, cmp: Comparison, score: Any) -> str | None:
        """A score of the table's picker ("run · model · metric"); also the single-run form "finetuned.rouge_l",
        which older clients send, meaning that score of the first chosen run that has the model."""
        if blank(score):
            return None
        choices = [value for _, value in score_choices(cmp)]
        if score in choices:
            return score
        model, dot, metric = str(score).partition(".")
        run = next((r for r, m in cmp.pairs if m == model), None)
        if dot and run is not None and f"{run} · {model} · {metric}" in choices:
            return f"{run} · {model} · {metric}"
        raise UserError(f"unknown score {score!r}; choose one of: {', '.join(choices) or 'none (no records)'}")

    def _filters(self, cmp: Comparison, query: Any, score: Any, min_score: Any, max_score: Any, order: Any) -> tuple:
        """(query, score, low, high, order) for ``browse.filter_records``, checked."""
        query, _ = clean_text(query, "the search text")
        if order not in ORDERS:
            raise UserError(f"unknown order {order!r}; choose one of: {', '.join(ORDERS)}")
        key = self._score(cmp, score)
        if key is None:
            if not (blank(min_score) and blank(max_score)) or order != ORDERS[0]:
                raise UserError("choose a score to filter or sort by")
            return query, None, None, None, order
        lo, hi = parse_score_bounds(key.rsplit(" · ", 1)[-1], min_score, max_score)
        return query, key, lo, hi, order

    @reports_errors(lambda self, status: (pd.DataFrame(columns=["id", "instruction"]), status), action="Filtering")
    def filter_predictions(
        self, query: Any, score: Any, min_score: Any, max_score: Any, order: Any, runs: Any = None
    ) -> tuple[pd.DataFrame, str]:
        """The records table of the chosen runs (default: the run served): records whose text contains ``query``
        and whose ``score`` lies within the bounds (blank: none), in ``order``; and "N of M test records"."""
        cmp = self.comparison(self.default_selection() if runs is None else runs)
        table = filter_records(cmp, *self._filters(cmp, query, score, min_score, max_score, order))
        return table, f"{len(table)} of {len(cmp.records)} test records"

    def clear_hidden_record(
        self, query: Any, score: Any, min_score: Any, max_score: Any, order: Any, runs: Any, record: Any
    ) -> tuple:
        """After a search or filter: (record picker, the record's outputs), cleared when the record shown is not
        among those the table now lists (a search without hits shows no old record); else all left as they are.
        Bad filters are ``filter_predictions``' to report: nothing changes here then."""
        keep = (gr.skip(),) * (1 + RECORD_OUTPUTS)
        try:
            cmp = self.comparison(self.default_selection() if runs is None else runs)
            rows = select_rows(cmp, *self._filters(cmp, query, score, min_score, max_score, order))
        except (UserError, ValueError):
            return keep
        listed = set(cmp.records["id"].to_numpy()[rows].tolist())
        if blank(record) and len(rows) or str(record).strip() in {str(i) for i in listed}:
            return keep
        return (gr.Dropdown(value=None), *self._empty_record(NO_MATCH if not len(rows) else NO_RECORD))

    @reports_errors(lambda self, status: gr.File(value=None, visible=False), action="Exporting")
    def export_csv(self, query: Any, score: Any, min_score: Any, max_score: Any, order: Any, runs: Any) -> gr.File:
        """The filtered table with full texts, every response and every score, as a CSV file to download."""
        cmp = self.comparison(runs)
        table = filter_records(cmp, *self._filters(cmp, query, score, min_score, max_score, order), full=True)
        path = self._csv_folder() / csv_filename(cmp)
        write_csv(path, table)
        n = len(table)
        return gr.File(value=str(path), visible=True, label=f"CSV: {n} record{'s' if n != 1 else ''}")

    def _csv_folder(self) -> Path:
        """A new folder for one export; only the newest ``CSV_KEPT`` are kept."""
        with self._lock:
            if self._csv_root is None:
                self._csv_root = Path(tempfile.mkdtemp(prefix="gpt2_scratch_csv_"))
            folder = Path(tempfile.mkdtemp(dir=self._csv_root))
            old = sorted(self._csv_root.iterdir(), key=lambda p: p.stat().st_mtime)[:-CSV_KEPT]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        return folder

    # ---- one record

    def _empty_record(self, title: str) -> tuple:
        hidden = [gr.Row(visible=False)] * MAX_RUNS
        slots = [gr.HighlightedText(value=[], visible=False), gr.Textbox(value="", visible=False)] * RECORD_SLOTS
        return (title, "", "", gr.Textbox(value="", label="Reference"), *hidden, *slots)

    @reports_errors(lambda self, status: (status, *[gr.skip()] * (3 + MAX_RUNS + 2 * RECORD_SLOTS)), action="Opening")
    def show_record(self, runs: Any, record: Any) -> tuple:
        """One record: (title, instruction, input, reference, a row per run, then per (run, model) the response
        with its word differences against the reference, and the judge's raw reply)."""
        cmp = self.comparison(runs)
        if blank(record):
            return self._empty_record(NO_RECORD)
        try:
            view = record_view(cmp, record)
        except ValueError as e:
            raise UserError(str(e)) from None
        chosen = list(dict.fromkeys(r.run for r in view.responses))
        rows = [gr.Row(visible=k < len(chosen)) for k in range(MAX_RUNS)]
        slots = [
            [gr.HighlightedText(value=[], visible=False), gr.Textbox(value="", visible=False)]
            for _ in range(RECORD_SLOTS)
        ]
        for response in view.responses:
            slots[response_slot(response, chosen)] = [
                gr.HighlightedText(value=diff_spans(response), label=response_label(response), visible=True),
                gr.Textbox(
                    value=response.judge_raw or "", label=judge_label(response), visible=bool(response.judge_raw)
                ),
            ]
        reference = gr.Textbox(value=view.reference, label=f"Reference ({view.reference_tokens} tokens)")
        return (record_title(view), view.instruction, view.input, reference, *rows, *(c for s in slots for c in s))

    @reports_errors(
        lambda self, status: (gr.skip(), status, *[gr.skip()] * (4 + MAX_RUNS + 2 * RECORD_SLOTS)), action="Opening"
    )
    def select_row(self, runs: Any, evt: gr.SelectData) -> tuple:
        """A row of the table was selected: (record picker, selection message, the record's outputs)."""
        row = evt.row_value or []
        if not row:
            raise UserError("Select a row of the table.")
        return (gr.Dropdown(value=row[0]), "", *self.show_record(runs, row[0]))

    def _select_points(self, runs: Any, metric: Any, evt: gr.SelectData, frame: Callable, x: str, what: str) -> tuple:
        cmp = self.comparison(runs)
        key = self._metric(metric)
        try:
            lo, hi = (float(v) for v in evt.index)
        except (TypeError, ValueError):
            raise UserError(f"a selection is a range of two numbers, got {evt.index!r}") from None
        ids = list(dict.fromkeys(points_in_range(frame(cmp, key), x, lo, hi)["id"].tolist()))
        where = what.format(label=record_metric(key).label, lo=f"{min(lo, hi):.3g}", hi=f"{max(lo, hi):.3g}")
        if not ids:
            return (
                gr.skip(),
                f"No point has {where}: drag across a point.",
                *[gr.skip()] * (4 + MAX_RUNS + 2 * RECORD_SLOTS),
            )
        others = f" The others: {', '.join(map(str, ids[1:21]))}{'…' if len(ids) > 21 else ''}." if ids[1:] else ""
        message = (
            f"{len(ids)} record{'s' if len(ids) != 1 else ''} with {where}. "
            f"Showing record {ids[0]}, the nearest the middle of the range.{others}"
        )
        return (gr.Dropdown(value=ids[0]), message, *self.show_record(runs, ids[0]))

    @reports_errors(
        lambda self, status: (gr.skip(), status, *[gr.skip()] * (4 + MAX_RUNS + 2 * RECORD_SLOTS)), action="Selecting"
    )
    def select_scatter(self, runs: Any, metric: Any, evt: gr.SelectData) -> tuple:
        """A drag across the base-vs-finetuned scatter: (record picker, message, the record's outputs)."""
        return self._select_points(runs, metric, evt, scatter_frame, "base", "a base {label} from {lo} to {hi}")

    @reports_errors(
        lambda self, status: (gr.skip(), status, *[gr.skip()] * (4 + MAX_RUNS + 2 * RECORD_SLOTS)), action="Selecting"
    )
    def select_length(self, runs: Any, metric: Any, evt: gr.SelectData) -> tuple:
        """A drag across the score-vs-reference-length scatter: (record picker, message, the record's outputs)."""
        return self._select_points(
            runs, metric, evt, length_frame, "reference_words", "a reference of {lo} to {hi} words"
        )
