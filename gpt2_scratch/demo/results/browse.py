"""Browsing compared runs record by record: the filtered records table, its CSV, and one record's answers.

    filter_records(cmp, "color", "run-a · finetuned · rouge_l", 0.5, None, ORDERS[1])  # gr.Dataframe
    csv_bytes(filter_records(cmp, ..., full=True)), csv_filename(cmp)                   # the download
    view = record_view(cmp, record_id)  # every response beside the reference; .responses[0].diff: spans

Everything works on a ``compare.Comparison`` built once per selection, so a call only filters what
is already indexed (timings: docs/performance.md). Scores are named "<run> · <model> · <metric key>"
(``score_choices``; the keys of ``metrics.record_metrics``); ``record_html`` gives a view as escaped HTML.
"""

from __future__ import annotations

import difflib
import html
import io
import os
import re
import string
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gpt2_scratch.demo.results.compare import Comparison
from gpt2_scratch.eval.metrics import DEFAULT_RECORD_METRIC, RESPONSE_LENGTH, record_metrics
from gpt2_scratch.files import atomic_write_bytes
from gpt2_scratch.tokenizer import encode

ORDERS = ("test-set order", "score: high to low", "score: low to high")


# --------------------------------------------------------------------------- the records table


def score_choices(cmp: Comparison) -> list[tuple[str, str]]:
    """(label, value) of every score present, for a dropdown; values are what ``filter_records`` takes."""
    return [
        (f"{run} · {model} · {m.label}", f"{run} · {model} · {m.key}")
        for run, model in cmp.pairs
        for m in record_metrics()
        if not np.isnan(cmp.scores[run, model, m.key]).all()
    ]


def _score_key(cmp: Comparison, score: str) -> tuple[str, str, str]:
    keys = {f"{run} · {model} · {metric}": (run, model, metric) for run, model, metric in cmp.scores}
    if score not in keys:
        raise ValueError(f"unknown score {score!r}; choose one of: {', '.join(keys) or 'none (no records)'}")
    return keys[score]


def _table(cmp: Comparison, metric: str) -> pd.DataFrame:
    """The table of one metric, built once: ``id``, ``instruction`` (shortened), one column per "run · model"."""
    if metric not in cmp.cache:
        data = {"id": cmp.records["id"].to_numpy(), "instruction": cmp.short_instructions}
        data.update({f"{run} · {model}": np.round(cmp.scores[run, model, metric], 3) for run, model in cmp.pairs})
        cmp.cache[metric] = pd.DataFrame(data)
    return cmp.cache[metric]


