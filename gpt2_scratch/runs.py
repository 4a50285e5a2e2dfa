"""The run folder's schema, shared by finetune.py, evaluate.py, app.py and publish.py.

``RunPaths(root)`` names every file of ``runs/<name>/``: run.json (``RunInfo``: base model, dataset
and split, training options, status), final/ and best/ (checkpoints), data/test.jsonl and
data/val.jsonl (the run's own records, each with a stable "id"), metrics.jsonl, loss.png,
train_state/ (while training), reference_logps.safetensors (DPO runs: the reference's log-probabilities,
computed once: train/dpo.py), eval/predictions.jsonl and eval/summary.json (evaluate.py).
Also: the finished runs (``finished_runs``, ``latest_run``), what an app downloads of a published
run (``APP_FILES``, ``HUB_RUN_FILES``) and an export read as a run (``run_from_export``).
The folder drawn: docs/design.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2_scratch.checkpoint import (
    CONFIG_FILE,
    EXPORT_KEY,
    PEFT_DIR,
    WEIGHTS_FILE,
    CheckpointInfo,
    is_export,
    read_export_info,
)
from gpt2_scratch.files import atomic_write_json, exclusive_lock, read_json
from gpt2_scratch.hub import looks_local

DEFAULT_RUNS_DIR = Path("runs")
# Hugging Face Hub model repos holding runs, comma-separated (set on a Space).
HUB_REPO_ENV = "GPT2_SCRATCH_HUB_REPO"
# What an app needs of a published export (snapshot_download allow_patterns): weights, config, the run's
# files, and a LoRA run's adapter (PEFT's layout).
APP_FILES = [WEIGHTS_FILE, CONFIG_FILE, "run.json", "eval/*", "loss.png", "metrics.jsonl", f"{PEFT_DIR}/*"]
# ... and of a run folder pushed to the Hub as it is, whose model sits in final/ (not train_state/, not best/).
HUB_RUN_FILES = [*APP_FILES, "final/*"]


def hub_run_files(config_json: Path) -> list[str]:
    """``HUB_RUN_FILES`` for the repo whose root ``config.json`` is ``config_json`` (downloaded first): a LoRA
    run's export without its merged weights, which the app does not load (it serves base + adapter/), unless
    its base is a local path that is not here (the app then serves the merged weights)."""
    try:
        meta = json.loads(config_json.read_text(encoding="utf-8")).get(EXPORT_KEY)
    except (OSError, ValueError, AttributeError):  # none (a run folder pushed as it is), or not ours
        return HUB_RUN_FILES
    adapter = meta.get("adapter") if isinstance(meta, dict) else None
    if not isinstance(adapter, dict):
        return HUB_RUN_FILES
    base = str(adapter.get("base_model") or meta.get("base_model") or "")
    if looks_local(base) and not Path(base).expanduser().exists():  # no base to load here
        return HUB_RUN_FILES
    return [p for p in HUB_RUN_FILES if p != WEIGHTS_FILE]


@dataclass
class RunInfo:
    """``run.json``: what a run is (written by training, read by evaluation and the app).

    ``training`` is the run's ``TrainConfig`` as a dict (kept as a dict here so that
    this module does not depend on ``train``); ``status`` is ``running`` until the
    final checkpoint is written, then ``finished``; ``interrupted`` after a Ctrl-C.
    ``saved_step`` is the step of the resume state in ``train_state/`` (None: none
    yet), ``total_steps`` the steps the run makes in all (None: older runs).
    """

    name: str
    base_model: str
    prompt_style: str
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    saved_step: int | None = None
    total_steps: int | None = None

    STATUSES = ("running", "interrupted", "finished")

    # ``training`` keys that are no options of the model: at the top level already (base, prompt_style,
    # dataset), bookkeeping (name, out_dir, resume) or of the machine that trained it (device).
    NOT_OPTIONS = frozenset({"base", "prompt_style", "dataset", "name", "out_dir", "resume", "device"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def options(self) -> dict[str, Any]:
        """``training`` less ``NOT_OPTIONS``: what the model card lists and the results browser compares."""
        return {k: v for k, v in (self.training or {}).items() if k not in self.NOT_OPTIONS}

    @classmethod
    def from_dict(cls, d: Any, source: str = "run.json") -> "RunInfo":
        """Validate and build from parsed JSON; a wrong structure is a one-line ``ValueError`` naming ``source``."""
        if not isinstance(d, dict):
            raise ValueError(f"{source} is not a JSON object")
        types = {
            "name": str,
            "base_model": str,
            "prompt_style": str,
            "dataset": dict,
            "training": dict,
            "status": str,
            "created": str,
        }
        for key, typ in types.items():
            if key in ("dataset", "training", "created") and key not in d:
                continue  # optional: older runs, hand-made runs
            if not isinstance(d.get(key), typ):
                got = "missing" if key not in d else f"a {type(d[key]).__name__}"
                raise ValueError(f'{source}: "{key}" must be a {typ.__name__}, got {got}')
        for key in ("saved_step", "total_steps"):  # optional: older runs have neither
            value = d.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f'{source}: "{key}" must be a non-negative integer or null, got {value!r}')
        if d["status"] not in cls.STATUSES:
            raise ValueError(f'{source}: "status" must be one of {", ".join(cls.STATUSES)}, got {d["status"]!r}')
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class RunPaths:
    """Paths inside one run folder."""

    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    def read_info(self) -> RunInfo:
        """The run's ``run.json``; a missing or malformed file is a one-line error naming it."""
        if not self.run_json.is_file():
            raise FileNotFoundError(f"{self.root} is not a run folder: no run.json")
        return RunInfo.from_dict(read_json(self.run_json), str(self.run_json))

    def write_info(self, info: RunInfo) -> None:
        """Write ``run.json`` atomically."""
        atomic_write_json(self.run_json, info.to_dict())

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def lock(self, holder: str):
        """Hold the run folder for writing (``files.exclusive_lock``): a second writer gets a one-line
        ``files.Locked`` naming the PID of the first. Training holds it for its whole life, evaluation too."""
        return exclusive_lock(self.lock_file, holder, f"run folder {self.root}")

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def test_records(self) -> Path:
        return self.root / "data" / "test.jsonl"

    @property
    def val_records(self) -> Path:
        return self.root / "data" / "val.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.root / "loss.png"

    @property
    def train_state(self) -> Path:
        return self.root / "train_state"

    @property
    def reference_logps(self) -> Path:
        return self.root / "reference_logps.safetensors"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def predictions(self) -> Path:
        return self.eval_dir / "predictions.jsonl"

    @property
    def summary(self) -> Path:
        return self.eval_dir / "summary.json"


