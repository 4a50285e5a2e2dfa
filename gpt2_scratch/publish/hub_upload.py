"""Publish a run on the Hugging Face Hub: its export as a model repo and, optionally, the demo as a Space.

    plan = prepare_publish("runs/my-run", "me/gpt2-alpaca", space_id="me/gpt2-demo")  # checks, then exports
    print(describe(plan, endpoint=..., token_from=token_source()))                  # what --dry-run prints
    result = upload(plan, token=resolve_token())                                    # one commit per repo

Invariant: nothing is committed until both repos have accepted every file (local checks first,
then the Hub's preupload, then one commit per repo and the Space variable), so a half-published
run is unlikely. Every failure is a ``PublishError`` naming the step and the repo. The order and
its reasons: docs/design.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gpt2_scratch.checkpoint import is_export
from gpt2_scratch.files import Locked, check_replaceable
from gpt2_scratch.publish.export import EXPORT_KIND, Export, export_run
from gpt2_scratch.publish.model_card import local_base
from gpt2_scratch.runs import HUB_REPO_ENV, RunPaths

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The app's files a Space needs (README.md's front matter configures the Space); not runs/, tests/, benchmarks/.
SPACE_FILES = ("app.py", "requirements.txt", "README.md", "gpt2_scratch/**/*.py", "assets/*")
SPACE_SDK = "gradio"
# What the Hub's answer means for us, by HTTP status.
_STATUS_HINTS = {
    401: "the token was refused: log in again with `hf auth login`, or set HF_TOKEN to a token with write access",
    402: "payment required: this Space needs a plan or billing that the account does not have",
    403: "no write access: the repo belongs to someone else or the token is read-only; publish under your own name",
    404: "not found",
}


class PublishError(ValueError):
    """Why publishing stopped, in one line."""


@dataclass
class Upload:
    """One commit: the files for one repo."""

    repo_id: str
    repo_type: str  # "model" or "space"
    files: list[tuple[Path, str]]  # (local file, path in the repo)
    message: str

    def url(self, endpoint: str) -> str:
        return f"{endpoint}/{'spaces/' if self.repo_type == 'space' else ''}{self.repo_id}"


@dataclass
class PublishPlan:
    """Everything checked and exported; what ``upload`` sends."""

    export: Export
    model: Upload
    space: Upload | None
    private: bool
    target: Path | None = None  # a dry run: where the export would go (``export.folder`` is a temporary folder)

    def discard(self) -> None:
        """Remove a dry run's temporary export (a real export stays where it was written)."""
        if self.target is not None:
            shutil.rmtree(self.export.folder.parent, ignore_errors=True)


@dataclass
class PublishResult:
    model_url: str
    model_commit: str
    space_url: str | None = None
    space_commit: str | None = None


def check_repo_id(repo_id: str, option: str) -> str:
    """``repo_id`` if it is a valid ``<owner>/<name>`` Hub repo id; else a one-line PublishError."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if repo_id.count("/") != 1:
        raise PublishError(f"{option} {repo_id!r} is not a repo id of the form <user>/<name>")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise PublishError(f"{option} {repo_id!r} is not a valid repo id: {str(e).splitlines()[0]}") from None
    return repo_id


def token_source() -> str | None:
    """Where the Hub token comes from: ``HF_TOKEN``, ``cached login``, or None when there is none."""
    from huggingface_hub import get_token

    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN"
    return "cached login" if get_token() else None


def resolve_token() -> str:
    """The Hub token (``HF_TOKEN``, else the cached login); none is a one-line PublishError."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN to a token with write access, or log in with `hf auth login`"
        )
    return token


def space_files(root: Path = PROJECT_ROOT) -> list[tuple[Path, str]]:
    """(local file, path in the Space) of the app's files under ``root``; a missing one is an error."""
    found: list[tuple[Path, str]] = []
    for pattern in SPACE_FILES:
        matches = sorted(p for p in root.glob(pattern) if p.is_file() and "__pycache__" not in p.parts)
        if not matches:
            raise PublishError(f"the Space needs {pattern}, which is not in {root}")
        found += [(p, p.relative_to(root).as_posix()) for p in matches]
    return found


