"""Evaluate a finetuned run against its base model on the run's own test records.

Entry point: ``evaluate_run(run, EvalSettings(...))``. For each model (``base``, ``finetuned``) it
generates a response to every test record (``sampling.generate`` in length-sorted batches, or one
``engine.Engine`` with ``refill``), computes the reference loss (``scoring.reference_loss``),
scores each response (ROUGE-L, exact match, length, optional ``judge.JudgeClient``) and writes
``eval/predictions.jsonl`` and ``eval/summary.json`` atomically (schema: ``eval.summary``).
Invariant: an interrupted evaluation resumes from its progress files (``generate.progress``) to the
same results; results of different settings are never mixed, and a finished evaluation is never
replaced by one with other settings unless asked (``replace``). A LoRA run is loaded once: the
base of the comparison is the same weights with the adapter off (``lora.base_view``). Design: docs/design.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from gpt2_scratch import inference, lora
from gpt2_scratch.checkpoint import CheckpointInfo, check_weights, read_checkpoint_info
from gpt2_scratch.data.batches import EncodedExample, encode_record
from gpt2_scratch.data.records import Record, read_records
from gpt2_scratch.eval.judge import JudgeClient, JudgeConfig
from gpt2_scratch.eval.scoring import reference_loss
from gpt2_scratch.eval.summary import (
    MODEL_NAMES,
    ModelResults,
    aggregate,
    build_summary,
    finished_summary,
    keep_finished,
    prediction_rows,
)
from gpt2_scratch.files import atomic_write_json, atomic_write_jsonl
from gpt2_scratch.generate.batched import DEFAULT_BATCH_SIZE, generate_batches, generate_refilled, plan_batches
from gpt2_scratch.generate.progress import ProgressFile, check_batch_entry, check_judge_entry
from gpt2_scratch.generate.sampling import SamplingSettings, new_token_cap
from gpt2_scratch.inference import DTYPES, load_model, resolve_dtype
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import PromptStyle, get_prompt_style
from gpt2_scratch.runs import RunPaths, require_finished
from gpt2_scratch.tokenizer import decode, encode

# The reference loss materializes (B, T, vocab) float32 logits: 8 rows of 300 tokens are ~0.5 GB.
# Its value does not depend on the batching (scoring.reference_loss is token-weighted).
LOSS_BATCH_SIZE = 8


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how."""

    models: tuple[str, ...] = MODEL_NAMES
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    batch_size: int = DEFAULT_BATCH_SIZE  # rows decoded together
    # Rows refill as others finish (engine.Engine) instead of fixed batches (sampling.generate). Measured
    # (python -m benchmarks.bench_engine, 124M, 64 prompts, batch 32): 1.19x when answers are 8-128 tokens long,
    # 0.75x when every answer runs to the limit, as a base model's and random weights' do: hence opt-in.
    refill: bool = False
    limit: int | None = None  # evaluate only the first ``limit`` test records
    device: str = "cpu"
    dtype: str = "float32"  # inference format (inference.DTYPES); float32 reproduces earlier results exactly
    kernel: str | None = None  # the linear layers' kernel (kernels.KERNELS); None: measured per shape
    judge: JudgeConfig | None = None
    base: str | None = None  # the base model instead of the one run.json records (e.g. moved since)
    restart: bool = False  # delete saved progress first
    replace: bool = False  # replace a finished evaluation made with other settings
    progress: bool = True  # show tqdm progress bars

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("choose at least one model to evaluate")
        for m in self.models:
            if m not in MODEL_NAMES:
                raise ValueError(f"unknown model {m!r}; choose from {', '.join(MODEL_NAMES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be a positive integer, got {self.limit!r}")


# --- the evaluation -----------------------------------------------------------------------


def _prompts_sha256(prompts: Sequence[Sequence[int]], records: Sequence[Record]) -> str:
    h = hashlib.sha256()
    for r, p in zip(records, prompts):
        h.update(json.dumps([r.id, list(p), r.output]).encode())
    return h.hexdigest()


class _Models:
    """The models to evaluate, each loaded when asked (one at a time in memory), in ``dtype``.

    A LoRA run's are loaded here, at once: the adapter kept apart on its base (``finetuned``),
    and that base with the adapter off (``base``, ``lora.base_view``): one copy of the weights.
    """

    def __init__(
        self,
        run: RunPaths,
        base_model: str,
        info: CheckpointInfo,
        device: str,
        dtype: str,
        base: str | None = None,
        kernel: str | None = None,
    ):
        self.run, self.base_model, self.info, self.device, self.dtype = run, base_model, info, device, dtype
        self.kernel = kernel
        self.adapted = None
        if info.adapter is not None:  # ``base``: the adapter's base, when not the one it records
            self.adapted, _ = load_model(
                str(run.final), device=device, dtype=dtype, merge=False, base=base, kernel=kernel
            )
            print(f"models: {dtype}, kernels {inference.summary(self.adapted)}")

    def get(self, name: str) -> tuple[GPT, str | None]:
        """(model ready for inference, sha256 of its weights when known: ours, or the LoRA base's)."""
        if self.adapted is not None:
            if name == "base":
                return lora.base_view(self.adapted), self.info.adapter.base_sha256
            return self.adapted, self.info.sha256
        source = str(self.run.final) if name == "finetuned" else self.base_model
        model, info = load_model(source, device=self.device, dtype=self.dtype, kernel=self.kernel)
        print(f"{name} model: {self.dtype}, kernels {inference.summary(model)}")
        return model, info.sha256 if info is not None else None


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="rec", disable=not enabled, dynamic_ncols=True)


