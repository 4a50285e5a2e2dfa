"""Comparing evaluated runs: the data behind the app's results browser, as pandas frames (no Gradio here).

The app loads each chosen run (run.json, metrics.jsonl, eval/summary.json,
eval/predictions.jsonl) into a ``RunResults``, calls ``compare`` once per
selection, and feeds the frames below to ``gr.Dataframe``, ``gr.LinePlot``,
``gr.BarPlot`` and ``gr.ScatterPlot``:

    cmp = compare([RunResults("a", info_a, summary_a, predictions_a, metrics_a), ...])
    summary_frame(cmp)                 # one row per run and model
    loss_frame(cmp)                    # LinePlot(x="tokens_seen", y="loss", color="series")
    option_differences(cmp)            # the training options that differ
    scatter_frame(cmp, "rouge_l")      # ScatterPlot(x="base", y="finetuned", color="run")
    filter_records(cmp, "color", ...)  # the records table, < 200 ms for 1,100 records x 5 runs
    record_view(cmp, record_id)        # every response against the reference, word diffs

Records are matched across runs by their ``id`` (the record's position in the
source dataset, see data.Record). Two runs trained on different datasets can
use the same id for different records, so an id counts as shared only when
its instruction, input and reference are identical in every run; everything
per record (plots, table, record view) covers the shared records only.
A run whose ``problem`` is set (its eval files were missing or bad) has no
records or summary here; its message is shown in their place, and its
run.json and loss curve are still used when present.
"""

from __future__ import annotations

import difflib
import html
import io
import re
import string
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gpt2_scratch.files import atomic_write_bytes
from gpt2_scratch.runs import MODEL_NAMES, SUMMARY_METRICS, RunInfo, format_metric


@dataclass(frozen=True)
class RecordMetric:
    """A per-record score of predictions.jsonl (``row[model][key]``) and its fixed range, if any."""

    key: str
    label: str
    range: tuple[float, float] | None = None  # histogram range; None: the data's own


RECORD_METRICS = (
    RecordMetric("rouge_l", "ROUGE-L F1", (0.0, 1.0)),
    RecordMetric("judge_score", "Judge score (0–100)", (0.0, 100.0)),
    RecordMetric("length_tokens", "Response length (tokens)"),
    RecordMetric("exact_match", "Exact match", (0.0, 1.0)),
)
_METRICS = {m.key: m for m in RECORD_METRICS}
ORDERS = ("test-set order", "score: high to low", "score: low to high")
# run.json keys left out of the options comparison: bookkeeping, or repeated at the top level of run.json.
_NOT_OPTIONS = {"name", "out_dir", "resume", "base", "prompt_style", "dataset"}
_SHORT = 90  # characters of the instruction the records table shows


@dataclass
class RunResults:
    """One chosen run, as loaded by the app. ``label`` names it everywhere and must be unique."""

    label: str
    info: RunInfo | None = None
    summary: dict | None = None
    predictions: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    problem: str | None = None  # why its eval files could not be used


@dataclass
class Comparison:
    """The chosen runs, indexed once on their shared records (built by ``compare``)."""

    runs: list[RunResults]
    records: pd.DataFrame  # one row per shared record, test-set order: id, instruction, input, reference, ...
    pairs: list[tuple[str, str]]  # (run, model) evaluated, in run then MODEL_NAMES order
    scores: dict[tuple[str, str, str], np.ndarray]  # (run, model, metric) -> float per record, NaN if none
    responses: dict[tuple[str, str], list[dict]]  # (run, model) -> predictions.jsonl's model entry per record
    message: str  # how many records are compared, and the runs that could not be used
    search_text: np.ndarray = field(repr=False)  # casefolded instruction, input, reference and responses per record
    row_of: dict[int, int] = field(repr=False)  # record id -> row of ``records``
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)  # tables built on first use


