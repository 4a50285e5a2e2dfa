"""What an evaluation writes: per-record prediction rows, per-model aggregates, the summary and its table.

``evaluation`` measures (``ModelResults``); this module is the one home of the two files' schema:
it turns the measurements into ``eval/predictions.jsonl`` and ``eval/summary.json`` (their scores:
the table of ``eval.metrics``), prints ``evaluate.py``'s table (``format_table``) and checks files
read back (``check_summary``, ``check_prediction``: one-line errors naming the field), and
``EvalResults.load`` reads a run's two files back for the app and the results browser: files from
another version, edited by hand or downloaded from a Hub repo become a one-line ``problem`` naming
the file and the line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from gpt2_scratch.data.records import Record
from gpt2_scratch.eval import metrics
from gpt2_scratch.eval.metrics import JUDGE, Answer, format_metric, shown_metrics
from gpt2_scratch.files import json_kind, read_json, read_jsonl
from gpt2_scratch.generate.progress import ProgressFile, SettingsMismatch, describe_differences
from gpt2_scratch.runs import RunPaths, display_path, unfinished_problem

# The models an evaluation compares, in the order tables show them.
MODEL_NAMES = ("base", "finetuned")


def used_judge(summary: Any) -> bool:
    """Whether the evaluation of ``summary`` used a judge (it names one, or a model has a judge score)."""
    if not isinstance(summary, dict):
        return False
    models = summary.get("models") if isinstance(summary.get("models"), dict) else {}
    return bool(summary.get("judge")) or any(
        isinstance(v, dict) and v.get(JUDGE.key) is not None for v in models.values()
    )


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
    """``eval/predictions.jsonl``: one row per test record, each model's response and its per-record scores."""
    rows = []
    for i, r in enumerate(records):
        row = {"id": r.id, "instruction": r.instruction, "input": r.input, "reference": r.output}
        for name, res in results.items():
            j = res.judge[i] if res.judge is not None else None
            answer = Answer(res.responses[i], r.output, res.lengths[i], j)
            row[name] = {
                "response": answer.response,
                **{m.record.key: m.record.score(answer) for m in metrics.METRICS if m.record is not None},
                "judge_raw": j["raw"] if j else None,
                "judge_error": j["error"] if j else False,
            }
        rows.append(row)
    return rows


def aggregate(name: str, res: ModelResults, rows: list[dict], *, judged: bool) -> dict:
    """``summary.json``'s ``models.<name>``: the aggregates of one model (``metrics.METRICS``), with the number
    of tokens the reference loss averages and of judge calls that failed."""
    per = [row[name] for row in rows]
    return {
        **metrics.aggregates(res, per, judged=judged),
        "reference_loss_tokens": res.loss_tokens,
        "judge_errors": sum(1 for p in per if p["judge_error"]) if judged else 0,
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


def _model_fields() -> dict[str, str]:
    """The fields a model's entry of a prediction row may hold, and their JSON kinds."""
    scores = {m.record.key: "number or null" for m in metrics.METRICS if m.record is not None}
    return {"response": "string", **scores, "judge_raw": "string or null"}


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
            _check_fields(row[name], _model_fields(), f'{where}"{name}".')


def check_summary(summary: Any, where: str) -> None:
    """Raise a one-line ValueError unless ``summary`` has the structure of summary.json."""
    _require(summary, "object", f"{where}the file")
    _require_key(summary, "models", "object", where)
    for name, aggregates in summary["models"].items():
        _require(aggregates, "object", f'{where}"models"."{name}"')
        _check_fields(aggregates, {m.key: "number or null" for m in metrics.METRICS}, f'{where}"models"."{name}".')
    _check_fields(summary, {"generation": "object", "judge": "object or null", "checkpoint": "object or null"}, where)
    if summary.get("judge") is not None:
        _require_key(summary["judge"], "model", "string", f'{where}"judge".')
    if summary.get("checkpoint") is not None:
        _check_fields(summary["checkpoint"], {"sha256": "string or null"}, f'{where}"checkpoint".')


# --------------------------------------------------------------------------- reading them back


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
        missing = [p for p in (run.predictions, run.summary) if not p.is_file()]
        unfinished = _unfinished(run) if missing else None
        if unfinished:  # evaluate.py would refuse it: say how to finish it first
            return cls(problem=f"No evaluation results: {unfinished}.")
        if missing:
            return cls(
                problem=f"No evaluation results for this run yet (no `{display_path(missing[0])}`). "
                f"Create them with `{command}`."
            )
        try:
            summary = json.loads(run.summary.read_text(encoding="utf-8"))
            check_summary(summary, f"{display_path(run.summary)}: ")
            predictions = read_jsonl(run.predictions)
            for row, line in zip(predictions, _line_numbers(run.predictions)):
                check_prediction(row, f"{display_path(run.predictions)}, line {line}: ")
        except (ValueError, OSError) as e:
            return cls(
                problem=f"The evaluation results in `{display_path(run.eval_dir)}` are unreadable ({e}). "
                f"Recreate them with `{command}`."
            )
        return cls(summary=summary, predictions=predictions)


def _unfinished(run: RunPaths) -> str | None:
    """``runs.unfinished_problem`` (None when finished, or when run.json is missing or unreadable)."""
    try:
        return unfinished_problem(run)
    except (FileNotFoundError, ValueError):
        return None
