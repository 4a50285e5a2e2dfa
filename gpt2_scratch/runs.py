"""The layout of a run folder, shared by finetune.py, evaluate.py and app.py.

runs/<name>/
  run.json              training config, base model, dataset source and split
  final/                checkpoint after the last step (checkpoint.save_checkpoint)
  best/                 checkpoint with the lowest validation loss
  data/test.jsonl       held-out test records, each with a stable "id"
  data/val.jsonl        validation records
  metrics.jsonl         one JSON object per logged event
  loss.png              train/validation loss against tokens seen
  train_state/          periodic resume state (model, optimizer, RNG, position)
  eval/predictions.jsonl  one line per test record (evaluate.py)
  eval/summary.json       aggregates per model (evaluate.py)
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2_scratch.files import atomic_write_json, read_json

DEFAULT_RUNS_DIR = Path("runs")

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
class RunInfo:
    """``run.json``: what a run is (written by training, read by evaluation and the app).

    ``training`` is the run's ``TrainConfig`` as a dict (kept as a dict here so that
    this module does not depend on training); ``status`` is ``running`` until the
    final checkpoint is written, then ``finished``.
    """

    name: str
    base_model: str
    prompt_style: str
    dataset: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    STATUSES = ("running", "finished")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    from gpt2_scratch.export import is_export  # export.py builds on this module

    final = folder / "final" / "config.json"
    if final.is_file():
        return final
    return folder / "config.json" if is_export(folder) else None


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


# --------------------------------------------------------------------------- finding the runs to show

# Hugging Face Hub model repos holding runs, comma-separated (set on a Space).
HUB_REPO_ENV = "GPT2_SCRATCH_HUB_REPO"
# Files of a run the app needs when it comes from the Hub (not train_state/, not best/): a run folder's
# (final/), or a published export's, whose model sits at the root (export.APP_FILES; a test checks both agree).
HUB_RUN_FILES = ["run.json", "final/*", "eval/*", "loss.png", "metrics.jsonl", "model.safetensors", "config.json"]


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (for commands shown to users)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def hub_repos(value: str | None) -> list[str]:
    """The Hub repos named by ``value`` (``GPT2_SCRATCH_HUB_REPO``): comma-separated; blanks and repeats dropped."""
    return list(dict.fromkeys(repo.strip() for repo in (value or "").split(",") if repo.strip()))


def download_run(repo_id: str) -> RunPaths:
    """Download a run (run.json, the model, eval/, loss curve) from a Hugging Face Hub model repo.

    When the Hub cannot be reached (``hub.require_hub``, seconds instead of
    ``huggingface_hub``'s half minute of retries) a copy in the local cache is
    used, else the error is raised.
    """
    from huggingface_hub import snapshot_download

    from gpt2_scratch.hub import require_hub

    try:
        require_hub(f"the run {repo_id!r}")
    except RuntimeError:
        return RunPaths(Path(snapshot_download(repo_id, allow_patterns=HUB_RUN_FILES, local_files_only=True)))
    return RunPaths(Path(snapshot_download(repo_id, allow_patterns=HUB_RUN_FILES)))


@dataclass(frozen=True)
class RunSource:
    """A run the app offers: ``label`` names it (the run folder's name, or the Hub repo);
    ``run`` is None when it could not be had, and ``problem`` says why."""

    label: str
    run: RunPaths | None
    problem: str | None = None


def find_runs(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, hub_repo: str | None = None) -> list[RunSource]:
    """The runs the app offers: the Hub repos named in ``hub_repo`` (comma-separated) when there are any,
    else every finished run under ``runs_dir``, newest first.

    Each repo is downloaded; one that fails (offline, unknown or private) is a
    source with a ``problem`` and the others still load.
    """
    repos = hub_repos(hub_repo)
    if not repos:
        return [RunSource(run.root.name, run) for run in finished_runs(runs_dir)]
    sources = []
    for repo in repos:
        try:
            sources.append(RunSource(repo, download_run(repo)))
        except Exception as e:  # offline, unknown or private repo, ...
            sources.append(
                RunSource(
                    repo,
                    None,
                    (
                        f"Could not download the run from the Hub repo `{repo}` ({type(e).__name__}). "
                        f"Check `{HUB_REPO_ENV}`, or run locally with `python app.py --run runs/<name>`."
                    ),
                )
            )
    return sources


def include_run(sources: list[RunSource], run: RunPaths | None) -> list[RunSource]:
    """``sources`` with ``run`` (the one the app serves) first; labelled by its path if its name is taken."""
    if run is None:
        return sources
    same = [s for s in sources if s.run is not None and s.run.root.resolve() == run.root.resolve()]
    if same:
        return [*same, *(s for s in sources if s not in same)]
    taken = {s.label for s in sources}
    label = run.root.name if run.root.name not in taken else display_path(run.root)
    return [RunSource(label, run), *sources]


def resolve_run(
    run: str | os.PathLike | None,
    *,
    runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR,
    hub_repo: str | None = None,
    sources: list[RunSource] | None = None,
) -> tuple[RunPaths | None, str | None]:
    """The run the app serves: ``run`` if given, else the first of ``sources`` (default: ``find_runs``)
    whose run.json reads: the first Hub repo that downloads, or the newest run under ``runs_dir``.

    Returns (run or None, why there is none). A run given as ``run`` must be a
    run folder, as evaluate.py requires: a missing folder or ``run.json`` raises
    FileNotFoundError, a malformed ``run.json`` ValueError (one-line messages).
    """
    if run is not None:
        path = Path(run).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--run {run}: no such folder")
        found = RunPaths(path)
        found.read_info()
        return found, None
    sources = find_runs(runs_dir, hub_repo) if sources is None else sources
    problems = [s.problem for s in sources if s.problem]
    for source in sources:
        if source.run is None:
            continue
        try:
            source.run.read_info()
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"`{source.label}` is not usable: {e}.")
            continue
        return source.run, None
    if problems:
        return None, " ".join(problems)
    return None, (
        f"No finished run under `{display_path(Path(runs_dir))}/`. "
        "Create one with `python finetune.py`, or pick one with `python app.py --run runs/<name>`."
    )