def evaluate_model(
    name: str,
    model: GPT,
    *,
    records: Sequence[Record],
    prompts: Sequence[Sequence[int]],
    examples: Sequence[EncodedExample],
    style: PromptStyle,
    header: dict,
    eval_dir: Path,
    settings: EvalSettings,
) -> ModelResults:
    """Generate (resuming from ``eval_dir/partial_<name>.jsonl``), compute the reference loss, judge."""
    batches = plan_batches([len(p) for p in prompts], settings.batch_size)
    replace = settings.replace or settings.restart
    progress = ProgressFile.open(eval_dir / f"partial_{name}.jsonl", header, check_batch_entry, replace=replace)
    outputs: list[list[int] | None] = [None] * len(records)
    seconds, steps = 0.0, 0
    max_new = settings.sampling.max_new_tokens

    def absorb(entry: dict) -> None:
        nonlocal seconds, steps
        b = entry["batch"]
        if b >= len(batches) or entry["indices"] != batches[b]:
            raise ValueError(f"{progress.path}: batch {b} does not match this evaluation's plan; delete the file")
        for i, ids in zip(entry["indices"], entry["outputs"]):
            outputs[i] = ids
            steps += len(ids) + (len(ids) < max_new)
        seconds += entry["seconds"]

    for entry in progress.entries:
        absorb(entry)
    done = {e["batch"] for e in progress.entries}
    n_done = sum(len(batches[b]) for b in done)
    bar = _progress_bar(len(records), n_done, f"generate {name}", settings.progress and n_done < len(records))

    def on_batch(b: int, indices: list[int], outs: list[list[int]], secs: float) -> None:
        entry = {"batch": b, "indices": indices, "outputs": outs, "seconds": round(secs, 4)}
        progress.append(entry)
        absorb(entry)
        bar.update(len(indices))
        bar.set_postfix_str(f"{steps / max(seconds, 1e-9):.1f} tok/s")

    try:
        run = generate_refilled if settings.refill else generate_batches
        run(model, prompts, settings.sampling, batches, on_batch, skip=done, stop_ids=style.stop_ids())
    finally:
        bar.close()
    assert all(o is not None for o in outputs)

    loss, loss_tokens = reference_loss(model, examples, batch_size=min(settings.batch_size, LOSS_BATCH_SIZE))
    responses = [decode(ids) for ids in outputs]
    judge, files = None, [progress]
    if settings.judge is not None:
        judge, judge_progress = _judge(name, records, responses, style, header, eval_dir, settings)
        files.append(judge_progress)
    return ModelResults(responses, [len(o) for o in outputs], seconds, steps, loss, loss_tokens, judge, files)


def _judge(name, records, responses, style, gen_header, eval_dir, settings) -> tuple[list[dict], ProgressFile]:
    """Judge every response (resuming from ``eval_dir/judge_<name>.jsonl``)."""
    client = JudgeClient(settings.judge)
    header = {"judge": settings.judge.fingerprint(), "generation": gen_header}
    replace = settings.replace or settings.restart
    progress = ProgressFile.open(eval_dir / f"judge_{name}.jsonl", header, check_judge_entry, replace=replace)
    by_id = {e["id"]: e for e in progress.entries}
    todo = [i for i, r in enumerate(records) if r.id not in by_id]
    bar = _progress_bar(len(records), len(records) - len(todo), f"judge {name}", settings.progress and bool(todo))
    try:
        for i in todo:
            r = records[i]
            result = client.score(style.format(r.instruction, r.input), r.output, responses[i].strip())
            entry = {"id": r.id, "score": result.score, "raw": result.raw, "error": result.error}
            progress.append(entry)
            by_id[r.id] = entry
            bar.update(1)
    finally:
        bar.close()
    return [by_id[r.id] for r in records], progress


def _fit_context(settings: EvalSettings, block_size: int, longest_prompt: int) -> EvalSettings:
    """Cap max new tokens so that prompt + response fit the model's context, with a note (as finetune.py caps max length).

    The cap leaves room for the longest prompt; when even that does not fit, half
    the context goes to the response and long prompts are cropped from the left.
    """
    asked = settings.sampling.max_new_tokens
    cap = new_token_cap(block_size, longest_prompt)
    if asked <= cap:
        return settings
    print(
        f"note: max new tokens {asked} capped at {cap}: the model's context is {block_size} tokens "
        f"and the longest test prompt {longest_prompt}",
        file=sys.stderr,
    )
    return replace(settings, sampling=replace(settings.sampling, max_new_tokens=cap))