# --------------------------------------------------------------------------- building the index


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _optional(value: Any) -> float | None:
    """``value`` as a float; None for a missing value (not a number, or NaN)."""
    v = _number(value)
    return None if np.isnan(v) else v


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _rows_by_id(rows: Sequence[Any]) -> tuple[dict[int, dict], int]:
    """{id: row} in file order (first row of a repeated id wins), and the count of rows without an integer id."""
    by_id, bad = {}, 0
    for row in rows:
        rid = row.get("id") if isinstance(row, dict) else None
        if not isinstance(rid, int) or isinstance(rid, bool):
            bad += 1
            continue
        by_id.setdefault(rid, row)
    return by_id, bad


def _record_key(row: dict) -> tuple[str, str, str]:
    return _text(row.get("instruction")), _text(row.get("input")), _text(row.get("reference"))


def compare(runs: Sequence[RunResults]) -> Comparison:
    """Index ``runs`` on the record ids they share (see the module docstring); build once per selection."""
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"run labels must be unique, got {', '.join(labels)}")
    usable = [r for r in runs if r.problem is None]
    indexed = {r.label: _rows_by_id(r.predictions) for r in usable}
    first = indexed[usable[0].label][0] if usable else {}
    common = [i for i in first if all(i in rows for rows, _ in indexed.values())]
    shared = [i for i in common if all(_record_key(rows[i]) == _record_key(first[i]) for rows, _ in indexed.values())]
    rows0 = [first[i] for i in shared]
    records = pd.DataFrame({
        "id": np.array(shared, dtype=np.int64),
        "instruction": [_text(r.get("instruction")) for r in rows0],
        "input": [_text(r.get("input")) for r in rows0],
        "reference": [_text(r.get("reference")) for r in rows0],
    })
    records["reference_words"] = np.array([len(t.split()) for t in records["reference"]], dtype=np.int64)
    pairs, scores, responses = [], {}, {}
    for run in usable:
        rows = [indexed[run.label][0][i] for i in shared]
        for model in MODEL_NAMES:
            entries = [r.get(model) if isinstance(r.get(model), dict) else {} for r in rows]
            if not any(entries):
                continue  # this run did not evaluate that model
            pairs.append((run.label, model))
            responses[run.label, model] = entries
            for m in RECORD_METRICS:
                scores[run.label, model, m.key] = np.array([_number(e.get(m.key)) for e in entries], dtype=float)
    texts = [
        "\n".join([*_record_key(r), *(_text(responses[p][n].get("response")) for p in pairs)]).casefold()
        for n, r in enumerate(rows0)
    ]
    message = _message(runs, usable, indexed, len(shared), len(common) - len(shared))
    return Comparison(list(runs), records, pairs, scores, responses, message, np.array(texts, dtype=object),
                      {i: n for n, i in enumerate(shared)})


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _message(runs, usable, indexed, n_shared: int, n_conflicts: int) -> str:
    parts = []
    if len(usable) == 1:
        parts.append(f"{n_shared} test records of {usable[0].label}.")
    elif usable:
        sizes = [len(indexed[r.label][0]) for r in usable]
        if len(set(sizes)) == 1 and sizes[0] == n_shared:
            parts.append(f"All {len(usable)} runs were evaluated on the same {n_shared} test records.")
        else:
            each = ", ".join(f"{r.label} ({n})" for r, n in zip(usable, sizes))
            parts.append(f"Compared on {n_shared} shared records of {each}.")
    if n_conflicts:
        parts.append(f"Left out: {_count(n_conflicts, 'id')} naming different records in different runs.")
    for r in usable:
        if indexed[r.label][1]:
            parts.append(f"{r.label}: skipped {_count(indexed[r.label][1], 'prediction row')} without an integer id.")
    parts += [f"{r.label}: {r.problem}" for r in runs if r.problem is not None]
    if not runs:
        parts.append("No runs chosen.")
    return " ".join(parts)


# --------------------------------------------------------------------------- per run: summary, loss, options


