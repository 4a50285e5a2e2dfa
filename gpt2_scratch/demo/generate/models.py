"""What the app serves: its two models, loaded on first use (``LazyModel``), and which checkpoint of a run.

Entry points: ``LazyModel`` (one load behind a lock, shared by every user; a load that fails is a
one-line ``UserError`` with the fix), ``check_base`` (a bad ``--base`` refused at start),
``choose_checkpoint`` (an export's model, else ``final/``, else ``best/`` with a note saying why).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Callable

from gpt2_scratch import inference
from gpt2_scratch.checkpoint import WEIGHTS_FILE, CheckpointInfo, read_checkpoint_info, read_export_info
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.demo.inputs import UserError
from gpt2_scratch.devices import resolve_device
from gpt2_scratch.hub import OFFLINE_HINT as HUB_OFFLINE_HINT
from gpt2_scratch.inference import load_model, model_dtype, run_apart
from gpt2_scratch.loading import RANDOM_PREFIX
from gpt2_scratch.model import GPT
from gpt2_scratch.runs import RunPaths, display_path, unfinished_problem

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "gpt2"
OFFLINE_HINT = (
    "If you are offline, pass a local copy of the weights: "
    "`python app.py --base /path/to/model.safetensors` (or a folder holding it)."
)


class LazyModel:
    """A model loaded on first use and then shared by every user (one load, behind a lock).

    ``dtype``: its inference format (``load_model``'s ``dtype``). ``load``: how to make it, when
    not ``load_model(source)`` (a LoRA run's base: a view of the finetuned model's weights);
    ``merge``: ``load_model``'s (False keeps a LoRA adapter apart, so that the base can be shared).
    """

    def __init__(
        self,
        source: str | None,
        *,
        label: str,
        hint: str,
        dtype: str = "float32",
        kernel: str | None = None,
        load: Callable[[], GPT] | None = None,
        merge: bool = True,
    ):
        self.source = source
        self.label = label
        self.hint = hint  # what to do when it cannot be loaded
        self.dtype, self.kernel = dtype, kernel
        self.merge = merge
        self._load = load or self._load_model
        self._model: GPT | None = None
        self._lock = threading.Lock()

    def _load_model(self) -> GPT:
        # On a ZeroGPU Space the first load happens inside a spaces.GPU call, where CUDA is available.
        device = str(resolve_device("auto"))
        return load_model(self.source, device=device, dtype=self.dtype, merge=self.merge, kernel=self.kernel)[0]

    def get(self) -> GPT:
        """The model; a UserError naming the fix when it is missing or cannot be loaded."""
        if self.source is None:
            raise UserError(self.hint)
        with self._lock:
            if self._model is None:
                started = time.perf_counter()
                try:
                    # In a thread that ends: the engine's thread then holds the process's only OpenMP pool.
                    self._model = run_apart(self._load)
                except UserError:  # the model it views could not be loaded: that one's message says why
                    raise
                except Exception as e:  # no network, missing or corrupt file: say so (one line), keep serving
                    log.warning("could not load the %s %s: %s", self.label, self.source, str(e).splitlines()[0])
                    # The loader's offline hint is for the command line; the app's OFFLINE_HINT says the same
                    # for the app: one of them, not both.
                    reason = str(e)
                    if self.hint == OFFLINE_HINT:
                        reason = reason.removesuffix(f"; {HUB_OFFLINE_HINT}")
                    raise UserError(f"Could not load the {self.label} `{self.source}`: {reason}. {self.hint}") from None
                log.info(
                    "loaded %s from %s in %s (kernels %s) in %.1f s",
                    self.label,
                    self.source,
                    model_dtype(self._model),
                    inference.summary(self._model),
                    time.perf_counter() - started,
                )
            return self._model


def check_base(source: str | None, option: str = "the base model") -> None:
    """A one-line ValueError (naming ``option``) now for a base model that can be checked offline and is wrong:
    an unknown ``random:<preset>``, a missing local file or folder. A Hub id is checked when first used; None
    (no base given) passes."""
    if source is None:
        return
    path = Path(source).expanduser()
    try:
        if source.startswith(RANDOM_PREFIX):
            GPTConfig.from_preset(source[len(RANDOM_PREFIX) :])
        elif source.startswith(("/", ".", "~")) or source.endswith(".safetensors") or path.exists():
            if not path.exists():
                raise ValueError(f"no such file or folder: {source}")
            if path.is_dir() and not (path / WEIGHTS_FILE).is_file():
                raise ValueError(f"{source} holds no {WEIGHTS_FILE}")
    except ValueError as e:
        raise ValueError(f"{option} {source}: {e}") from None


def choose_checkpoint(run: RunPaths) -> tuple[CheckpointInfo | None, str | None, str | None]:
    """(checkpoint info, why there is none, note on the choice) for the run's finetuned model.

    A run published by publish.py (``export.export_run``) has its model at the
    root, in transformers' layout; ``load_model(str(run.root))`` loads it with
    its prompt style. Otherwise ``final/`` is the contract. ``best/`` is served
    only when ``final/`` is missing (a run still training) or unusable, and the
    note says so, with the reason, for the header and the finetuned tabs.
    """
    where = display_path(run.root)
    try:
        exported = read_export_info(run.root)
    except ValueError as e:
        return None, f"The exported model in `{where}` is unusable ({e}). Publish it again with publish.py.", None
    if exported is not None:
        return exported, None, None
    try:
        return read_checkpoint_info(run.final), None, None
    except (FileNotFoundError, ValueError) as e:
        final_problem = e
    unfinished = _unfinished(run)
    try:
        info = read_checkpoint_info(run.best)
    except (FileNotFoundError, ValueError):
        fix = f"{unfinished}." if unfinished else "Create one with `python finetune.py`."
        return None, f"No usable finetuned checkpoint in `{where}` ({final_problem}). {fix}", None
    if run.final.exists():
        note = f"Serving `best/`, not `final/`: `final/` is unusable ({final_problem})."
    elif unfinished and run.read_info().status == "interrupted":
        note = f"Serving `best/` (the lowest validation loss so far): {unfinished}."
    else:
        note = "Serving `best/` (the lowest validation loss so far): the run has no `final/` yet (still training?)."
    return info, None, note


def _unfinished(run: RunPaths) -> str | None:
    """``runs.unfinished_problem`` with its command in backticks (Markdown); None when finished or unknown."""
    try:
        problem = unfinished_problem(run)
    except (FileNotFoundError, ValueError):  # no run.json, or a bad one: nothing to say about its status
        return None
    return problem and re.sub(r"(python finetune\.py --resume \S+)$", r"`\1`", problem)


def checkpoint_label(run: RunPaths | None, run_name: str | None, info: CheckpointInfo | None) -> str | None:
    """How the header names the served checkpoint: ``<run>/final``, an exported model, a LoRA adapter."""
    if info is None:
        return None
    exported = run is not None and info.path.resolve() == run.root.resolve()
    label = f"{run_name} (exported model)" if exported else f"{run_name}/{info.path.name}"
    if info.adapter is not None:
        label += f" (LoRA adapter, rank {info.adapter.lora.rank})"
    return label