def _test_records(run: RunPaths, settings: EvalSettings) -> tuple[list[Record], int]:
    """(the run's test records, the first ``settings.limit``; how many there are in all); a missing or
    empty file is a one-line error."""
    if not run.test_records.is_file():
        raise FileNotFoundError(f"{run.root} has no test records ({run.test_records})")
    records = read_records(run.test_records)
    total = len(records)
    if settings.limit is not None:
        records = records[: settings.limit]
    if not records:
        raise ValueError(f"{run.test_records} holds no records")
    return records, total


def _generation_settings(settings: EvalSettings) -> dict:
    """How the answers are generated, as progress headers and ``summary.json`` record it."""
    return {
        **settings.sampling.record(),  # files written before a newer option existed still compare equal
        "batch_size": settings.batch_size,
        "refill": settings.refill,
    }


def _evaluate_models(run: RunPaths, models: "_Models", base_model: str, common: dict, settings: EvalSettings, **data):
    """``evaluate_model`` for each model of ``settings.models``, loaded one at a time; {name: results}."""
    max_new = settings.sampling.max_new_tokens
    results: dict[str, ModelResults] = {}
    for name in (m for m in MODEL_NAMES if m in settings.models):
        model, sha256 = models.get(name)
        source = "final/" if name == "finetuned" else base_model  # the sha256 identifies the weights
        header = {"model": name, "source": source, "sha256": sha256, **common}
        if model.config.block_size <= max_new:  # a --base of another shape than the run's
            raise ValueError(f"max new tokens ({max_new}) must be smaller than the {name} model's context")
        results[name] = evaluate_model(name, model, header=header, eval_dir=run.eval_dir, settings=settings, **data)
        del model
    return results


def evaluate_run(run: RunPaths, settings: EvalSettings) -> dict:
    """Evaluate ``run``; write ``eval/predictions.jsonl`` and ``eval/summary.json``; return the summary.

    Holds the run folder's lock throughout (``RunPaths.lock``): no training or other evaluation writes beside it.
    """
    if not run.root.is_dir():
        raise FileNotFoundError(f"run folder not found: {run.root}")
    with run.lock("evaluate.py"):
        return _evaluate_locked(run, settings)


def _evaluate_locked(run: RunPaths, settings: EvalSettings) -> dict:
    info_run = require_finished(run)  # an unfinished run: how to finish it, in one line
    base_model = settings.base or info_run.base_model  # evaluate.py --base: the base compared with
    info = read_checkpoint_info(run.final)
    if "finetuned" in settings.models or info.adapter is not None:
        check_weights(info)  # a truncated or corrupt final/ is reported now, not after the base's answers
    if info.prompt_style is None:
        raise ValueError(f"{run.final} records no prompt style; it was not saved by finetune.py")
    style = get_prompt_style(info.prompt_style)
    records, total = _test_records(run, settings)
    # Generation gets the prompt as the app sends it: encode(prompt text). The loss uses
    # encode_record, the tokenization of training.
    prompts = [encode(style.format(r.instruction, r.input)) for r in records]
    examples = [encode_record(r, style) for r in records]
    settings = _fit_context(settings, info.config.block_size, max(len(p) for p in prompts))
    dtype = resolve_dtype(settings.dtype, settings.device)  # "auto" is recorded as what it chose
    generation = _generation_settings(settings)
    prompts_sha256 = _prompts_sha256(prompts, records)
    summary_of = functools.partial(  # (models) -> summary.json
        build_summary,
        run,
        info,
        records,
        style,
        generation,
        dtype,
        settings,
        prompts_sha256=prompts_sha256,
        total=total,
    )
    planned = summary_of({m: {} for m in settings.models})
    done = None if settings.replace or settings.restart else finished_summary(run, planned)
    if done is not None:  # the same evaluation, finished: nothing to generate
        return done
    keep_finished(run, planned, replace=settings.replace or settings.restart)

    models = _Models(
        run, base_model, info, settings.device, dtype, base=settings.base, kernel=settings.kernel
    )  # a LoRA run loads here: nothing written yet
    run.eval_dir.mkdir(parents=True, exist_ok=True)
    if settings.restart:
        for pattern in ("partial_*.jsonl", "judge_*.jsonl"):
            for p in run.eval_dir.glob(pattern):
                p.unlink()
    common = {
        "prompt_style": style.name,
        "prompts_sha256": prompts_sha256,
        "num_records": len(records),
        "generation": generation,
        "device": torch.device(settings.device).type,
        "dtype": dtype,
    }
    results = _evaluate_models(
        run, models, base_model, common, settings, records=records, prompts=prompts, examples=examples, style=style
    )
    rows = prediction_rows(records, results)
    models = {name: aggregate(name, res, rows, judged=settings.judge is not None) for name, res in results.items()}
    summary = summary_of(models)
    atomic_write_jsonl(run.predictions, rows)
    atomic_write_json(run.summary, summary)
    for res in results.values():  # the results are written: summary.json now guards them, not these files
        for progress in res.progress:
            progress.remove()
    return summary
