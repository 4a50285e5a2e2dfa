"""The metric table: every score of an evaluation, and how files, tables, the card and the plots show it.

``METRICS`` is the one home of a metric: its key in ``eval/summary.json`` (``models.<name>.<key>``),
label, display format, aggregate and Hub model-index type, and, where it is computed per record,
its ``PerRecord`` part (key in ``eval/predictions.jsonl``, the function, the values' range).
``eval.summary`` writes and checks both files from it; ``evaluate.py``'s table, the model card
(text and model-index) and the app's results browser (summary table, plots, filters, record view,
CSV) iterate it. Invariant: no other module names a metric by its key, and every reader looks the
table up when called (``metrics.METRICS``, ``shown_metrics``, ``record_metrics``), so a new metric
is one entry here (and its scoring function in ``eval.scoring`` when it needs new code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gpt2_scratch.eval.scoring import exact_match, perplexity, rouge_l_f1


@dataclass(frozen=True)
class Answer:
    """One model's answer to one test record: what a per-record metric is computed from."""

    response: str  # as decoded; scores compare it stripped
    reference: str
    tokens: int  # new tokens generated, <|endoftext|> excluded
    judge: dict | None  # the judge's {"score", "raw", "error"}; None without a judge


@dataclass(frozen=True)
class Measured:
    """One model's results over the test records: what an aggregate is computed from."""

    results: Any  # its summary.ModelResults: the loss, the timing, the responses
    entries: list[dict]  # the model's entry of each prediction row (per-record values under ``PerRecord.key``)
    judged: bool  # a judge scored the responses


Value = float | int | None


@dataclass(frozen=True)
class PerRecord:
    """A metric's value per record: ``row[model][key]`` of predictions.jsonl, and how the browser shows it."""

    key: str
    label: str
    score: Callable[[Answer], Value]
    range: tuple[float, float] | None = None  # the values' fixed range (histogram, filter bounds); None: the data's
    higher_is_better: bool | None = True  # the histogram's colors: red to green; None: neither (a length)
    plotted: bool = True  # False: no distribution worth plotting (values 0 or 1)


@dataclass(frozen=True)
class Metric:
    """One aggregate of summary.json's ``models.<name>``, how tables show it and where it comes from."""

    key: str
    label: str
    spec: str  # format spec of the value; "%" shows a share as a percentage, "d" an integer
    aggregate: Callable[[list[Value], Measured], Value]  # (this metric's per-record values or [], the model's results)
    record: PerRecord | None = None  # computed per record first
    judge: bool = False  # a judge's: tables leave it out when no judge was used
    hub_type: str | None = None  # its metric type in the card's model-index; None: not there


def _mean(values: list[Value], _: Measured) -> float:
    return sum(values) / len(values)


def _mean_of_scores(values: list[Value], _: Measured) -> float | None:
    scores = [v for v in values if v is not None]
    return sum(scores) / len(scores) if scores else None


def _judge_score(answer: Answer) -> Value:
    return answer.judge["score"] if answer.judge else None


def _tokens_per_second(_: list[Value], m: Measured) -> float | None:
    res = m.results
    # No rate without tokens: a model that ended every answer at once generated nothing to time.
    return round(res.steps / res.generation_seconds, 2) if res.generation_seconds > 0 and any(res.lengths) else None


ROUGE_L = Metric(
    "rouge_l",
    "ROUGE-L F1",
    ".3f",
    _mean,
    PerRecord("rouge_l", "ROUGE-L F1", lambda a: rouge_l_f1(a.response.strip(), a.reference), (0.0, 1.0)),
    hub_type="rougeL",
)
JUDGE = Metric(
    "judge_mean",
    "Judge score (0–100)",
    ".1f",
    _mean_of_scores,
    PerRecord("judge_score", "Judge score (0–100)", _judge_score, (0.0, 100.0)),
    judge=True,
    hub_type="llm_judge",
)
RESPONSE_LENGTH = Metric(
    "mean_length_tokens",
    "Mean response length (tokens)",
    ".1f",
    _mean,
    PerRecord("length_tokens", "Response length (tokens)", lambda a: a.tokens, higher_is_better=None),
)

# The metrics, in table order: evaluate.py's table, the card's, the app's summary and the model-index.
METRICS: tuple[Metric, ...] = (
    Metric("reference_loss", "Reference loss (test set)", ".3f", lambda _, m: m.results.loss, hub_type="loss"),
    Metric("perplexity", "Perplexity", ".2f", lambda _, m: perplexity(m.results.loss), hub_type="perplexity"),
    ROUGE_L,
    Metric(
        "exact_match",
        "Exact match",
        "%",
        _mean,
        PerRecord(
            "exact_match",
            "Exact match",
            lambda a: exact_match(a.response.strip(), a.reference),
            (0.0, 1.0),
            plotted=False,
        ),
        hub_type="exact_match",
    ),
    JUDGE,
    Metric(
        "judge_unparsed",
        "Judge replies not parsed",
        "d",
        lambda _, m: sum(1 for e in m.entries if e[JUDGE.record.key] is None) if m.judged else 0,
        judge=True,
    ),
    RESPONSE_LENGTH,
    Metric(
        "empty_share",
        "Empty responses",
        "%",
        lambda _, m: sum(1 for r in m.results.responses if not r.strip()) / len(m.results.responses),
    ),
    Metric("generation_seconds", "Generation time (s)", ".1f", lambda _, m: round(m.results.generation_seconds, 3)),
    Metric("tokens_per_second", "Tokens per second", ".1f", _tokens_per_second),
)

# The results browser's default score.
DEFAULT_RECORD_METRIC = ROUGE_L.record


def shown_metrics(*, judged: bool) -> list[Metric]:
    """The metrics a table shows, in table order: all of them, less the judge's when no judge was used."""
    return [m for m in METRICS if judged or not m.judge]


def record_metrics() -> list[PerRecord]:
    """The per-record metrics in the browser's order: those it plots first (its metric picker), then the others."""
    plotted = [m.record for m in METRICS if m.record is not None and m.record.plotted]
    return plotted + [m.record for m in METRICS if m.record is not None and not m.record.plotted]


def record_metric(key: Any) -> PerRecord:
    """The per-record metric stored under ``key``; a one-line ValueError naming the keys for any other."""
    known = {m.key: m for m in record_metrics()}
    if key not in known:
        raise ValueError(f"unknown score {key!r}; choose one of: {', '.join(known)}")
    return known[key]


def aggregates(results: Any, entries: Sequence[dict], *, judged: bool) -> dict[str, Value]:
    """Every metric's aggregate of one model: {key: value}, in table order."""
    measured = Measured(results, list(entries), judged)
    return {m.key: m.aggregate([e[m.record.key] for e in entries] if m.record else [], measured) for m in METRICS}


def format_metric(value: Any, spec: str) -> str:
    """``value`` formatted by a ``Metric.spec``; a missing value is an em dash."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec == "%":
            return f"{value * 100:.1f}%"
        if spec == "d":
            return str(int(value))
        return format(value, spec)
    return str(value)