def summary_frame(cmp: Comparison, *, formatted: bool = False) -> pd.DataFrame:
    """One row per run and model: ``run``, ``model``, ``test records``, then each ``SUMMARY_METRICS`` label.

    Numbers (NaN when missing) for plots; with ``formatted``, strings as
    evaluate.py prints them and a ``note`` column that holds the problem of
    a run whose eval files were unusable (that run gets one row, model "—").
    """
    columns = ["run", "model", "test records", *(m.label for m in SUMMARY_METRICS)]
    data = []
    for run in cmp.runs:
        models = run.summary.get("models") if run.problem is None and isinstance(run.summary, dict) else None
        if not isinstance(models, dict) or not models:
            problem = run.problem or "summary.json holds no models"
            data.append([run.label, "—", None, *([None] * len(SUMMARY_METRICS)), problem])
            continue
        n = run.summary.get("num_records")
        for model in [m for m in MODEL_NAMES if m in models] + [m for m in models if m not in MODEL_NAMES]:
            values = models[model] if isinstance(models[model], dict) else {}
            data.append([run.label, model, n, *(values.get(m.key) for m in SUMMARY_METRICS), ""])
    specs = ["d", *(m.spec for m in SUMMARY_METRICS)]
    if formatted:
        cells = [[*row[:2], *(format_metric(_optional(v), spec) for v, spec in zip(row[2:-1], specs)), row[-1]]
                 for row in data]
        return pd.DataFrame(cells, columns=[*columns, "note"])
    return pd.DataFrame([[*row[:2], *map(_number, row[2:-1])] for row in data], columns=columns)


def loss_frame(cmp: Comparison) -> pd.DataFrame:
    """The loss curves of every run, long format: ``run``, ``split`` (train/val), ``series``, ``tokens_seen``, ``loss``.

    From metrics.jsonl's ``eval`` events; for ``gr.LinePlot(x="tokens_seen", y="loss", color="series")``.
    """
    data = []
    for run in cmp.runs:
        for row in run.metrics:
            if not isinstance(row, dict) or row.get("event") != "eval":
                continue
            for split, key in (("train", "train_loss"), ("val", "val_loss")):
                tokens, loss = _number(row.get("tokens_seen")), _number(row.get(key))
                if np.isfinite(tokens) and np.isfinite(loss):
                    data.append((run.label, split, f"{run.label} · {split}", tokens, loss))
    return pd.DataFrame(data, columns=["run", "split", "series", "tokens_seen", "loss"])


@dataclass
class OptionsDiff:
    """The options that differ between runs: ``frame`` has ``option`` then one column per run (strings)."""

    frame: pd.DataFrame
    same: list[str]  # options identical in every run
    message: str

    def styler(self):
        """``frame`` as a pandas Styler (``gr.Dataframe`` shows it) marking each value unlike the first run's."""
        runs = list(self.frame.columns[1:])

        def mark(row: pd.Series) -> list[str]:
            return [""] + ["background-color: #fde68a" if row[r] != row[runs[0]] else "" for r in runs]

        return self.frame.style.apply(mark, axis=1)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _options(info: RunInfo) -> dict[str, Any]:
    options = {"base_model": info.base_model, "prompt_style": info.prompt_style}
    options.update(_flat(info.dataset or {}, "dataset."))
    options.update({k: v for k, v in _flat(info.training or {}).items() if k not in _NOT_OPTIONS})
    return options


def _show(value: Any) -> str:
    return "—" if value is None else str(value)


def option_differences(cmp: Comparison) -> OptionsDiff:
    """The run.json options (base model, prompt style, dataset, training) whose values differ between runs.

    A key missing from a run (an older run.json) counts as the value "—".
    Runs without a ``RunInfo`` are left out and named in the message.
    """
    runs = [r for r in cmp.runs if r.info is not None]
    options = {r.label: _options(r.info) for r in runs}
    keys = sorted(set().union(*options.values())) if options else []
    differ = [k for k in keys if len({_show(o.get(k)) for o in options.values()}) > 1]
    same = [k for k in keys if k not in differ]
    frame = pd.DataFrame([[k, *(_show(options[r.label].get(k)) for r in runs)] for k in differ],
                         columns=["option", *(r.label for r in runs)])
    message = (f"{len(differ)} options differ; {len(same)} are the same in every run." if len(runs) > 1
               else f"One run: its {len(same)} options are not compared." if runs else "No run.json to compare.")
    missing = [r.label for r in cmp.runs if r.info is None]
    if missing:
        message += f" No run.json for {', '.join(missing)}."
    return OptionsDiff(frame, same, message)


