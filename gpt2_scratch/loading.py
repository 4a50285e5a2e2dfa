"""Any model string to a plain ``GPT``: float32 parameters, ``nn.Linear`` layers, ready to train or to convert.

Entry point: ``load_gpt(source, device=)`` for a checkpoint or export folder, a run folder, a Hub id
or local weights, or ``random:<preset>``; a LoRA checkpoint loads its base, checks it by hash and
merges (or keeps the adapter apart). Training loads through here; inference adds
``inference.to_inference`` on top. Invariant: the model returned is exactly ``model.py``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    CheckpointInfo,
    load_checkpoint,
    read_adapter,
    read_checkpoint_info,
    read_export_info,
)
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.hub import load_pretrained
from gpt2_scratch.model import GPT
from gpt2_scratch.runs import final_checkpoint, is_run_folder

RANDOM_PREFIX = "random:"


def load_gpt(
    source: str, device: str | torch.device = "cpu", *, merge: bool = True, base: str | None = None
) -> tuple[GPT, CheckpointInfo | None]:
    """The model ``source`` names, in eval mode, with its info when it has one.

    - ``random:<preset>`` (e.g. ``random:tiny``, ``random:gpt2``): randomly
      initialised weights from a fixed seed, so the same string always gives the
      same model (offline smoke runs and tests);
    - a folder written by ``save_checkpoint``: that checkpoint (its info is returned);
      a run folder (``runs/<name>``): its ``final/`` checkpoint;
    - anything else: OpenAI-format weights through ``hub.load_pretrained``
      (Hub id, short name, or local safetensors file/folder); a folder written by
      ``publish.export.export_run`` also returns its info (prompt style, metadata).

    A LoRA checkpoint (a LoRA run's ``final/``): its base model (``base``, default the one it
    records) is loaded and must be the same weights (``lora.base_sha256``), else a one-line
    ``ValueError`` naming it; the adapter is merged into it (``merge=False`` keeps the adapter
    apart, so that ``lora.base_view`` can serve the base from the same weights). A LoRA run's
    export loads its merged weights; with ``merge=False`` (or without them) its base and ``adapter/``.
    """
    if source.startswith(RANDOM_PREFIX):
        config = GPTConfig.from_preset(source[len(RANDOM_PREFIX) :])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return GPT(config).to(device).eval(), None
    path = Path(source).expanduser()
    if is_run_folder(path):  # runs/<name>: its final checkpoint
        path = final_checkpoint(path)
    if (path / CONFIG_FILE).is_file() and _is_our_config(path / CONFIG_FILE):
        if read_checkpoint_info(path).adapter is not None:
            return _load_adapter(path, device, merge=merge, base=base)
        model, info = load_checkpoint(path, device=device)
        return model.eval(), info
    info = read_export_info(source)
    # A LoRA run's export: the merged weights at its root, or (kept apart, or without them) base + adapter/.
    if info is not None and info.adapter is not None and (not merge or not info.weights_file.is_file()):
        return _load_adapter(path, device, merge=merge, base=base)
    return load_pretrained(source, device=device).eval(), info


def _load_adapter(folder: Path, device, *, merge: bool, base: str | None) -> tuple[GPT, CheckpointInfo]:
    """The base a LoRA checkpoint records (or ``base``), checked by hash, with the adapter on it (merged or not)."""
    info, tensors = read_adapter(folder)
    source = base or info.adapter.base_model
    try:
        model, _ = load_gpt(source, device)
    except (OSError, RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{folder}: cannot load its base model {source!r} ({reason})") from None
    if lora.base_sha256(model) != info.adapter.base_sha256:
        raise ValueError(
            f"{folder}: the base model {source!r} is not the one this adapter was trained on (its weights' sha256 "
            f"differs from {info.adapter.base_sha256[:12]}...)"
        )
    lora.inject(model, info.adapter.lora)
    lora.load_adapter_state_dict(model, tensors, str(info.adapter_file))
    model.eval()
    return (lora.merged_model(model) if merge else model), info


def _is_our_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
