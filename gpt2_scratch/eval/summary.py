"""What an evaluation writes: per-record prediction rows, per-model aggregates, the summary and its table.

``evaluation`` measures (``ModelResults``); this module is the one home of the two files' schema:
it turns the measurements into ``eval/predictions.jsonl`` and ``eval/summary.json``, names their
metrics (``SUMMARY_METRICS``, shared by ``evaluate.py``'s table and the app's) and checks files
read back (``check_summary``, ``check_prediction``: one-line errors naming the field).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

from gpt2_scratch.data.records import Record
from gpt2_scratch.eval.progress import ProgressFile, SettingsMismatch, describe_differences
from gpt2_scratch.eval.scoring import exact_match, perplexity, rouge_l_f1
from gpt2_scratch.files import json_kind, read_json
from gpt2_scratch.runs import RunPaths

# The models an evaluation compares, in the order tables show them.
MODEL_NAMES = ("base", "finetuned")


@dataclass(frozen=True)
class SummaryMetric:
    """One aggregate of ``eval/summary.json``'s ``models.<name>``, and how tables show it."""

    key: str
    label: str
    spec: str  # format spec of the value; "%" shows a share as a percentage


# The summary metrics, in table order: evaluate.py's table and the app's both come from this list.
SUMMARY_METRICS = (
    SummaryMetric("reference_loss", "Reference loss (test set)", ".3f"),
    SummaryMetric("perplexity", "Perplexity", ".2f"),
    SummaryMetric("rouge_l", "ROUGE-L F1", ".3f"),
    SummaryMetric("exact_match", "Exact match", "%"),
    SummaryMetric("judge_mean", "Judge score (0–100)", ".1f"),
    SummaryMetric("judge_unparsed", "Judge replies not parsed", "d"),
    SummaryMetric("mean_length_tokens", "Mean response length (tokens)", ".1f"),
    SummaryMetric("empty_share", "Empty responses", "%"),
    SummaryMetric("generation_seconds", "Generation time (s)", ".1f"),
    SummaryMetric("tokens_per_second", "Tokens per second", ".1f"),
)


def shown_metrics(*, judged: bool) -> list[SummaryMetric]:
    """The metrics a table shows: all of them, less the judge's rows when no judge was used."""
    return [m for m in SUMMARY_METRICS if judged or not m.key.startswith("judge_")]


def used_judge(summary: Any) -> bool:
    """Whether the evaluation of ``summary`` used a judge (it names one, or a model has a judge score)."""
    if not isinstance(summary, dict):
        return False
    models = summary.get("models") if isinstance(summary.get("models"), dict) else {}
    return bool(summary.get("judge")) or any(
        isinstance(v, dict) and v.get("judge_mean") is not None for v in models.values()
    )


def format_metric(value: Any, spec: str) -> str:
    """``value`` formatted by a ``SummaryMetric.spec``; a missing value is an em dash."""
    if value is None:
        return "—"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec == "%":
            return f"{value * 100:.1f}%"
        if spec == "d":
            return str(int(value))
        return format(value, spec)
    return str(value)


@dataclass
class ModelResults:
    """Everything measured for one model, in test-record order."""

    responses: list[str]  # raw decoded responses
    lengths: list[int]  # new tokens, <|endoftext|> excluded
    generation_seconds: float
    steps: int  # decoding steps: new tokens plus the <|endoftext|> of rows that stopped on it
    loss: float
    loss_tokens: int
    judge: list[dict] | None  # per record {"score", "raw", "error"}
    progress: list[ProgressFile]  # the files these results were resumed from, marked done once results are written


def build_summary(
    run: RunPaths, info, records, style, generation, dtype, settings, models: dict, *, prompts_sha256, total
) -> dict:
    """``eval/summary.json``: what was evaluated (``num_records`` of the run's ``test_records_total``), how,
    and each model's aggregates."""
    judge = settings.judge
    info_run = run.read_info()
    return {
        "run": str(run.root),
        "method": info_run.training.get("method", "sft"),  # dpo: "base" is the SFT model it started from
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_records": len(records),
        "test_records_total": total,
        "prompts_sha256": prompts_sha256,
        "checkpoint": {"path": str(run.final), "sha256": info.sha256},
        "base_model": settings.base or info_run.base_model,  # evaluate.py --base: the one compared with
        "prompt_style": style.name,
        "test_records": str(run.test_records),
        "generation": generation,
        "device": settings.device,
        "dtype": dtype,
        "judge": None if judge is None else {"url": judge.url, "model": judge.model, "seed": judge.seed},
        "reference_loss": {"reduction": "token-weighted mean", "mask_prompt": True},
        "models": models,
    }


def evaluation_settings(summary: dict) -> dict:
    """What a summary's results depend on, for comparing two evaluations (``progress.describe_differences``)."""
    device = summary.get("device")
    judge = summary.get("judge")
    return {
        "models": [m for m in MODEL_NAMES if m in (summary.get("models") or {})],
        "num_records": summary.get("num_records"),
        "prompts_sha256": summary.get("prompts_sha256"),
        "prompt_style": summary.get("prompt_style"),
        "generation": summary.get("generation") or {},
        "device": str(device).split(":")[0] if device is not None else None,
        "dtype": summary.get("dtype"),
        "checkpoint_sha256": (summary.get("checkpoint") or {}).get("sha256"),
        "base_model": summary.get("base_model"),
        "judge": f"{judge.get('model')} at {judge.get('url')} (seed {judge.get('seed')})" if judge else None,
    }