# --------------------------------------------------------------------------- per-record scores, for the plots


def _metric(key: str) -> RecordMetric:
    if key not in _METRICS:
        raise ValueError(f"unknown score {key!r}; choose one of: {', '.join(_METRICS)}")
    return _METRICS[key]


def score_frame(cmp: Comparison, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Every per-record score, long format: ``run``, ``model``, ``series`` ("run · model"), ``metric``, ``value``, ``id``.

    Records without that score (no judge, a judge reply that was not a score) are left out.
    """
    keys = [_metric(k).key for k in (metrics or [m.key for m in RECORD_METRICS])]
    ids = cmp.records["id"].to_numpy()
    parts = []
    for run, model in cmp.pairs:
        for key in keys:
            values = cmp.scores[run, model, key]
            ok = ~np.isnan(values)
            parts.append(pd.DataFrame({"run": run, "model": model, "series": f"{run} · {model}", "metric": key,
                                       "value": values[ok], "id": ids[ok]}))
    columns = ["run", "model", "series", "metric", "value", "id"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def histogram_frame(cmp: Comparison, metric: str, bins: int = 10) -> pd.DataFrame:
    """Counts of ``metric`` per bin for each run and model: ``bin`` (a label, e.g. "0.2–0.3"), ``bin_start``,
    ``count``, ``share`` (of the series' scored records), ``series``, ``run``, ``model``.

    Every series has every bin (zeros included), bins in ascending order, so
    ``gr.BarPlot(x="bin", y="count", color="series", sort=<frame["bin"].unique()>)`` lines them up.
    The last bin includes its upper edge.
    """
    m = _metric(metric)
    values = {p: cmp.scores[(*p, m.key)] for p in cmp.pairs}
    finite = np.concatenate([v[~np.isnan(v)] for v in values.values()] or [np.zeros(0)])
    lo, hi = m.range or ((finite.min(), finite.max()) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1
    edges = np.linspace(lo, hi, bins + 1)
    labels = [f"{a:.3g}–{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
    data = []
    for (run, model), v in values.items():
        v = v[~np.isnan(v)]
        counts, _ = np.histogram(v, bins=edges)
        for label, start, count in zip(labels, edges[:-1], counts):
            data.append((label, float(start), int(count), count / v.size if v.size else 0.0, f"{run} · {model}", run, model))
    return pd.DataFrame(data, columns=["bin", "bin_start", "count", "share", "series", "run", "model"])


def score_stats(cmp: Comparison, metric: str) -> pd.DataFrame:
    """Box-plot numbers of ``metric`` per run and model: ``series``, ``run``, ``model``, ``n``, ``mean``,
    ``min``, ``q1``, ``median``, ``q3``, ``max`` (n = records with that score)."""
    m = _metric(metric)
    data = []
    for run, model in cmp.pairs:
        v = cmp.scores[run, model, m.key]
        v = v[~np.isnan(v)]
        q = np.percentile(v, [0, 25, 50, 75, 100]) if v.size else [np.nan] * 5
        data.append((f"{run} · {model}", run, model, int(v.size), v.mean() if v.size else np.nan, *q))
    return pd.DataFrame(data, columns=["series", "run", "model", "n", "mean", "min", "q1", "median", "q3", "max"])


def scatter_frame(cmp: Comparison, metric: str) -> pd.DataFrame:
    """Base against finetuned ``metric`` per record, for each run that evaluated both:
    ``id``, ``run``, ``base``, ``finetuned``, ``instruction`` (shortened, for the tooltip).

    For ``gr.ScatterPlot(x="base", y="finetuned", color="run")``; a record without both scores is left out.
    """
    key = _metric(metric).key
    parts = []
    for run in dict.fromkeys(r for r, _ in cmp.pairs):
        if (run, "base") not in cmp.responses or (run, "finetuned") not in cmp.responses:
            continue
        base, tuned = cmp.scores[run, "base", key], cmp.scores[run, "finetuned", key]
        ok = ~(np.isnan(base) | np.isnan(tuned))
        parts.append(pd.DataFrame({"id": cmp.records["id"].to_numpy()[ok], "run": run, "base": base[ok],
                                   "finetuned": tuned[ok], "instruction": _short_column(cmp)[ok]}))
    columns = ["id", "run", "base", "finetuned", "instruction"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def length_frame(cmp: Comparison, metric: str) -> pd.DataFrame:
    """``metric`` against the reference's length in words (whitespace-separated), per record, run and model:
    ``id``, ``run``, ``model``, ``series``, ``reference_words``, ``score``.

    For ``gr.ScatterPlot(x="reference_words", y="score", color="series")``.
    """
    key = _metric(metric).key
    words = cmp.records["reference_words"].to_numpy()
    ids = cmp.records["id"].to_numpy()
    parts = []
    for run, model in cmp.pairs:
        v = cmp.scores[run, model, key]
        ok = ~np.isnan(v)
        parts.append(pd.DataFrame({"id": ids[ok], "run": run, "model": model, "series": f"{run} · {model}",
                                   "reference_words": words[ok], "score": v[ok]}))
    columns = ["id", "run", "model", "series", "reference_words", "score"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def points_in_range(frame: pd.DataFrame, x: str, lo: float, hi: float) -> pd.DataFrame:
    """The rows of a plot frame whose ``x`` lies in [lo, hi], nearest the middle first.

    Gradio's native plots report a selection as an x range only (``SelectData.index == [lo, hi]``),
    so this is how a selected point becomes a record: open ``result["id"].iloc[0]``.
    """
    lo, hi = min(lo, hi), max(lo, hi)
    values = pd.to_numeric(frame[x], errors="coerce")
    inside = frame[(values >= lo) & (values <= hi)]
    distance = (pd.to_numeric(inside[x]) - (lo + hi) / 2).abs()
    return inside.iloc[np.argsort(distance.to_numpy(), kind="stable")]


# --------------------------------------------------------------------------- the records table


def _short(text: str, n: int = _SHORT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _short_column(cmp: Comparison) -> np.ndarray:
    if "_short" not in cmp._cache:
        cmp._cache["_short"] = np.array([_short(t) for t in cmp.records["instruction"]], dtype=object)
    return cmp._cache["_short"]


def score_choices(cmp: Comparison) -> list[tuple[str, str]]:
    """(label, value) of every score present, for a dropdown; values are what ``filter_records`` takes."""
    return [(f"{run} · {model} · {m.label}", f"{run} · {model} · {m.key}")
            for run, model in cmp.pairs for m in RECORD_METRICS if not np.isnan(cmp.scores[run, model, m.key]).all()]


def _score_key(cmp: Comparison, score: str) -> tuple[str, str, str]:
    keys = {f"{run} · {model} · {metric}": (run, model, metric) for run, model, metric in cmp.scores}
    if score not in keys:
        raise ValueError(f"unknown score {score!r}; choose one of: {', '.join(keys) or 'none (no records)'}")
    return keys[score]


def _table(cmp: Comparison, metric: str) -> pd.DataFrame:
    """The table of one metric, built once: ``id``, ``instruction`` (shortened), one column per "run · model"."""
    if metric not in cmp._cache:
        data = {"id": cmp.records["id"].to_numpy(), "instruction": _short_column(cmp)}
        data.update({f"{run} · {model}": np.round(cmp.scores[run, model, metric], 3) for run, model in cmp.pairs})
        cmp._cache[metric] = pd.DataFrame(data)
    return cmp._cache[metric]


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


def select_rows(cmp: Comparison, query: str = "", score: str | None = None, lo: Any = None, hi: Any = None,
                order: str = ORDERS[0]) -> np.ndarray:
    """Row numbers of ``cmp.records`` that match, in order (see ``filter_records``)."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; choose one of: {', '.join(ORDERS)}")
    lo, hi = _bound("min score", lo), _bound("max score", hi)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"min score ({lo:g}) is above max score ({hi:g})")
    if score is None and (lo is not None or hi is not None or order != ORDERS[0]):
        raise ValueError("choose a score to filter or sort by")
    keep = np.ones(len(cmp.records), dtype=bool)
    needle = _text(query).strip().casefold()
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