def _bound(name: str, value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        bound = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(bound):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return bound


def select_rows(
    cmp: Comparison, query: str = "", score: str | None = None, lo: Any = None, hi: Any = None, order: str = ORDERS[0]
) -> np.ndarray:
    """Row numbers of ``cmp.records`` that match, in order (see ``filter_records``)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of: {', '.join(ORDERS)}")
    lo, hi = _bound("min score", lo), _bound("max score", hi)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min score ({lo:g}) is above max score ({hi:g})")
    if score is None and (lo is not None or hi is not None or order != ORDERS[0]):
        raise ValueError("choose a score to filter or sort by")
    keep = np.ones(len(cmp.records), dtype=bool)
    needle = (query or "").strip().casefold()
    if needle:
        keep &= np.fromiter((needle in t for t in cmp.search_text), dtype=bool, count=len(cmp.search_text))
    values = cmp.scores[_score_key(cmp, score)] if score is not None else None
    if lo is not None:
        keep &= values >= lo  # NaN compares False: a record without the score is filtered out
    if hi is not None:
        keep &= values <= hi
    rows = np.flatnonzero(keep)
    if order != ORDERS[0]:
        v = values[rows]
        key = np.where(np.isnan(v), np.inf, -v if order == ORDERS[1] else v)
        rows = rows[np.argsort(key, kind="stable")]  # no score last; ties keep test-set order
    return rows


def filter_records(
    cmp: Comparison,
    query: str = "",
    score: str | None = None,
    lo: Any = None,
    hi: Any = None,
    order: str = ORDERS[0],
    *,
    full: bool = False,
) -> pd.DataFrame:
    """The records table: records whose text contains ``query`` (case-insensitive; instruction, input,
    reference and every response) and whose ``score`` (a ``score_choices`` value) is within [lo, hi], in ``order``.

    The table shows ``id``, the shortened instruction and the chosen score's metric for every run and model
    (ROUGE-L when no score is chosen). ``full`` (for the CSV download) gives the full texts and, for every
    run and model, the response and every score. A bad argument is a one-line ``ValueError``.
    """
    rows = select_rows(cmp, query, score, lo, hi, order)
    if full:
        return _full_table(cmp).iloc[rows].reset_index(drop=True)
    metric = _score_key(cmp, score)[2] if score is not None else DEFAULT_RECORD_METRIC.key
    return _table(cmp, metric).iloc[rows].reset_index(drop=True)


def _full_table(cmp: Comparison) -> pd.DataFrame:
    if "_full" not in cmp.cache:
        data = {c: cmp.records[c].to_numpy() for c in ("id", "instruction", "input", "reference")}
        for run, model in cmp.pairs:
            data[f"{run} · {model} · response"] = [a["response"] for a in cmp.responses[run, model]]
            data.update({f"{run} · {model} · {m.key}": cmp.scores[run, model, m.key] for m in record_metrics()})
        cmp.cache["_full"] = pd.DataFrame(data)
    return cmp.cache["_full"]


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, with a leading ``'`` (shown as text); else as is."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as UTF-8 CSV (no index column), its text cells and headers made inert for spreadsheets.

    Responses, instructions and run names come from model output and from Hub
    repos: a cell like ``=HYPERLINK(...)`` must open as text, not run.
    """
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    safe = frame.assign(**{c: frame[c].map(_inert) for c in text})
    safe.columns = [_inert(str(c)) for c in frame.columns]
    buffer = io.StringIO()
    safe.to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")


def csv_filename(cmp: Comparison) -> str:
    """A download name naming the runs, e.g. ``predictions_run-a_vs_run-b.csv`` (safe characters only)."""
    names = "_vs_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", r.label).strip("-.") or "run" for r in cmp.runs)
    return f"predictions_{names[:120] or 'none'}.csv"


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write ``frame`` as CSV to ``path``, atomically."""
    atomic_write_bytes(path, csv_bytes(frame))


# --------------------------------------------------------------------------- one record


def _diff_key(word: str) -> str:
    # "Red." in the answer matches "red" in the reference: compare words, not their case or punctuation.
    return word.casefold().strip(string.punctuation) or word


def word_diff(reference: str, response: str) -> list[tuple[str, str | None]]:
    """``response`` against ``reference`` word by word, as (text, label) spans for ``gr.HighlightedText``.

    Labels: None for words in both, "+" for response words not in the reference, "-" for reference
    words the response lacks (shown before the "+" words that replace them). Words match when equal
    ignoring case and surrounding punctuation; the response's spelling is shown. Spans are separated
    by (" ", None), so the texts concatenate to readable text.
    """
    ref, out = reference.split(), response.split()
    matcher = difflib.SequenceMatcher(None, [_diff_key(w) for w in ref], [_diff_key(w) for w in out], autojunk=False)
    spans: list[tuple[str, str | None]] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            spans.append((" ".join(out[j1:j2]), None))
            continue
        if i2 > i1:
            spans.append((" ".join(ref[i1:i2]), "-"))
        if j2 > j1:
            spans.append((" ".join(out[j1:j2]), "+"))
    joined: list[tuple[str, str | None]] = []
    for span in spans:
        joined += [(" ", None), span] if joined else [span]
    return joined


@dataclass
class ResponseView:
    """One run's and model's answer to a record."""

    run: str
    model: str
    response: str
    tokens: int  # new tokens generated (predictions.jsonl's length_tokens; re-encoded text only when missing)
    scores: dict[str, float | None]  # metrics.record_metrics label -> value
    diff: list[tuple[str, str | None]]
    judge_raw: str | None
    judge_error: bool


@dataclass
class RecordView:
    """A record and every chosen run's and model's response to it."""

    id: int
    instruction: str
    input: str
    reference: str
    reference_tokens: int
    responses: list[ResponseView]


def record_view(cmp: Comparison, record_id: Any, pairs: Sequence[tuple[str, str]] | None = None) -> RecordView:
    """The shared record ``record_id`` with the responses of ``pairs`` ((run, model); default: all)."""
    try:
        row = cmp.row_of[int(record_id)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"no shared test record with id {record_id!r}") from None
    rec = cmp.records.iloc[row]
    responses = []
    for run, model in pairs if pairs is not None else cmp.pairs:
        if (run, model) not in cmp.responses:
            raise ValueError(f"{run} has no {model} model results")
        answer = cmp.responses[run, model][row]
        text = answer["response"]
        scores = {
            m.label: float(v) if not np.isnan(v := cmp.scores[run, model, m.key][row]) else None
            for m in record_metrics()
        }
        stored = cmp.scores[run, model, RESPONSE_LENGTH.record.key][row]  # what generation counted (predictions.jsonl)
        tokens = int(stored) if not np.isnan(stored) else len(encode(text, special=False))
        responses.append(
            ResponseView(
                run,
                model,
                text,
                tokens,
                scores,
                word_diff(rec["reference"], text),
                answer["judge_raw"],
                answer["judge_error"],
            )
        )
    return RecordView(
        int(rec["id"]),
        rec["instruction"],
        rec["input"],
        rec["reference"],
        len(encode(rec["reference"], special=False)),
        responses,
    )


_DIFF_TAGS = {None: "{}", "+": "<ins>{}</ins>", "-": "<del>{}</del>"}


def record_html(view: RecordView) -> str:
    """``view`` as HTML; every text from the data or a model is escaped (``html.escape``), so markup shows as text."""
    e = html.escape
    parts = [f"<h4>Test record {view.id}</h4>", f"<p><b>Instruction</b><br>{e(view.instruction)}</p>"]
    if view.input:
        parts.append(f"<p><b>Input</b><br>{e(view.input)}</p>")
    parts.append(f"<p><b>Reference</b> ({view.reference_tokens} tokens)<br>{e(view.reference)}</p>")
    for r in view.responses:
        scores = " · ".join(f"{e(k)} {'—' if v is None else f'{v:g}'}" for k, v in r.scores.items())
        diff = "".join(_DIFF_TAGS[label].format(e(text)) for text, label in r.diff)
        parts.append(f"<div><b>{e(r.run)} · {e(r.model)}</b> ({r.tokens} tokens) — {scores}<br>{diff}</div>")
        if r.judge_raw:
            parts.append(f"<pre>judge{' (error)' if r.judge_error else ''}: {e(r.judge_raw)}</pre>")
    return "\n".join(parts)
