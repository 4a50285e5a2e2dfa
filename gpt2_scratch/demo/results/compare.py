"""Comparing evaluated runs: the data behind the app's results browser, as pandas frames (no Gradio here).

    cmp = compare([RunResults("a", info_a, summary_a, predictions_a, metrics_a), ...])
    summary_frame(cmp), loss_frame(cmp), option_differences(cmp)    # tables, the loss curves
    reward_frame(cmp)                                               # DPO runs: their reward curves
    histogram_frame(cmp, "rouge_l"), scatter_frame(cmp, "rouge_l")  # score distributions, ScatterPlot

Invariant: records are matched across runs by ``id`` (``data.records.Record``) and count as shared
only when instruction, input and reference are identical in every run; everything per record
covers the shared ones. The records table and one-record view are in ``browse``. Design: docs/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from gpt2_scratch.data.records import source_label
from gpt2_scratch.eval.metrics import format_metric, record_metric, record_metrics, shown_metrics
from gpt2_scratch.eval.summary import MODEL_NAMES, used_judge
from gpt2_scratch.files import flatten_json
from gpt2_scratch.runs import RunInfo

_SHORT = 90  # characters of the instruction that tables and tooltips show


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
    # (run, model) -> per record {"response": str, "judge_raw": str | None, "judge_error": bool}
    responses: dict[tuple[str, str], list[dict]]
    message: str  # how many records are compared, and the runs that could not be used
    short_instructions: np.ndarray = field(repr=False)  # each instruction on one line, cut to _SHORT characters
    search_text: np.ndarray = field(repr=False)  # casefolded instruction, input, reference and responses per record
    row_of: dict[int, int] = field(repr=False)  # record id -> row of ``records``
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # tables browse.py builds on first use


# --------------------------------------------------------------------------- building the index


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def _optional(value: Any) -> float | None:
    """``value`` as a float; None for a missing value (not a number, or NaN)."""
    v = _number(value)
    return None if np.isnan(v) else v


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _short(text: str, n: int = _SHORT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _answer(entry: Any) -> dict:
    entry = entry if isinstance(entry, dict) else {}
    raw = entry.get("judge_raw")
    return {
        "response": _text(entry.get("response")),
        "judge_raw": None if raw is None else _text(raw),
        "judge_error": bool(entry.get("judge_error")),
    }


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
    records = pd.DataFrame(
        {
            "id": np.array(shared, dtype=np.int64),
            "instruction": [_text(r.get("instruction")) for r in rows0],
            "input": [_text(r.get("input")) for r in rows0],
            "reference": [_text(r.get("reference")) for r in rows0],
        }
    )
    records["reference_words"] = np.array([len(t.split()) for t in records["reference"]], dtype=np.int64)
    pairs, scores, responses = [], {}, {}
    for run in usable:
        rows = [indexed[run.label][0][i] for i in shared]
        for model in MODEL_NAMES:
            entries = [r.get(model) if isinstance(r.get(model), dict) else {} for r in rows]
            if not any(entries):
                continue  # this run did not evaluate that model
            pairs.append((run.label, model))
            responses[run.label, model] = [_answer(e) for e in entries]
            for m in record_metrics():
                scores[run.label, model, m.key] = np.array([_number(e.get(m.key)) for e in entries], dtype=float)
    texts = [
        "\n".join([*_record_key(r), *(responses[p][n]["response"] for p in pairs)]).casefold()
        for n, r in enumerate(rows0)
    ]
    message = _message(runs, usable, indexed, len(shared), len(common) - len(shared))
    short = np.array([_short(t) for t in records["instruction"]], dtype=object)
    return Comparison(
        list(runs),
        records,
        pairs,
        scores,
        responses,
        message,
        short,
        np.array(texts, dtype=object),
        {i: n for n, i in enumerate(shared)},
    )


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
    """One row per run and model: ``run``, ``model``, ``test records``, then each ``metrics.shown_metrics`` label.

    Numbers (NaN when missing) for plots; with ``formatted``, strings as
    evaluate.py prints them and a ``note`` column that holds the problem of
    a run whose eval files were unusable (that run gets one row, model "—").
    """
    judged = any(used_judge(r.summary) for r in cmp.runs if r.problem is None)
    metrics = shown_metrics(judged=judged)  # no judge: no judge columns
    columns = ["run", "model", "test records", *(m.label for m in metrics)]
    data = []
    for run in cmp.runs:
        models = run.summary.get("models") if run.problem is None and isinstance(run.summary, dict) else None
        if not isinstance(models, dict) or not models:
            problem = run.problem or "summary.json holds no models"
            data.append([run.label, "—", None, *([None] * len(metrics)), problem])
            continue
        n = run.summary.get("num_records")
        for model in [m for m in MODEL_NAMES if m in models] + [m for m in models if m not in MODEL_NAMES]:
            values = models[model] if isinstance(models[model], dict) else {}
            data.append([run.label, model, n, *(values.get(m.key) for m in metrics), ""])
    specs = ["d", *(m.spec for m in metrics)]
    if formatted:
        cells = [
            [*row[:2], *(format_metric(_optional(v), spec) for v, spec in zip(row[2:-1], specs)), row[-1]]
            for row in data
        ]
        return pd.DataFrame(cells, columns=[*columns, "note"])
    return pd.DataFrame([[*row[:2], *map(_number, row[2:-1])] for row in data], columns=columns)


def _eval_curves(cmp: Comparison, curves: Sequence[tuple[str, str]]) -> list[tuple]:
    """(run, curve, "run · curve", tokens_seen, value) of metrics.jsonl's ``eval`` events, per (key, curve)."""
    data = []
    for run in cmp.runs:
        for row in run.metrics:
            if not isinstance(row, dict) or row.get("event") != "eval":
                continue
            for key, curve in curves:
                tokens, value = _number(row.get("tokens_seen")), _number(row.get(key))
                if np.isfinite(tokens) and np.isfinite(value):
                    data.append((run.label, curve, f"{run.label} · {curve}", tokens, value))
    return data