def prepare_publish(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    space_id: str | None = None,
    private: bool = False,
    export_dir: str | os.PathLike | None = None,
    license: str = "mit",
    weights_dtype: str = "float32",
    gguf_types: tuple[str, ...] | list[str] = (),
    app_root: Path = PROJECT_ROOT,
    dry_run: bool = False,
) -> PublishPlan:
    """Check the ids and the run, write the export (default ``<run>/export``), list what goes where.

    ``dry_run`` writes the export to a temporary folder (``PublishPlan.discard`` removes it)
    after checking that the real one could be written: nothing outside the temporary folder changes.
    """
    check_repo_id(repo_id, "--repo")
    if space_id is not None:
        check_repo_id(space_id, "--space")
    space = space_files(app_root) if space_id is not None else None
    run = RunPaths(Path(run_dir))
    target = Path(export_dir) if export_dir else run.root / "export"
    temporary = None
    try:
        check_replaceable(target, EXPORT_KIND, ours=is_export)
        if dry_run:
            temporary = Path(tempfile.mkdtemp(prefix="gpt2_scratch_dry_run_"))
        # No evaluation rewrites the run while it is exported (a dry run only reads: it takes no lock).
        with run.lock("publish.py") if not dry_run and run.root.is_dir() else contextlib.nullcontext():
            export = export_run(
                run.root,
                temporary / "export" if temporary else target,
                repo_id=repo_id,
                license=license,
                weights_dtype=weights_dtype,
                gguf_types=gguf_types,
            )
    except (FileNotFoundError, ValueError, Locked) as e:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        raise PublishError(str(e)) from None
    model = Upload(
        repo_id,
        "model",
        [(export.folder / f, f) for f in export.files],
        f"Publish run {export.run.name} (gpt2_scratch export)",
    )
    return PublishPlan(
        export,
        model,
        Upload(space_id, "space", space, f"Demo of {repo_id}") if space is not None else None,
        private,
        target if dry_run else None,
    )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def notes(plan: PublishPlan) -> list[str]:
    """What the user should know beyond the file lists (shown by a dry run and after an upload)."""
    out = []
    if not plan.export.has_eval:
        out.append(
            f"note: the run has no evaluation results; the card says so "
            f"(python evaluate.py --run {plan.export.source}, then publish again)"
        )
    if plan.export.subset:
        n, total = plan.export.subset
        out.append(
            f"warning: the scores are of {n} of the {total} test records only; the card says so and its "
            f"model-index leaves them out (python evaluate.py --run {plan.export.source} --replace, then publish again)"
        )
    base = plan.export.run.base_model
    if local_base(base):
        lora = plan.export.run.training.get("lora_rank")
        out.append(
            f"warning: the base model {base} is a local path: the card names it only as {Path(base).name!r} and has "
            "no base_model metadata"
            + (", adapter/adapter_config.json names no base" if lora else "")
            + "; run.json and config.json keep the path"
            + (", and a Space serves the merged weights (the base is not there to load)" if lora else "")
            + ". Train on a Hub model (--base gpt2) for a card that links its base"
        )
    if plan.private and plan.space is not None:
        out.append(
            f"note: the Space reads the private repo {plan.model.repo_id} only with a secret HF_TOKEN "
            "(a read token) added in the Space's settings"
        )
    return out


def describe(plan: PublishPlan, *, endpoint: str, token_from: str | None) -> str:
    """What would go where: the text ``--dry-run`` prints."""
    visibility = "private" if plan.private else "public"
    total = sum(local.stat().st_size for local, _ in plan.model.files)
    where = f"{plan.export.folder}"
    if plan.target is not None:
        where = f"{plan.target} (dry run: written to a temporary folder and removed; {plan.target} is unchanged)"
    lines = [f"export: {where} ({len(plan.model.files)} files, {_size(total)})", ""]
    uploads = [(plan.model, "model repo")] + ([(plan.space, f"Space ({SPACE_SDK})")] if plan.space else [])
    for up, kind in uploads:
        lines.append(f'{kind} {up.url(endpoint)} ({visibility}, created if missing), one commit "{up.message}":')
        width = max(len(rel) for _, rel in up.files)
        lines += [f"  {rel:<{width}}  {_size(local.stat().st_size):>9}" for local, rel in up.files]
        lines.append("")
    if plan.space:
        lines += [f"Space variable: {HUB_REPO_ENV}={plan.model.repo_id}", ""]
    lines.append(f"token: {token_from or 'none found (set HF_TOKEN or run `hf auth login` before publishing)'}")
    return "\n".join(lines + notes(plan))


