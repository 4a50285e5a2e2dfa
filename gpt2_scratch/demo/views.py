"""Pure views: a run's files turned into Markdown, tables and figures (no Gradio here).

``EvalResults.load`` is the one place that reads and checks the structure of
``eval/summary.json`` and ``eval/predictions.jsonl``: files from another version,
edited by hand or downloaded from a Hub repo become a one-line ``problem`` naming
the file and the line, and every function below can then trust their shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gpt2_scratch.files import read_jsonl
from gpt2_scratch.runs import MODEL_NAMES, SUMMARY_METRICS, RunPaths, display_path, format_metric

# (label, "<model>.<key in predictions.jsonl>"): the scores the table shows, filters and sorts by.
SCORE_CHOICES = [
    ("finetuned ROUGE-L", "finetuned.rouge_l"),
    ("base ROUGE-L", "base.rouge_l"),
    ("finetuned judge", "finetuned.judge_score"),
    ("base judge", "base.judge_score"),
]
ORDER_CHOICES = ["test-set order", "score: high to low", "score: low to high"]
# Table columns in a fixed order: base before finetuned, ROUGE-L before the judge.
COLUMN_ORDER = ["base.rouge_l", "finetuned.rouge_l", "base.judge_score", "finetuned.judge_score"]


# --------------------------------------------------------------------------- reading and checking eval/

_KINDS = {
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "null": lambda v: v is None,
}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}
# The fields a model's entry of a prediction row may hold, and their JSON kinds.
_MODEL_FIELDS = {"response": "string", "rouge_l": "number or null", "exact_match": "number or null",
                 "length_tokens": "number or null", "judge_score": "number or null", "judge_raw": "string or null"}


def _require(value: Any, kinds: str, what: str) -> None:
    """A ValueError ``<what> must be <kinds>, got <JSON kind>`` unless ``value`` is one of ``kinds``."""
    if not any(_KINDS[k](value) for k in kinds.split(" or ")):
        article = "an" if kinds[0] in "aeiou" else "a"
        raise ValueError(f"{what} must be {article} {kinds}, got {_JSON_NAMES.get(type(value), 'something else')}")


def _require_key(d: dict, key: str, kinds: str, where: str) -> None:
    if key not in d:
        raise ValueError(f'{where}"{key}" is missing')
    _require(d[key], kinds, f'{where}"{key}"')


def _check_fields(d: dict, kinds: dict[str, str], where: str) -> None:
    for key, kind in kinds.items():
        if key in d:
            _require(d[key], kind, f'{where}"{key}"')


def check_prediction(row: Any, where: str) -> None:
    """Raise a one-line ValueError unless ``row`` has the structure of a predictions.jsonl line."""
    _require(row, "object", f"{where}the record")
    _require_key(row, "id", "integer", where)
    _check_fields(row, {"instruction": "string", "input": "string", "reference": "string"}, where)
    for name in MODEL_NAMES:
        if name in row:  # a model that was not evaluated has no entry
            _require(row[name], "object", f'{where}"{name}"')
            _check_fields(row[name], _MODEL_FIELDS, f'{where}"{name}".')


def check_summary(summary: Any, where: str) -> None:
    """Raise a one-line ValueError unless ``summary`` has the structure of summary.json."""
    _require(summary, "object", f"{where}the file")
    _require_key(summary, "models", "object", where)
    for name, aggregates in summary["models"].items():
        _require(aggregates, "object", f'{where}"models"."{name}"')
        _check_fields(aggregates, {m.key: "number or null" for m in SUMMARY_METRICS}, f'{where}"models"."{name}".')
    _check_fields(summary, {"generation": "object", "judge": "object or null", "checkpoint": "object or null"}, where)
    if summary.get("judge") is not None:
        _require_key(summary["judge"], "model", "string", f'{where}"judge".')
    if summary.get("checkpoint") is not None:
        _check_fields(summary["checkpoint"], {"sha256": "string or null"}, f'{where}"checkpoint".')


def _line_numbers(path: Path) -> list[int]:
    """The line number of each value ``read_jsonl`` returns for ``path`` (it skips blank lines)."""
    return [i for i, line in enumerate(path.read_bytes().split(b"\n"), 1) if line.strip()]


@dataclass
class EvalResults:
    """What evaluate.py wrote for the run, or why there is nothing to show."""

    summary: dict | None = None
    predictions: list[dict] = field(default_factory=list)
    problem: str | None = None

    @classmethod
    def load(cls, run: RunPaths | None, missing: str) -> "EvalResults":
        """The run's results; a missing, unreadable or malformed file gives ``problem`` instead."""
        if run is None:
            return cls(problem=missing)
        command = f"python evaluate.py --run {display_path(run.root)}"
        if not run.summary.is_file() or not run.predictions.is_file():
            return cls(problem=f"No evaluation results for this run yet. Create them with `{command}`.")
        try:
            summary = json.loads(run.summary.read_text(encoding="utf-8"))
            check_summary(summary, f"{display_path(run.summary)}: ")
            predictions = read_jsonl(run.predictions)
            for row, line in zip(predictions, _line_numbers(run.predictions)):
                check_prediction(row, f"{display_path(run.predictions)}, line {line}: ")
        except (ValueError, OSError) as e:
            return cls(problem=f"The evaluation results in `{display_path(run.eval_dir)}` are unreadable ({e}). "
                       f"Recreate them with `{command}`.")
        return cls(summary=summary, predictions=predictions)