def loss_frame(cmp: Comparison) -> pd.DataFrame:
    """Every run's loss curves (``eval`` events), long format: run, split, series, tokens_seen, loss (figures)."""
    data = _eval_curves(cmp, (("train_loss", "train"), ("val_loss", "val")))
    return pd.DataFrame(data, columns=["run", "split", "series", "tokens_seen", "loss"])


# A DPO run's curves besides its loss: (eval event key, curve); its rewards include beta (train/dpo.py).
REWARD_CURVES = (("val_reward_margin", "val reward margin"), ("val_reward_accuracy", "val reward accuracy"))


def reward_frame(cmp: Comparison) -> pd.DataFrame:
    """The DPO runs' validation reward curves, long format: run, curve, series, tokens_seen, value (empty: none)."""
    return pd.DataFrame(_eval_curves(cmp, REWARD_CURVES), columns=["run", "curve", "series", "tokens_seen", "value"])


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


def _options(info: RunInfo) -> dict[str, Any]:
    options = {"base_model": info.base_model, "prompt_style": info.prompt_style}
    options.update(flatten_json(info.dataset or {}, "dataset."))
    if isinstance(options.get("dataset.source"), str):  # a file name or URL, not the training machine's path
        options["dataset.source"] = source_label(options["dataset.source"])
    options.update(flatten_json(info.options()))
    if "lora_rank" in (info.training or {}):  # the method, in words (its settings are the lora_* options)
        t = info.training
        lora = f"LoRA rank {t['lora_rank']}, alpha {t.get('lora_alpha') or 2 * t['lora_rank']}"
        options["finetuning"] = lora if t["lora_rank"] else "full (every weight)"
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
    frame = pd.DataFrame(
        [[k, *(_show(options[r.label].get(k)) for r in runs)] for k in differ],
        columns=["option", *(r.label for r in runs)],
    )
    message = (
        f"{len(differ)} options differ; {len(same)} are the same in every run."
        if len(runs) > 1
        else f"One run: its {len(same)} options are not compared."
        if runs
        else "No run.json to compare."
    )
    missing = [r.label for r in cmp.runs if r.info is None]
    if missing:
        message += f" No run.json for {', '.join(missing)}."
    return OptionsDiff(frame, same, message)


# --------------------------------------------------------------------------- per-record scores, for the plots


