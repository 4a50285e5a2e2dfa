"""Our own checkpoint folders: ``model.safetensors`` plus ``config.json``.

``config.json`` carries everything needed to use the weights without retyping
anything: the model config, the prompt style the model was trained with, and
free-form metadata (base model, training config, data source and split).
It also records the size and sha256 of the weights, so a weights file that does
not belong to its config (or was cut short) is refused, never half-loaded.

Saving is atomic at the folder level: the new folder is written beside the
target and swapped in with renames, so an interrupted save leaves the previous
checkpoint intact. No pickle anywhere: tensors go through safetensors, the rest
is JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.files import atomic_folder, atomic_write_json, file_sha256, json_kind, read_json, recover_folder
from gpt2_scratch.hub import read_safetensors
from gpt2_scratch.inference import low_peak_loading, prepare_for_inference, resolve_dtype
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import get_prompt_style

FORMAT = "gpt2_scratch"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class CheckpointInfo:
    """What a checkpoint folder says about its weights."""

    path: Path
    config: GPTConfig
    prompt_style: str | None
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    weights_bytes: int = 0  # size of model.safetensors recorded at save time


def save_checkpoint(
    folder: str | os.PathLike,
    model: GPT,
    *,
    prompt_style: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Write ``model`` (its config, weights, prompt style and ``metadata``) to ``folder`` atomically."""
    from safetensors.torch import save_file

    if prompt_style is not None:
        get_prompt_style(prompt_style)  # refuse an unknown name now, not at load time
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_file(model.state_dict_untied(), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        with open(tmp / WEIGHTS_FILE, "rb+") as f:
            os.fsync(f.fileno())
        digest = file_sha256(tmp / WEIGHTS_FILE)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.config.to_dict(),
            "prompt_style": prompt_style,
            "weights": {"file": WEIGHTS_FILE, "bytes": (tmp / WEIGHTS_FILE).stat().st_size, "sha256": digest},
            "metadata": metadata or {},
        }
        atomic_write_json(tmp / CONFIG_FILE, meta)
    return CheckpointInfo(folder, model.config, prompt_style, digest, metadata or {}, meta["weights"]["bytes"])


def read_checkpoint_info(folder: str | os.PathLike) -> CheckpointInfo:
    """Read and validate ``config.json`` of a checkpoint folder (no weights loaded)."""
    folder = Path(folder)
    recover_folder(folder)
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder: no {CONFIG_FILE}")
    return _parse_config(read_json(cfg_path), cfg_path, folder)


def _parse_config(meta: Any, cfg_path: Path, folder: Path) -> CheckpointInfo:
    """Validate the structure of a checkpoint's ``config.json``: every problem is a one-line ``ValueError`` naming the file."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f'{cfg_path} is not a {FORMAT} checkpoint config (no "format": "{FORMAT}")')
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{cfg_path} has format_version {meta.get('format_version')!r}; this code reads {FORMAT_VERSION}"
        )
    model, weights = meta.get("model"), meta.get("weights")
    if not isinstance(model, dict):
        raise ValueError(f'{cfg_path}: "model" must be an object of GPTConfig fields, got {_kind(model)}')
    if not isinstance(weights, dict):
        raise ValueError(f'{cfg_path}: "weights" must be an object with "bytes" and "sha256", got {_kind(weights)}')
    sha, size = weights.get("sha256"), weights.get("bytes")
    if not (isinstance(sha, str) and len(sha) == 64):
        raise ValueError(f'{cfg_path}: "weights.sha256" must be a 64-character hex string, got {_kind(sha)}')
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f'{cfg_path}: "weights.bytes" must be a non-negative integer, got {_kind(size)}')
    metadata = meta.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f'{cfg_path}: "metadata" must be an object, got {_kind(metadata)}')
    style = meta.get("prompt_style")
    try:
        config = GPTConfig.from_dict(model)
        if style is not None:
            get_prompt_style(style)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    return CheckpointInfo(folder, config, style, sha, metadata, size)


def _kind(value: Any) -> str:
    """How an error message names an unexpected config value: 'missing or null', or its JSON type."""
    return "missing or null" if value is None else json_kind(value)


def load_checkpoint(
    folder: str | os.PathLike, *, device: str | torch.device = "cpu", verify: bool = True
) -> tuple[GPT, CheckpointInfo]:
    """Load a checkpoint folder written by ``save_checkpoint``: (model in eval mode, its info).

    ``verify`` checks the weights' sha256 against ``config.json`` (about a second per 500 MB).
    """
    info = read_checkpoint_info(folder)
    weights = info.path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{info.path} is missing {WEIGHTS_FILE}")
    expected_bytes = info.weights_bytes
    actual_bytes = weights.stat().st_size
    if actual_bytes != expected_bytes:
        raise ValueError(
            f"{weights} has {actual_bytes} bytes, config.json says {expected_bytes} (truncated or replaced?)"
        )
    if verify and file_sha256(weights) != info.sha256:
        raise ValueError(f"{weights} does not match the sha256 recorded in config.json (corrupt or replaced?)")
    state = read_safetensors(weights)
    with torch.device("meta"):  # load_weights takes the read tensors as they are
        model = GPT(info.config)
    model.load_weights(state, str(weights))
    return model.to(device).eval(), info


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else must be a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available")
    return device


RANDOM_PREFIX = "random:"


def load_model(
    source: str, *, device: str | torch.device = "cpu", dtype: str = "float32"
) -> tuple[GPT, CheckpointInfo | None]:
    """The one entry point for "give me a model from this string".

    - ``random:<preset>`` (e.g. ``random:tiny``, ``random:gpt2``): randomly
      initialised weights from a fixed seed, so the same string always gives the
      same model (offline smoke runs and tests);
    - a folder written by ``save_checkpoint``: that checkpoint (its info is returned);
    - anything else: OpenAI-format weights through ``hub.load_pretrained``
      (Hub id, short name, or local safetensors file/folder); a folder written by
      ``export.export_run`` also returns its info (prompt style, metadata).

    The model comes in eval mode, ready for inference (``inference.prepare_for_inference``)
    in ``dtype``: ``float32`` (the default; the model can still be trained), or for
    inference only ``bfloat16``, ``int8`` (weight-only) or ``auto`` (bfloat16 where the
    device computes it natively, else float32; ``inference.resolve_dtype``). The weights
    are read in float32 and converted here.
    """
    dtype = resolve_dtype(dtype, device)  # a bad name fails before any loading
    with low_peak_loading(dtype):
        model, info = _load_float32(source, device)
        return prepare_for_inference(model, dtype), info


def _load_float32(source: str, device: str | torch.device) -> tuple[GPT, CheckpointInfo | None]:
    """``load_model``'s dispatch on the source, before conversion to the inference format."""
    from gpt2_scratch.hub import load_pretrained

    if source.startswith(RANDOM_PREFIX):
        config = GPTConfig.from_preset(source[len(RANDOM_PREFIX) :])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return GPT(config).to(device).eval(), None
    path = Path(source).expanduser()
    if (path / CONFIG_FILE).is_file() and _is_our_config(path / CONFIG_FILE):
        return load_checkpoint(path, device=device)
    from gpt2_scratch.export import read_export_info  # None unless source is an export folder

    return load_pretrained(source, device=device), read_export_info(source)


def _is_our_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
