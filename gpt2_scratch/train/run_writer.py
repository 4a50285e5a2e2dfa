"""What training writes into its run folder besides the log and the resume state (rank 0 only).

Entry points: ``create_run_folder`` (exclusive: a taken name is an error, a taken default name
becomes ``<time>-2``, ...), ``write_run_files`` (run.json, the run's test and validation records),
``BestWeights`` (``best/``: kept in memory, written when the loop asks; hard links to ``final/``
when they are the final weights; ``save_model``: a LoRA run's hold its adapter only), ``mark_interrupted`` (run.json after a Ctrl-C, and the message
that says how to go on) and the cleanup (``remove_leftovers``, ``clear_outputs``).
The folder's layout itself is ``runs.RunPaths``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import torch

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import (
    CHECKPOINT_KIND,
    AdapterInfo,
    is_checkpoint,
    save_adapter_checkpoint,
    save_checkpoint,
)
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.data.records import Split, write_records
from gpt2_scratch.files import link_folder, remove_stray_temporaries
from gpt2_scratch.model import GPT
from gpt2_scratch.runs import RunInfo, RunPaths

MAX_DEFAULT_NAME_TRIES = 100  # runs started in the same second: <time>, <time>-2, ..., <time>-100


def taken_message(root: Path) -> str:
    """The error for a run folder that exists already."""
    return f"run folder {root} already exists; choose another --name or continue it with --resume {root}"


def check_out_dir(out_dir: str | os.PathLike) -> None:
    """A one-line error when ``--out-dir`` cannot hold run folders: it, or a folder above it, is a file."""
    path = Path(out_dir)
    for existing in (p for p in (path, *path.parents) if p.exists()):
        if not existing.is_dir():
            raise ValueError(f"--out-dir {out_dir}: {existing} is a file, not a folder")
        return


def create_run_folder(out_dir: str | os.PathLike, name: str | None) -> Path:
    """Create a new run folder exclusively: ``out_dir/name``, or ``out_dir/<start time>`` (then ``-2``, ``-3``, ...).

    ``os.mkdir`` fails when the folder exists, whoever made it a moment ago:
    that, not a look beforehand, is what keeps two runs out of one folder.
    """
    check_out_dir(out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = [name] if name is not None else [stamp] + [f"{stamp}-{i}" for i in range(2, MAX_DEFAULT_NAME_TRIES + 1)]
    for candidate in names:
        try:
            os.mkdir(out_dir / candidate)
            return out_dir / candidate
        except FileExistsError:
            continue
    raise ValueError(taken_message(out_dir / names[-1]))


def mark_interrupted(paths: RunPaths | None, info: RunInfo | None) -> RunInfo | None:
    """After a Ctrl-C: run.json's status becomes ``interrupted`` (atomically; it keeps ``saved_step``).

    A run whose run.json is not written yet, or that is finished, is left as it is. Returns the info now on disk.
    """
    if paths is None or info is None or info.status == "finished" or not paths.run_json.is_file():
        return info
    info = dataclasses.replace(info, status="interrupted")
    paths.write_info(info)
    return info


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``train``; its message says how to go on (``run_folder`` None: nothing to resume).

    ``info`` (the run.json written at the interrupt) and ``step`` (the step reached) let it
    say which step the saved state is from, so how many steps a resume redoes.
    """

    def __init__(self, run_folder: Path | None, info: RunInfo | None = None, step: int | None = None):
        self.run_folder = run_folder
        if run_folder is None:
            message = "interrupted before the run folder was created; there is nothing to resume"
        elif info is not None and step is not None and info.total_steps is not None:
            at = f"interrupted at step {step} of {info.total_steps}"
            if info.saved_step is None:
                message = f"{at}, before the first saved state; --resume {run_folder} starts the run over"
            elif step == info.saved_step:
                message = f"{at}, its state saved at that step: continue with --resume {run_folder}"
            else:
                redo = step - info.saved_step
                message = (
                    f"{at}; the last saved state is from step {info.saved_step} ({redo} step{'s' * (redo != 1)} "
                    f"will be redone): continue with --resume {run_folder}"
                )
        elif (RunPaths(run_folder).train_state / "state.json").is_file():
            message = f"interrupted; continue from the last saved state with --resume {run_folder}"
        else:
            message = f"interrupted before the first saved state; --resume {run_folder} starts the run over"
        super().__init__(message)


