"""Preference pairs without a labeller (self-play, as in SPIN, Chen et al. 2024): chosen = the dataset's answer,
rejected = the model's own answer. Entry point: ``build_preferences`` (``make_preferences.py``).

Answers are generated in batches with the KV cache, longest prompts first (``batched.plan_batches``);
each finished batch goes to ``<out>.progress.jsonl`` (an ``generate.progress.ProgressFile`` whose header
names the model, the prompts and the settings), so an interrupted build continues where it stopped.
The output, written atomically at the end, has one entry per source record, in source order: it
splits 85/10/5 exactly like its source, so a DPO run on it holds out the SFT run's test records. A
record whose answer agrees with the reference keeps ``rejected == chosen`` in its place (and an empty
answer stays empty): DPO skips such pairs, counted. They are counted here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from gpt2_scratch.data.preferences import PreferenceRecord, write_preferences
from gpt2_scratch.data.records import Record
from gpt2_scratch.generate.batched import generate_batches, plan_batches
from gpt2_scratch.generate.progress import ProgressFile, check_batch_entry
from gpt2_scratch.generate.sampling import SamplingSettings
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import PromptStyle
from gpt2_scratch.tokenizer import decode, encode


@dataclass(frozen=True)
class BuildStats:
    """What a build wrote: pairs, how many can teach a preference, and how long generation took."""

    records: int
    agree: int  # the model's answer equals the reference (rejected == chosen): DPO skips them
    empty: int  # the model answered nothing: DPO skips them
    generation_seconds: float
    new_tokens: int

    @property
    def usable(self) -> int:
        return self.records - self.agree - self.empty

    def summary(self, out: Path) -> str:
        rate = self.new_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
        return (
            f"wrote {out}: {self.records} pairs, {self.usable} usable; {self.agree} where the model agrees with the "
            f"reference and {self.empty} empty answers stay in place (DPO skips them, so the file splits like its "
            f"source); generation {self.generation_seconds:.1f} s, {rate:.1f} new tokens/s"
        )


def progress_path(out: Path) -> Path:
    """Where a build into ``out`` keeps its finished batches."""
    return out.with_name(out.name + ".progress.jsonl")


def _fit(settings: SamplingSettings, block_size: int, longest: int) -> SamplingSettings:
    """Max new tokens capped so that the longest prompt and its answer fit the context (else half of it)."""
    cap = block_size - longest if longest < block_size // 2 else block_size // 2
    if settings.max_new_tokens <= cap:
        return settings
    print(f"note: max new tokens {settings.max_new_tokens} capped at {cap} (context {block_size})", file=sys.stderr)
    return dataclasses.replace(settings, max_new_tokens=cap)


def build_preferences(
    model: GPT,
    records: Sequence[Record],
    style: PromptStyle,
    out: Path,
    settings: SamplingSettings,
    *,
    batch_size: int = 32,
    model_id: dict | None = None,
    progress_bar: bool = True,
    restart: bool = False,
    replace: bool = False,
) -> BuildStats:
    """Generate the model's answer to every record and write ``out`` (see the module doc); returns the counts.

    ``model_id`` (e.g. the model string and its weights' sha256) goes into the progress header, so
    that the batches of one model are never mixed with another's. ``restart`` discards them first; ``replace``
    lets a finished build's progress file of other settings (kept by earlier versions) be started afresh.
    """
    prompts = [encode(style.format(r.instruction, r.input)) for r in records]
    settings = _fit(settings, model.config.block_size, max(len(p) for p in prompts))
    batches = plan_batches([len(p) for p in prompts], batch_size)
    digest = hashlib.sha256(json.dumps([[r.id, p] for r, p in zip(records, prompts)]).encode()).hexdigest()
    header = {
        "model": model_id or {},
        "prompt_style": style.name,
        "prompts_sha256": digest,
        "sampling": settings.record(),
        "batch_size": batch_size,
        "device": model.device.type,
    }
    if restart:
        progress_path(out).unlink(missing_ok=True)
    progress = ProgressFile.open(progress_path(out), header, check_batch_entry, replace=replace)
    outputs: list[list[int] | None] = [None] * len(records)
    seconds = 0.0
    for entry in progress.entries:
        for i, ids in zip(entry["indices"], entry["outputs"]):
            outputs[i] = ids
        seconds += entry["seconds"]
    done = {e["batch"] for e in progress.entries}
    n_done = sum(len(batches[b]) for b in done)
    bar = tqdm(total=len(records), initial=n_done, desc="answers", unit="rec", disable=not progress_bar)

    def on_batch(b: int, indices: list[int], outs: list[list[int]], secs: float) -> None:
        nonlocal seconds
        progress.append({"batch": b, "indices": indices, "outputs": outs, "seconds": round(secs, 4)})
        for i, ids in zip(indices, outs):
            outputs[i] = ids
        seconds += secs
        bar.update(len(indices))

    try:
        generate_batches(model, prompts, settings, batches, on_batch, skip=done, stop_ids=style.stop_ids())
    finally:
        bar.close()
    pairs = [
        PreferenceRecord(r.id, r.instruction, r.input, chosen=r.output, rejected=decode(ids).strip(), output=r.output)
        for r, ids in zip(records, outputs)
    ]
    write_preferences(out, pairs)
    progress.remove()  # the file is written: nothing to resume
    agree = sum(1 for p in pairs if p.rejected and p.rejected == p.chosen.strip())
    empty = sum(1 for p in pairs if not p.rejected)
    return BuildStats(len(pairs), agree, empty, seconds, sum(len(o) for o in outputs))
