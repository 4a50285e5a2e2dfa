"""The resume state of a training run: ``<run>/train_state/``, no pickle.

``save_train_state`` writes model.safetensors (the weights, tied head once), optimizer.safetensors
(AdamW's tensors), rng.safetensors (every process's RNG states) and state.json (format, version,
``Progress``, AdamW's param groups) as a new folder swapped in (``files.atomic_folder``), so a kill
at any moment leaves the previous state intact; ``load_train_state`` restores it.
Invariant: with the same progress, optimizer and RNG streams, a resumed run replays the rest of
the run exactly (identical final weights on CPU). A LoRA run saves its adapters only, with its
base's ``lora.base_sha256``: a resume on other base weights is refused. Key names: docs/design.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import read_safetensors
from gpt2_scratch.files import atomic_folder, atomic_write, atomic_write_json, recover_folder
from gpt2_scratch.model import GPT
from gpt2_scratch.train.distributed import DistContext

STATE_FORMAT = "gpt2_scratch.train.state"
STATE_VERSION = 1


@dataclass
class Progress:
    """Where a run stands: exactly the counters ``state.json`` saves, and all a resume needs besides tensors."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the current epoch (0-based)
    position: int = 0  # batches of this epoch done: the index of the next one in the epoch's batch order
    tokens_seen: int = 0  # real (non-padding) input tokens trained on
    best_val_loss: float = math.inf
    best_step: int = -1  # the step of best_val_loss (best/ holds its weights); -1: none yet
    last_val_loss: float | None = None  # the latest validation loss (final/'s metadata); None: none yet

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "state.json") -> "Progress":
        """Read back ``to_dict``'s fields (other keys, e.g. an older state's "world_size", are ignored)."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"{source} lacks {', '.join(missing)}")
        return cls(**{n: d[n] for n in names})


def save_train_state(
    folder: str | os.PathLike,
    model: GPT,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    rng: dict[str, torch.Tensor],
    *,
    base_sha256: str | None = None,
) -> None:
    """Write the training state to ``folder`` atomically (new folder, then swapped in).

    ``rng`` holds the random-number-generator states as uint8 tensors (``rng_states``).
    A model with adapters saves them alone, with ``base_sha256`` (its frozen base's).
    """
    from safetensors.torch import save_file

    with atomic_folder(folder, "train state", ours=lambda f: (f / "state.json").is_file()) as tmp:
        weights = lora.adapter_state_dict(model) if lora.has_adapters(model) else model.state_dict_untied()
        opt = optimizer.state_dict()
        # AdamW's state is per parameter index: tensors (exp_avg, exp_avg_sq, step) go to
        # safetensors as "<index>.<name>", anything else (none for AdamW today) to JSON.
        opt_tensors, opt_scalars = {}, {}
        for index, param_state in opt["state"].items():
            for key, value in param_state.items():
                if torch.is_tensor(value):
                    opt_tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    opt_scalars.setdefault(str(index), {})[key] = value
        for name, tensors in (("model", weights), ("optimizer", opt_tensors), ("rng", rng)):
            atomic_write(tmp / f"{name}.safetensors", lambda path, t=tensors: save_file(t, path))
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            **progress.to_dict(),
            "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
            **({"base_sha256": base_sha256} if base_sha256 is not None else {}),
        }
        atomic_write_json(tmp / "state.json", meta)


def load_train_state(
    folder: str | os.PathLike, model: GPT, optimizer: torch.optim.Optimizer, *, base_sha256: str | None = None
) -> tuple[Progress, dict[str, torch.Tensor]]:
    """Restore model and optimizer from ``folder``; returns (the run's progress, RNG states).

    A model with adapters gets them back; ``base_sha256`` (its base's) must be the one the state recorded.
    """
    folder = Path(folder)
    recover_folder(folder)  # a save killed between its two renames
    meta_path = folder / "state.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"no training state in {folder} (it is saved every --save-every steps and --save-every-minutes)"
        )
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
        raise ValueError(f"{meta_path} is not a {STATE_FORMAT} version {STATE_VERSION} file")
    if meta.get("base_sha256") != base_sha256:
        raise ValueError(
            f"{meta_path}: the base model's weights are not those the run started from (sha256 differs); cannot resume"
        )
    weights, source = read_safetensors(folder / "model.safetensors"), str(folder / "model.safetensors")
    if lora.has_adapters(model):
        lora.load_adapter_state_dict(model, weights, source)
    else:
        model.load_weights(weights, source)
    state: dict[int, dict[str, Any]] = {}
    for key, value in read_safetensors(folder / "optimizer.safetensors").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, scalars in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["optimizer"]["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    rng = read_safetensors(folder / "rng.safetensors")
    return Progress.from_dict(meta, str(meta_path)), rng


def rng_states(dist_ctx: DistContext, device: torch.device) -> dict[str, torch.Tensor]:
    """Every process's RNG states (dropout draws from them), gathered on all ranks: a collective."""
    mine = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    everyone = dist_ctx.all_gather(mine)
    return {f"{kind}.{rank}": t for rank, states in enumerate(everyone) for kind, t in states.items()}


def restore_rng(rng: dict[str, torch.Tensor], dist_ctx: DistContext, device: torch.device) -> None:
    """Continue this process's RNG streams from ``rng`` (``rng_states``)."""
    # A rank that did not exist when the state was saved continues rank 0's streams.
    rank = dist_ctx.rank if f"cpu.{dist_ctx.rank}" in rng else 0
    torch.set_rng_state(rng[f"cpu.{rank}"])
    if device.type == "cuda" and f"cuda.{rank}" in rng:
        torch.cuda.set_rng_state(rng[f"cuda.{rank}"], device)