def score_frame(cmp: Comparison, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Every per-record score, long format: ``run``, ``model``, ``series`` ("run · model"), ``metric``,
    ``value``, ``id``. Records without that score (no judge, a judge reply that was not a score) are left out.
    """
    keys = [record_metric(k).key for k in (metrics or [m.key for m in record_metrics()])]
    ids = cmp.records["id"].to_numpy()
    parts = []
    for run, model in cmp.pairs:
        for key in keys:
            values = cmp.scores[run, model, key]
            ok = ~np.isnan(values)
            parts.append(
                pd.DataFrame(
                    {
                        "run": run,
                        "model": model,
                        "series": f"{run} · {model}",
                        "metric": key,
                        "value": values[ok],
                        "id": ids[ok],
                    }
                )
            )
    columns = ["run", "model", "series", "metric", "value", "id"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def histogram_frame(cmp: Comparison, metric: str, bins: int = 10) -> pd.DataFrame:
    """Counts of ``metric`` per bin for each run and model: ``bin`` (a label, e.g. "0.2–0.3"), ``bin_start``,
    ``count``, ``share`` (of the series' scored records), ``series``, ``run``, ``model``.

    Every series has every bin (zeros included), bins in ascending order, so
    ``figures.histogram_figure`` stacks them in the same order for every series.
    The last bin includes its upper edge; values outside a metric's fixed range count in the edge bins.
    """
    m = record_metric(metric)
    values = {p: cmp.scores[(*p, m.key)] for p in cmp.pairs}
    finite = np.concatenate([v[~np.isnan(v)] for v in values.values()] or [np.zeros(0)])
    lo, hi = m.range or ((finite.min(), finite.max()) if finite.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1
    edges = np.linspace(lo, hi, bins + 1)
    labels = [f"{a:.3g}–{b:.3g}" for a, b in zip(edges[:-1], edges[1:])]
    data = []
    for (run, model), v in values.items():
        v = np.clip(v[~np.isnan(v)], lo, hi)  # a value outside a fixed range counts in the edge bin
        counts, _ = np.histogram(v, bins=edges)
        shares = counts / v.size if v.size else np.zeros(bins)
        for label, start, count, share in zip(labels, edges[:-1], counts, shares):
            data.append((label, float(start), int(count), float(share), f"{run} · {model}", run, model))
    return pd.DataFrame(data, columns=["bin", "bin_start", "count", "share", "series", "run", "model"])


def score_stats(cmp: Comparison, metric: str) -> pd.DataFrame:
    """Box-plot numbers of ``metric`` per run and model: ``series``, ``run``, ``model``, ``n``, ``mean``,
    ``min``, ``q1``, ``median``, ``q3``, ``max`` (n = records with that score)."""
    m = record_metric(metric)
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
    key = record_metric(metric).key
    parts = []
    for run in dict.fromkeys(r for r, _ in cmp.pairs):
        if (run, "base") not in cmp.responses or (run, "finetuned") not in cmp.responses:
            continue
        base, tuned = cmp.scores[run, "base", key], cmp.scores[run, "finetuned", key]
        ok = ~(np.isnan(base) | np.isnan(tuned))
        parts.append(
            pd.DataFrame(
                {
                    "id": cmp.records["id"].to_numpy()[ok],
                    "run": run,
                    "base": base[ok],
                    "finetuned": tuned[ok],
                    "instruction": cmp.short_instructions[ok],
                }
            )
        )
    columns = ["id", "run", "base", "finetuned", "instruction"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def length_frame(cmp: Comparison, metric: str) -> pd.DataFrame:
    """``metric`` against the reference's length in words (whitespace-separated), per record, run and model:
    ``id``, ``run``, ``model``, ``series``, ``reference_words``, ``score``.

    For ``gr.ScatterPlot(x="reference_words", y="score", color="series")``.
    """
    key = record_metric(metric).key
    words = cmp.records["reference_words"].to_numpy()
    ids = cmp.records["id"].to_numpy()
    parts = []
    for run, model in cmp.pairs:
        v = cmp.scores[run, model, key]
        ok = ~np.isnan(v)
        parts.append(
            pd.DataFrame(
                {
                    "id": ids[ok],
                    "run": run,
                    "model": model,
                    "series": f"{run} · {model}",
                    "reference_words": words[ok],
                    "score": v[ok],
                }
            )
        )
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
