"""Which runs the app offers and serves: local run folders, or runs downloaded from Hub repos.

Entry points: ``find_runs`` (the results tab's runs), ``resolve_run`` (the run the generation tabs
serve) and ``include_run``. A repo that cannot be downloaded is a ``RunSource`` with a ``problem``,
never an exception: the other runs still load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gpt2_scratch.checkpoint import CONFIG_FILE
from gpt2_scratch.hub import require_hub
from gpt2_scratch.runs import DEFAULT_RUNS_DIR, HUB_REPO_ENV, RunPaths, display_path, finished_runs, hub_run_files


def hub_repos(value: str | None) -> list[str]:
    """The Hub repos named by ``value`` (``GPT2_SCRATCH_HUB_REPO``): comma-separated; blanks and repeats dropped."""
    return list(dict.fromkeys(repo.strip() for repo in (value or "").split(",") if repo.strip()))


def download_run(repo_id: str) -> RunPaths:
    """Download a run (run.json, the model, eval/, loss curve) from a Hugging Face Hub model repo.

    The root config.json comes first: a LoRA run's export is then downloaded without its merged
    weights (``runs.hub_run_files``; the app serves its base and adapter). When the Hub cannot be
    reached (``hub.require_hub``, seconds instead of ``huggingface_hub``'s half minute of retries)
    a copy in the local cache is used, else the error is raised.
    """
    from huggingface_hub import snapshot_download  # imported when needed: it is slow to import

    try:
        require_hub(f"the run {repo_id!r}")
        offline = False
    except RuntimeError:
        offline = True
    first = Path(snapshot_download(repo_id, allow_patterns=[CONFIG_FILE], local_files_only=offline))
    files = hub_run_files(first / CONFIG_FILE)
    return RunPaths(Path(snapshot_download(repo_id, allow_patterns=files, local_files_only=offline)))


@dataclass(frozen=True)
class RunSource:
    """A run the app offers: ``label`` names it (the run folder's name, or the Hub repo);
    ``run`` is None when it could not be had, and ``problem`` says why."""

    label: str
    run: RunPaths | None
    problem: str | None = None


def checked(label: str, run: RunPaths) -> RunSource:
    """``run`` as a source, or, when its run.json is malformed, a source with that ``problem`` (as the CLI says it).

    A run without run.json (an export made before it was kept) is still offered: the results
    tab compares it without training options. A malformed one is not: what it is cannot be known.
    """
    if run.run_json.is_file():
        try:
            run.read_info()
        except (ValueError, OSError) as e:
            return RunSource(label, None, f"`{label}` is not usable: {e}.")
    return RunSource(label, run)


def find_runs(runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, hub_repo: str | None = None) -> list[RunSource]:
    """The runs the app offers: the Hub repos named in ``hub_repo`` (comma-separated) when there are any,
    else every finished run under ``runs_dir``, newest first.

    Each repo is downloaded; one that fails (offline, unknown or private) is a
    source with a ``problem`` and the others still load. A run whose run.json is
    malformed is a source with a ``problem`` too (``checked``): named, never offered or compared.
    """
    repos = hub_repos(hub_repo)
    if not repos:
        return [checked(run.root.name, run) for run in finished_runs(runs_dir)]
    sources = []
    for repo in repos:
        try:
            sources.append(checked(repo, download_run(repo)))
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
    whose run.json reads: the first Hub repo that downloads, or the newest run under ``runs_dir``
    that has been evaluated (its results tab has something to show), else the newest.

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
    usable = []
    for source in sources:
        if source.run is None:
            continue
        try:
            source.run.read_info()
        except (FileNotFoundError, ValueError) as e:
            problems.append(f"`{source.label}` is not usable: {e}.")
            continue
        usable.append(source.run)
    if usable:
        evaluated = [r for r in usable if r.summary.is_file() and r.predictions.is_file()]
        return (usable[0] if hub_repos(hub_repo) or not evaluated else evaluated[0]), None
    if problems:
        return None, " ".join(problems)
    return None, (
        f"No finished run under `{display_path(Path(runs_dir))}/`. "
        "Create one with `python finetune.py`, or pick one with `python app.py --run runs/<name>`."
    )