# --------------------------------------------------------------------------- summary and loss curve


def summary_markdown(results: EvalResults) -> str:
    """The aggregates of summary.json as a Markdown table, both models side by side."""
    if results.summary is None:
        return f"**{results.problem}**"
    s = results.summary
    models = s["models"]
    names = [m for m in MODEL_NAMES if m in models]
    lines = ["| Metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for m in SUMMARY_METRICS:
        lines.append(f"| {m.label} | " + " | ".join(format_metric(models[n].get(m.key), m.spec) for n in names) + " |")
    g = s.get("generation", {})
    judge = s.get("judge")
    sha = (s.get("checkpoint") or {}).get("sha256") or ""
    info = (
        f"{s.get('num_records', '?')} test records · base model `{s.get('base_model', '?')}` · "
        f"prompt style `{s.get('prompt_style', '?')}` · checkpoint sha256 `{sha[:12]}` · "
        f"max new tokens {g.get('max_new_tokens', '?')}, temperature {g.get('temperature', '?')} · "
        f"judge: {'`' + judge['model'] + '`' if judge else 'none'} · evaluated {s.get('created', '?')}"
    )
    return "\n".join(lines) + "\n\n" + info


def loss_curve(run: RunPaths | None):
    """The run's training loss curve as a PIL image: loss.png, else re-plotted from metrics.jsonl, else None."""
    from PIL import Image

    if run is None:
        return None
    if run.loss_plot.is_file():
        with Image.open(run.loss_plot) as image:
            return image.convert("RGB")
    if not run.metrics.is_file():
        return None
    from gpt2_scratch.run_log import loss_figure, read_metrics

    try:
        rows = read_metrics(run.metrics)
        if not any(r.get("event") == "eval" for r in rows):
            return None
        fig = loss_figure(rows)
    except (ValueError, OSError, KeyError):
        return None
    fig.canvas.draw()
    return Image.frombuffer("RGBA", fig.canvas.get_width_height(), bytes(fig.canvas.buffer_rgba())).convert("RGB")


# --------------------------------------------------------------------------- the predictions table


def score_of(row: dict, key: str) -> float | None:
    """The score ``key`` ("<model>.<metric>") of a prediction row, None when absent or not a number."""
    model, metric = key.split(".")
    value = row.get(model, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def score_choices(predictions: list[dict]) -> list[tuple[str, str]]:
    """The scores present in the predictions (a model not evaluated or no judge: not offered)."""
    choices = [(label, key) for label, key in SCORE_CHOICES if any(score_of(r, key) is not None for r in predictions)]
    return choices or SCORE_CHOICES[:1]


def table_columns(predictions: list[dict]) -> list[tuple[str, str]]:
    """(label, key) of the table's score columns: the scores present, in ``COLUMN_ORDER``."""
    labels = {key: label for label, key in score_choices(predictions)}
    return [(labels[key], key) for key in COLUMN_ORDER if key in labels]


def _searchable(row: dict) -> str:
    parts = [row.get("instruction", ""), row.get("input", ""), row.get("reference", "")]
    parts += [row.get(m, {}).get("response", "") for m in MODEL_NAMES]
    return "\n".join(str(p) for p in parts).casefold()


def filter_rows(
    rows: list[dict], query: str, score: str, lo: float | None, hi: float | None, order: str
) -> list[dict]:
    """Rows whose text contains ``query`` and whose ``score`` is within [lo, hi] (None: no bound), sorted."""
    needle = query.strip().casefold()
    if needle:
        rows = [r for r in rows if needle in _searchable(r)]
    if lo is not None:
        rows = [r for r in rows if (s := score_of(r, score)) is not None and s >= lo]
    if hi is not None:
        rows = [r for r in rows if (s := score_of(r, score)) is not None and s <= hi]
    if order != ORDER_CHOICES[0]:
        sign = -1 if order == "score: high to low" else 1
        # Rows without that score go last either way; ties keep test-set order (sorted is stable).
        rows = sorted(rows, key=lambda r: (score_of(r, score) is None, sign * (score_of(r, score) or 0.0)))
    return rows


def prediction_table(rows: list[dict], columns: list[tuple[str, str]]) -> pd.DataFrame:
    """One line per record: id, the start of the instruction, and the score ``columns`` (label, key)."""

    def short(text: str, n: int = 90) -> str:
        text = " ".join(str(text).split())
        return text if len(text) <= n else text[: n - 1] + "…"

    def cell(row: dict, key: str) -> float | None:
        value = score_of(row, key)
        return None if value is None else round(value, 3)

    data = [[r.get("id"), short(r.get("instruction", ""))] + [cell(r, key) for _, key in columns] for r in rows]
    return pd.DataFrame(data, columns=["id", "instruction"] + [label for label, _ in columns])


def visible_response(text: str, n_tokens: int | None = None) -> str:
    """``text`` as is, or a visible marker when it is only whitespace (its box would look empty).

    ``n_tokens`` (how many tokens produced it), when known, is part of the marker:
    "(only whitespace: 128 tokens, 256 newlines)".
    """
    if not text or text.strip():
        return text
    kinds = {"\n": "newline", " ": "space", "\t": "tab"}
    chars = set(text)
    kind = kinds.get(next(iter(chars)), "whitespace character") if len(chars) == 1 else "whitespace character"
    what = f"{len(text)} {kind}{'s' if len(text) != 1 else ''}"
    if n_tokens is not None:
        what = f"{n_tokens} token{'s' if n_tokens != 1 else ''}, {what}"
    return f"(only whitespace: {what})"


def _response(row: dict, name: str) -> str:
    if name not in row:
        return "(not evaluated)"
    m = row[name]
    text = m.get("response", "")
    return visible_response(text, m.get("length_tokens")) if text else "(empty response)"


def prediction_detail(row: dict) -> tuple[str, str, str, str, str, str]:
    """Everything about one test record: instruction, input, reference, both responses, a line of scores."""
    scores = []
    for name in MODEL_NAMES:
        m = row.get(name)
        if m is None:
            scores.append(f"**{name}**: not evaluated")
            continue
        judge = m.get("judge_score")
        judge_text = "—" if judge is None else str(judge)
        if judge is None and m.get("judge_raw"):
            judge_text += " (judge reply not a score)"
        rouge = m.get("rouge_l")
        scores.append(
            f"**{name}**: ROUGE-L {'—' if rouge is None else format(rouge, '.3f')} · "
            f"exact match {m.get('exact_match', '—')} · judge {judge_text} · {m.get('length_tokens', '—')} tokens"
        )
    return (
        row.get("instruction", ""),
        row.get("input", ""),
        row.get("reference", ""),
        _response(row, "base"),
        _response(row, "finetuned"),
        f"Test record **{row['id']}** — " + " · ".join(scores),
    )


# --------------------------------------------------------------------------- small texts


def header_markdown(
    run_name: str | None, base_source: str, checkpoint: str | None, prompt_style: str, note: str | None = None
) -> str:
    """The app's title and what it serves: run, base model, finetuned checkpoint (and why that one)."""
    finetuned = f"`{run_name}/{Path(checkpoint).name}` (prompt style `{prompt_style}`)" if checkpoint else "none"
    return (
        "# GPT-2 from scratch: pretrained vs. instruction-finetuned\n"
        f"Run `{run_name or 'none'}` · base model `{base_source}` · finetuned checkpoint {finetuned}. "
        "Models load on the first request, so the first answer takes a few seconds longer."
        + (f"\n\n⚠️ {note}" if note else "")
    )


def elapsed(n_tokens: int, seconds: float) -> str:
    """"N new tokens in S s (R tokens/s)": the status line of a finished generation."""
    return f"{n_tokens} new tokens in {seconds:.1f} s ({n_tokens / max(seconds, 1e-9):.1f} tokens/s)"