def finished_summary(run: RunPaths, planned: dict) -> dict | None:
    """The saved summary when it is of exactly the settings of ``planned`` (a rerun has nothing to do), else None.

    The progress files are gone once an evaluation is finished: this is how a rerun knows it is done.
    """
    if not (run.summary.is_file() and run.predictions.is_file()):
        return None
    try:
        saved = read_json(run.summary)
    except ValueError:
        return None
    return saved if evaluation_settings(saved) == evaluation_settings(planned) else None


def keep_finished(run: RunPaths, planned: dict, *, replace: bool) -> None:
    """Refuse to replace a finished evaluation with one of other settings unless ``replace`` (``--replace``, ``--restart``).

    ``planned`` is the summary this evaluation will write, less its scores. Adding a
    judge to an evaluation without one only adds scores: that is not refused.
    """
    if not run.summary.is_file():
        return
    try:
        saved = evaluation_settings(read_json(run.summary))
    except ValueError:
        return  # unreadable: there is nothing to keep (the app says so too)
    planned = evaluation_settings(planned)
    if saved["judge"] is None:
        planned["judge"] = None
    differences = describe_differences(saved, planned)
    if not differences:
        return
    if replace:
        print(f"note: replacing the finished evaluation in {run.eval_dir}/ ({differences})", file=sys.stderr)
        return
    raise SettingsMismatch(
        f"{run.eval_dir}/ holds a finished evaluation made with other settings: {differences}; "
        "rerun with its settings to reuse it, or pass --replace to replace it"
    )


def prediction_rows(records: Sequence[Record], results: dict[str, ModelResults]) -> list[dict]:
    """``eval/predictions.jsonl``: one row per test record, each model's response and its scores."""
    rows = []
    for i, r in enumerate(records):
        row = {"id": r.id, "instruction": r.instruction, "input": r.input, "reference": r.output}
        for name, res in results.items():
            response = res.responses[i]
            scored = response.strip()
            j = res.judge[i] if res.judge is not None else None
            row[name] = {
                "response": response,
                "rouge_l": rouge_l_f1(scored, r.output),
                "exact_match": exact_match(scored, r.output),
                "length_tokens": res.lengths[i],
                "judge_score": j["score"] if j else None,
                "judge_raw": j["raw"] if j else None,
                "judge_error": j["error"] if j else False,
            }
        rows.append(row)
    return rows


def aggregate(name: str, res: ModelResults, rows: list[dict], *, judged: bool) -> dict:
    """``summary.json``'s ``models.<name>``: the aggregates of one model (``SUMMARY_METRICS`` and more)."""
    per = [row[name] for row in rows]
    n = len(per)
    scores = [p["judge_score"] for p in per if p["judge_score"] is not None]
    return {
        "reference_loss": res.loss,
        "perplexity": perplexity(res.loss),
        "reference_loss_tokens": res.loss_tokens,
        "rouge_l": sum(p["rouge_l"] for p in per) / n,
        "exact_match": sum(p["exact_match"] for p in per) / n,
        "mean_length_tokens": sum(p["length_tokens"] for p in per) / n,
        "empty_share": sum(1 for p in per if not p["response"].strip()) / n,
        "judge_mean": sum(scores) / len(scores) if scores else None,
        "judge_unparsed": sum(1 for p in per if p["judge_score"] is None) if judged else 0,
        "judge_errors": sum(1 for p in per if p["judge_error"]) if judged else 0,
        "generation_seconds": round(res.generation_seconds, 3),
        # No rate without tokens: a model that ended every answer at once generated nothing to time.
        "tokens_per_second": (
            round(res.steps / res.generation_seconds, 2) if res.generation_seconds > 0 and any(res.lengths) else None
        ),
    }


def format_table(summary: dict) -> str:
    """The aggregates of ``summary`` side by side, one row per metric, one column per model (no judge: no judge rows)."""
    models = list(summary["models"])
    table = [["metric", *models]]
    for m in shown_metrics(judged=used_judge(summary)):
        table.append([m.label, *(format_metric(summary["models"][name].get(m.key), m.spec) for name in models)])
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = [
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- checking what was written (the app reads it)

_KINDS = {
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "null": lambda v: v is None,
}
# The fields a model's entry of a prediction row may hold, and their JSON kinds.
_MODEL_FIELDS = {
    "response": "string",
    "rouge_l": "number or null",
    "exact_match": "number or null",
    "length_tokens": "number or null",
    "judge_score": "number or null",
    "judge_raw": "string or null",
}


def _require(value: Any, kinds: str, what: str) -> None:
    """A ValueError ``<what> must be <kinds>, got <JSON kind>`` unless ``value`` is one of ``kinds``."""
    if not any(_KINDS[k](value) for k in kinds.split(" or ")):
        article = "an" if kinds[0] in "aeiou" else "a"
        raise ValueError(f"{what} must be {article} {kinds}, got {json_kind(value)}")


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