def _hub_error(e: Exception, step: str, endpoint: str) -> PublishError:
    """``e`` from huggingface_hub as one line naming ``step``."""
    from huggingface_hub.errors import HfHubHTTPError

    response = getattr(e, "response", None)
    if isinstance(e, HfHubHTTPError) and response is not None:
        status = response.status_code
        hint = _STATUS_HINTS.get(status) or (str(e).splitlines() or [""])[0]
        return PublishError(f"{step}: the Hub answered {status}: {hint}")
    if isinstance(e, (OSError, ConnectionError)) or type(e).__module__.startswith(("httpx", "httpcore")):
        return PublishError(f"{step}: cannot reach the Hub at {endpoint} ({type(e).__name__})")
    return PublishError(f"{step}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")


def _call(what: str, endpoint: str, published: str | None, call, *args, **kwargs):
    """``call(*args, **kwargs)``; a failure becomes a one-line PublishError naming ``what`` and what is published."""
    try:
        return call(*args, **kwargs)
    except Exception as e:  # every failure of the Hub client ends the same way for the user: one line
        err = _hub_error(e, what, endpoint)
        if published:
            err = PublishError(f"{err} (the model repo is published: {published}; rerun the same command to finish)")
        raise err from None


def _create_and_send(api, uploads: list[Upload], ops: dict, *, private: bool, token: str) -> None:
    """Create every repo (``exist_ok``), then send every file without committing."""
    for up in uploads:
        kind = {"space_sdk": SPACE_SDK} if up.repo_type == "space" else {}
        what = f"creating {'the Space' if up.repo_type == 'space' else 'the model repo'} {up.repo_id}"
        create = functools.partial(api.create_repo, repo_type=up.repo_type, private=private, exist_ok=True, **kind)
        _call(what, api.endpoint, None, create, up.repo_id, token=token)
    for up in uploads:  # sent but not committed: a refusal here leaves both repos as they were
        send = functools.partial(api.preupload_lfs_files, repo_type=up.repo_type, free_memory=False)
        _call(
            f"sending the files to {up.repo_id}",
            api.endpoint,
            None,
            send,
            up.repo_id,
            additions=ops[up.repo_type],
            token=token,
        )


def upload(plan: PublishPlan, *, token: str, api=None) -> PublishResult:
    """Publish ``plan``: create the repos, send every file, then commit (see the module docstring for the order)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    uploads = [plan.model] + ([plan.space] if plan.space else [])
    ops = {up.repo_type: [CommitOperationAdd(rel, str(local)) for local, rel in up.files] for up in uploads}
    _create_and_send(api, uploads, ops, private=plan.private, token=token)
    model = plan.model
    commit = _call(
        f"committing to {model.repo_id}",
        api.endpoint,
        None,
        api.create_commit,
        model.repo_id,
        ops["model"],
        commit_message=model.message,
        token=token,
    )
    result = PublishResult(model.url(api.endpoint), commit.oid)
    if plan.space:
        space, published = plan.space, result.model_url
        commit = _call(
            f"committing to the Space {space.repo_id}",
            api.endpoint,
            published,
            api.create_commit,
            space.repo_id,
            ops["space"],
            repo_type="space",
            commit_message=space.message,
            token=token,
        )
        result.space_url, result.space_commit = space.url(api.endpoint), commit.oid
        _call(
            f"setting {HUB_REPO_ENV} on the Space {space.repo_id}",
            api.endpoint,
            published,
            api.add_space_variable,
            space.repo_id,
            HUB_REPO_ENV,
            model.repo_id,
            token=token,
        )
    return result