def write_run_files(paths: RunPaths, run_info: RunInfo, split: Split) -> None:
    """run.json first (from then on the folder can be resumed), then data/test.jsonl and data/val.jsonl."""
    paths.write_info(run_info)
    write_records(paths.test_records, split.test)
    write_records(paths.val_records, split.val)


def clear_outputs(paths: RunPaths) -> None:
    """Remove what a run's first attempt wrote (log, plot, checkpoints), before it starts over."""
    for path in (paths.metrics, paths.loss_plot):
        path.unlink(missing_ok=True)
    for folder in (paths.best, paths.final):
        shutil.rmtree(folder, ignore_errors=True)


def remove_leftovers(paths: RunPaths) -> list[str]:
    """Remove what saves killed midway left in the run folder (a 124M train state: 1.5 GB); returns their paths.

    Only while no other process writes in the folder: at a resume and at the end of the run.
    """
    removed = []
    for folder in (paths.root, paths.test_records.parent):
        removed += [str(folder / name) for name in remove_stray_temporaries(folder)]
    return removed


def save_model(folder: Path, model: GPT, *, adapter: AdapterInfo | None, prompt_style: str, metadata: dict) -> None:
    """A run's checkpoint of ``model``: the whole model, or (``adapter``: a LoRA run) its adapter alone."""
    if adapter is None:
        save_checkpoint(folder, model, prompt_style=prompt_style, metadata=metadata)
    else:
        state = lora.adapter_state_dict(model)
        save_adapter_checkpoint(folder, state, model.config, adapter, prompt_style=prompt_style, metadata=metadata)


class BestWeights:
    """The weights of the lowest validation loss so far: kept in memory, written to best/ when asked.

    Writing a checkpoint at every improvement would cost more than the
    evaluations themselves (a 124M checkpoint is 500 MB and evaluation runs
    every few steps); the loop writes at saves, epoch ends and the end.
    """

    def __init__(self, written: int = -1, adapter: AdapterInfo | None = None):
        self.weights: dict[str, torch.Tensor] | None = None  # a CPU copy, head excluded (it is wte)
        self.config: GPTConfig | None = None
        self.written = written  # the step whose weights best/ holds (-1: none)
        self.adapter = adapter  # a LoRA run: only the adapters change, and only they are kept

    def keep(self, model: GPT) -> None:
        state = model.state_dict().items()
        keep = lora.is_adapter_key if self.adapter is not None else (lambda k: k != "lm_head.weight")
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in state if keep(k)}
        self.config = model.config

    def write(self, folder: Path, step: int, *, prompt_style: str, metadata: dict) -> None:
        """Write the kept weights (those of ``step``) to ``folder``, unless it holds them already."""
        if self.weights is None or self.written == step:
            return
        if self.adapter is not None:
            save_adapter_checkpoint(
                folder, self.weights, self.config, self.adapter, prompt_style=prompt_style, metadata=metadata
            )
            self.written = step
            return
        with torch.device("meta"):  # a shell for save_checkpoint; load_weights makes the kept tensors its own
            shell = GPT(self.config)
        shell.load_weights(self.weights, "the best weights")
        save_checkpoint(folder, shell, prompt_style=prompt_style, metadata=metadata)
        self.written = step

    def link(self, folder: Path, final: Path, step: int) -> None:
        """Make ``folder`` hard links to ``final`` (a checkpoint of the same weights, step and metadata)."""
        if self.written != step:
            link_folder(final, folder, CHECKPOINT_KIND, ours=is_checkpoint)
            self.written = step