def _model_config(folder: Path) -> Path | None:
    """The config.json of a folder's finished model: ``final/`` of a run, or the root of an export; else None."""
    final = folder / "final" / "config.json"
    if final.is_file():
        return final
    return folder / "config.json" if is_export(folder) else None


def is_run_folder(folder: Path) -> bool:
    """A training run's folder (run.json, the model in final/), not an export (whose model is at its root)."""
    return (folder / "run.json").is_file() and not (folder / CONFIG_FILE).is_file()


def final_checkpoint(folder: Path) -> Path:
    """The ``final/`` checkpoint of a run folder; a run without one (unfinished) is a one-line error."""
    final = folder / "final"
    if not (final / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder} is a run folder without a final checkpoint (not finished yet?)")
    return final


def finished_runs(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> list[RunPaths]:
    """Every finished run under ``runs_dir``, newest first: folders with a final checkpoint or an exported model."""
    runs_dir = Path(runs_dir)
    found = (
        [(config, p) for p in sorted(runs_dir.glob("*")) if p.is_dir() and (config := _model_config(p))]
        if runs_dir.is_dir()
        else []
    )
    found.sort(key=lambda pair: pair[0].stat().st_mtime, reverse=True)
    return [RunPaths(p) for _, p in found]


def latest_run(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> RunPaths:
    """The most recently finished run under ``runs_dir`` that has a final checkpoint (an export has none to evaluate)."""
    for run in finished_runs(runs_dir):
        if (run.final / "config.json").is_file():
            return run
    raise FileNotFoundError(f"no finished run under {Path(runs_dir)}/; create one with: python finetune.py")


class RunNotFinished(ValueError):
    """A command that needs a finished run was given one that is not (the message says how to finish it)."""


def _steps(info: RunInfo) -> str:
    """``, last saved state: step 60 of 69`` (or ``, no saved state yet``): what a resume starts from.

    Empty for a run.json older than these fields (it does not know).
    """
    if info.saved_step is None:
        return "" if info.total_steps is None else ", no saved state yet: a resume starts it over"
    of = f" of {info.total_steps}" if info.total_steps is not None else ""
    return f", last saved state: step {info.saved_step}{of}"


def unfinished_problem(run: RunPaths) -> str | None:
    """Why ``run`` is not finished (its run.json status), with the command that finishes it; None when finished.

    The one place that decides: evaluate.py, publish.py and the app's tabs all say this.
    A missing or malformed run.json is a one-line error as in ``RunPaths.read_info``.
    """
    info = run.read_info()
    if info.status == "finished":
        return None
    return (
        f"{run.root} is not finished (run.json status is {info.status!r}{_steps(info)}); "
        f"finish it first: python finetune.py --resume {run.root}"
    )


def require_finished(run: RunPaths) -> RunInfo:
    """``run``'s run.json when the run is finished and has its final checkpoint; else a one-line error that
    says how to finish it: ``RunNotFinished`` (a ValueError) for its status, ``FileNotFoundError`` for no ``final/``."""
    problem = unfinished_problem(run)
    if problem is not None:
        raise RunNotFinished(problem)
    if not (run.final / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{run.root} has no final checkpoint ({run.final} is missing); "
            f"finish the run first: python finetune.py --resume {run.root}"
        )
    return run.read_info()


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (for commands shown to users)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class ExportedRun:
    """A run read back from an export folder (a local copy of a published repo): what the app needs.

    ``run`` reads run.json, eval/, loss.png and metrics.jsonl as for a run folder;
    ``checkpoint`` is what to pass to ``inference.load_model``; ``info`` is its
    config and prompt style without loading the weights.
    """

    run: RunPaths
    checkpoint: Path
    info: CheckpointInfo


def run_from_export(folder: str | os.PathLike) -> ExportedRun:
    """The run an export folder holds (e.g. ``snapshot_download(repo, allow_patterns=APP_FILES)``)."""
    folder = Path(folder).expanduser()
    info = read_export_info(folder)
    if info is None:
        raise ValueError(f'{folder} is not an export of a gpt2_scratch run (no "{EXPORT_KEY}" in its {CONFIG_FILE})')
    return ExportedRun(RunPaths(folder), folder, info)