def filter_records(cmp: Comparison, query: str = "", score: str | None = None, lo: Any = None, hi: Any = None,
                   order: str = ORDERS[0], *, full: bool = False) -> pd.DataFrame:
    """The records table: records whose text contains ``query`` (case-insensitive; instruction, input,
    reference and every response) and whose ``score`` (a ``score_choices`` value) is within [lo, hi], in ``order``.

    The table shows ``id``, the shortened instruction and the chosen score's metric for every run and model
    (ROUGE-L when no score is chosen). ``full`` (for the CSV download) gives the full texts and, for every
    run and model, the response and every score. A bad argument is a one-line ``ValueError``.
    """
    rows = select_rows(cmp, query, score, lo, hi, order)
    if full:
        return _full_table(cmp).iloc[rows].reset_index(drop=True)
    metric = _score_key(cmp, score)[2] if score is not None else "rouge_l"
    return _table(cmp, metric).iloc[rows].reset_index(drop=True)


def _full_table(cmp: Comparison) -> pd.DataFrame:
    if "_full" not in cmp._cache:
        data = {c: cmp.records[c].to_numpy() for c in ("id", "instruction", "input", "reference")}
        for run, model in cmp.pairs:
            data[f"{run} · {model} · response"] = [_text(e.get("response")) for e in cmp.responses[run, model]]
            data.update({f"{run} · {model} · {m.key}": cmp.scores[run, model, m.key] for m in RECORD_METRICS})
        cmp._cache["_full"] = pd.DataFrame(data)
    return cmp._cache["_full"]


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """``frame`` as UTF-8 CSV (no index column)."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")


def csv_filename(cmp: Comparison) -> str:
    """A download name naming the runs, e.g. ``predictions_run-a_vs_run-b.csv`` (safe characters only)."""
    names = "_vs_".join(re.sub(r"[^A-Za-z0-9._-]+", "-", r.label).strip("-.") or "run" for r in cmp.runs)
    return f"predictions_{names[:120] or 'none'}.csv"


def write_csv(path, frame: pd.DataFrame) -> None:
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
    tokens: int  # GPT-2 tokens of the response text (tokenizer.encode)
    scores: dict[str, float | None]  # RECORD_METRICS label -> value
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
    from gpt2_scratch.tokenizer import encode

    try:
        row = cmp.row_of[int(record_id)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"no shared test record with id {record_id!r}") from None
    rec = cmp.records.iloc[row]
    responses = []
    for run, model in pairs if pairs is not None else cmp.pairs:
        if (run, model) not in cmp.responses:
            raise ValueError(f"{run} has no {model} model results")
        entry = cmp.responses[run, model][row]
        text = _text(entry.get("response"))
        scores = {m.label: _optional(cmp.scores[run, model, m.key][row]) for m in RECORD_METRICS}
        raw = entry.get("judge_raw")
        responses.append(ResponseView(run, model, text, len(encode(text, special=False)), scores,
                                      word_diff(rec["reference"], text), None if raw is None else _text(raw),
                                      bool(entry.get("judge_error"))))
    return RecordView(int(rec["id"]), rec["instruction"], rec["input"], rec["reference"],
                      len(encode(rec["reference"], special=False)), responses)


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
