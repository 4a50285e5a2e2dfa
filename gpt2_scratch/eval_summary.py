"""What an evaluation writes: per-record prediction rows, per-model aggregates, the summary and its table.

``evaluation`` measures (``ModelResults``); this module turns the measurements
into ``eval/predictions.jsonl`` and ``eval/summary.json`` (their schema is
shared with the app through ``runs.SUMMARY_METRICS``) and into the table that
``evaluate.py`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from gpt2_scratch.data import Record
from gpt2_scratch.progress import ProgressFile
from gpt2_scratch.runs import SUMMARY_METRICS, RunPaths, format_metric
from gpt2_scratch.scoring import exact_match, perplexity, rouge_l_f1


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


def build_summary(run: RunPaths, info, records, style, generation, dtype, settings, models: dict) -> dict:
    """``eval/summary.json``: what was evaluated, how, and each model's aggregates."""
    judge = settings.judge
    return {
        "run": str(run.root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_records": len(records),
        "checkpoint": {"path": str(run.final), "sha256": info.sha256},
        "base_model": run.read_info().base_model,
        "prompt_style": style.name,
        "test_records": str(run.test_records),
        "generation": generation,
        "device": settings.device,
        "dtype": dtype,
        "judge": None if judge is None else {"url": judge.url, "model": judge.model, "seed": judge.seed},
        "reference_loss": {"reduction": "token-weighted mean", "mask_prompt": True},
        "models": models,
    }


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
    """``summary.json``'s ``models.<name>``: the aggregates of one model (runs.SUMMARY_METRICS and more)."""
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
        "tokens_per_second": round(res.steps / res.generation_seconds, 2) if res.generation_seconds > 0 else 0.0,
    }


def format_table(summary: dict) -> str:
    """The aggregates of ``summary`` side by side, one row per metric, one column per model."""
    models = list(summary["models"])
    table = [["metric", *models]]
    for m in SUMMARY_METRICS:
        table.append([m.label, *(format_metric(summary["models"][name].get(m.key), m.spec) for name in models)])
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = [
        "  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
