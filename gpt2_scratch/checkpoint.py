"""Our checkpoint folders (``model.safetensors`` + ``config.json``) and the export format, read side.

Entry points: ``save_checkpoint``, ``load_checkpoint``, ``read_checkpoint_info``, ``read_safetensors``,
``is_export`` / ``read_export_info``; ``WEIGHTS_FILE``, ``CONFIG_FILE``. ``config.json`` carries the
model config, the prompt style and free-form metadata (base model, training config, data), plus
the weights' size and sha256. Invariant: weights that do not match their config are refused,
never half-loaded; saves are atomic folder swaps; no pickle. A LoRA run's checkpoint holds its
adapter only (``adapter.safetensors``; config.json adds "adapter": rank, alpha, targets, the base
and its sha256), and ``inference.load_model`` loads the base, checks it, and merges. A LoRA run's
export adds its adapter in PEFT's layout (``adapter/``; ``read_adapter`` reads it too). Why: docs/design.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.files import atomic_folder, atomic_write_json, file_sha256, json_kind, read_json, recover_folder
from gpt2_scratch.lora import LoRAConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.prompts import get_prompt_style

FORMAT = "gpt2_scratch"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.safetensors"  # a LoRA run's final/ and best/: the adapter tensors only
CONFIG_FILE = "config.json"
EXPORT_KEY = "gpt2_scratch"  # our metadata's key in an export's (transformers') config.json
EXPORT_VERSION = 1
# A LoRA run's export: its adapter in PEFT's layout, beside the merged weights (publish.peft_adapter writes it).
PEFT_DIR = "adapter"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PEFT's name of transformer.h.0.attn.c_attn.lora_A: PEFT_PREFIX + it + ".weight"


@dataclass
class AdapterInfo:
    """What a LoRA checkpoint says about its adapter and the base model it was trained on."""

    lora: LoRAConfig
    base_model: str  # the model string the run loaded (Hub id, local path, random:<preset>)
    base_sha256: str  # lora.base_sha256 of those weights

    def to_dict(self) -> dict[str, Any]:
        return {"method": "lora", **self.lora.to_dict(), "base_model": self.base_model, "base_sha256": self.base_sha256}


@dataclass
class CheckpointInfo:
    """What a checkpoint folder says about its weights."""

    path: Path
    config: GPTConfig
    prompt_style: str | None
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    weights_bytes: int = 0  # size of the weights file recorded at save time
    adapter: AdapterInfo | None = None  # a LoRA checkpoint: the weights file is the adapter alone
    exported: bool = False  # an export (publish.export): merged weights at the root, the adapter in adapter/

    @property
    def weights_file(self) -> Path:
        if self.exported:
            return self.path / WEIGHTS_FILE
        return self.path / (ADAPTER_FILE if self.adapter is not None else WEIGHTS_FILE)

    @property
    def adapter_file(self) -> Path:
        """Where the adapter tensors are (a LoRA checkpoint or export)."""
        return self.path / PEFT_DIR / PEFT_WEIGHTS_FILE if self.exported else self.path / ADAPTER_FILE


def save_checkpoint(
    folder: str | os.PathLike,
    model: GPT,
    *,
    prompt_style: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Write ``model`` (its config, weights, prompt style and ``metadata``) to ``folder`` atomically."""
    return _write(folder, model.state_dict_untied(), model.config, prompt_style, metadata, None)


def save_adapter_checkpoint(
    folder: str | os.PathLike,
    adapter: dict[str, torch.Tensor],
    config: GPTConfig,
    info: AdapterInfo,
    *,
    prompt_style: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> CheckpointInfo:
    """Write a LoRA adapter (``lora.adapter_state_dict``) with its base's config and identity, atomically."""
    return _write(folder, adapter, config, prompt_style, metadata, info)


CHECKPOINT_KIND = "checkpoint"  # what files.MARKER says in final/ and best/


def is_checkpoint(folder: Path) -> bool:
    """A checkpoint folder written before ``files.MARKER`` existed: a config.json of our format."""
    try:
        meta = read_json(folder / CONFIG_FILE)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def _write(folder, tensors, config: GPTConfig, prompt_style, metadata, adapter: AdapterInfo | None) -> CheckpointInfo:
    from safetensors.torch import save_file

    if prompt_style is not None:
        get_prompt_style(prompt_style)  # refuse an unknown name now, not at load time
    folder = Path(folder)
    name = ADAPTER_FILE if adapter is not None else WEIGHTS_FILE
    with atomic_folder(folder, CHECKPOINT_KIND, ours=is_checkpoint) as tmp:
        save_file(tensors, str(tmp / name), metadata={"format": "pt"})
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
        digest = file_sha256(tmp / name)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": config.to_dict(),
            "prompt_style": prompt_style,
            "weights": {"file": name, "bytes": (tmp / name).stat().st_size, "sha256": digest},
            **({"adapter": adapter.to_dict()} if adapter is not None else {}),
            "metadata": metadata or {},
        }
        atomic_write_json(tmp / CONFIG_FILE, meta)
    return CheckpointInfo(folder, config, prompt_style, digest, metadata or {}, meta["weights"]["bytes"], adapter)


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
        adapter = _parse_adapter(meta["adapter"]) if "adapter" in meta else None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    return CheckpointInfo(folder, config, style, sha, metadata, size, adapter)


def _parse_adapter(d: Any) -> AdapterInfo:
    """config.json's "adapter" object; a wrong shape is a ``ValueError`` (the caller names the file)."""
    if not isinstance(d, dict) or d.get("method") != "lora":
        raise ValueError('"adapter" must be an object with "method": "lora"')
    base, sha = d.get("base_model"), d.get("base_sha256")
    if not isinstance(base, str) or not base:
        raise ValueError(f'"adapter.base_model" must be a model string, got {_kind(base)}')
    if not (isinstance(sha, str) and len(sha) == 64):
        raise ValueError(f'"adapter.base_sha256" must be a 64-character hex string, got {_kind(sha)}')
    lora = {k: v for k, v in d.items() if k not in ("method", "base_model", "base_sha256")}
    return AdapterInfo(LoRAConfig.from_dict(lora), base, sha)


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
    if info.adapter is not None:
        raise ValueError(
            f"{info.path} holds a LoRA adapter, not a whole model: load it with inference.load_model, "
            f"which loads its base {info.adapter.base_model!r}"
        )
    state = _read_weights(info, verify)
    with torch.device("meta"):  # load_weights takes the read tensors as they are
        model = GPT(info.config)
    model.load_weights(state, str(info.weights_file))
    return model.to(device).eval(), info


def read_adapter(folder: str | os.PathLike, *, verify: bool = True) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """(info, adapter tensors under our names) of a LoRA checkpoint folder (``save_adapter_checkpoint``),
    checked as weights are, or of a LoRA run's export (its ``adapter/``, in PEFT's layout)."""
    info = read_export_info(folder) or read_checkpoint_info(folder)
    if info.adapter is None:
        raise ValueError(f"{info.path} is a whole model, not a LoRA adapter")
    if not info.exported:
        return info, _read_weights(info, verify)
    if not info.adapter_file.is_file():
        raise FileNotFoundError(f"{info.path} is missing {PEFT_DIR}/{PEFT_WEIGHTS_FILE}")
    tensors = {}
    for key, tensor in read_safetensors(info.adapter_file).items():
        ours = key.removeprefix(PEFT_PREFIX).removesuffix(".weight")
        if not (key.startswith(PEFT_PREFIX) and key.endswith((".lora_A.weight", ".lora_B.weight"))):
            raise ValueError(f"{info.adapter_file}: unexpected tensor {key!r} (not a LoRA tensor of PEFT's layout)")
        tensors[ours] = tensor
    return info, tensors


def _read_weights(info: CheckpointInfo, verify: bool) -> dict[str, torch.Tensor]:
    """The tensors of ``info``'s weights file, after checking its size and (``verify``) its sha256."""
    check_weights(info, verify=verify)
    return read_safetensors(info.weights_file)


def check_weights(info: CheckpointInfo, *, verify: bool = True) -> None:
    """A one-line error when ``info``'s weights file is missing, of another size than recorded or
    (``verify``) of another sha256: what loading would say, without loading (e.g. before hours of work)."""
    weights = info.weights_file
    if not weights.is_file():
        raise FileNotFoundError(f"{info.path} is missing {weights.name}")
    expected_bytes = info.weights_bytes
    actual_bytes = weights.stat().st_size
    if actual_bytes != expected_bytes:
        raise ValueError(
            f"{weights} has {actual_bytes} bytes, config.json says {expected_bytes} (truncated or replaced?)"
        )
    if verify and file_sha256(weights) != info.sha256:
        raise ValueError(f"{weights} does not match the sha256 recorded in config.json (corrupt or replaced?)")


# safetensors' dtype names, as in its format description.
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a truncated or foreign file is a one-line error.

    The format is an 8-byte little-endian header length, a JSON header naming
    each tensor's dtype, shape and byte range, then the raw bytes. Each tensor
    is read with a plain file read into memory of its own. Why not
    ``safetensors.torch.load_file``: it maps the file and copies each tensor
    out of the mapping, so while a model loads, its weights sit in memory twice
    (the mapped pages count as the process's memory until the file is closed);
    on a 2 vCPU / 16 GB Space that is the difference between one 124M model
    loading at 0.5 GB and at 1 GB.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError("its header length points past the end of the file")
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            out = {}
            for name, entry in header.items():
                dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
                start, end = entry["data_offsets"]
                shape = [int(d) for d in entry["shape"]]
                nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
                if end - start != nbytes or 8 + n + end > size:
                    raise ValueError(f"tensor {name!r} does not fit the file")
                raw = torch.empty(nbytes, dtype=torch.uint8)
                f.seek(8 + n + start)
                if f.readinto(memoryview(raw.numpy())) != nbytes:
                    raise ValueError(f"tensor {name!r} is cut short")
                out[name] = raw.view(dtype).reshape(shape)
            return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        reason = f"{type(e).__name__}: {e}" if isinstance(e, (KeyError, TypeError, AttributeError)) else str(e)
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {reason}") from None


# --------------------------------------------------------------------------- exports (publish.export writes them)


def _export_meta(folder: Path) -> tuple[dict, dict] | None:
    """(config.json, its "gpt2_scratch" metadata) of an export folder; None when ``folder`` is not one."""
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(cfg, dict) or not isinstance(cfg.get(EXPORT_KEY), dict):
        return None
    return cfg, cfg[EXPORT_KEY]


def is_export(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an export (a config.json in transformers' layout with our metadata)."""
    return _export_meta(Path(folder).expanduser()) is not None


def read_export_info(folder: str | os.PathLike) -> CheckpointInfo | None:
    """What an export folder's config.json says about its weights, as a ``CheckpointInfo``; None if not an export."""
    folder = Path(folder).expanduser()
    found = _export_meta(folder)
    if found is None:
        return None
    cfg, ours = found
    where = folder / CONFIG_FILE
    if ours.get("format_version") != EXPORT_VERSION:
        raise ValueError(
            f'{where}: "{EXPORT_KEY}.format_version" is {ours.get("format_version")!r}; '
            f"this code reads {EXPORT_VERSION}"
        )
    weights, metadata, style = ours.get("weights"), ours.get("metadata", {}), ours.get("prompt_style")
    try:
        config = GPTConfig.from_hf_config(cfg)
        if style is not None:
            get_prompt_style(style)
        if not isinstance(weights, dict) or not isinstance(metadata, dict):
            raise ValueError(f'"{EXPORT_KEY}.weights" and "{EXPORT_KEY}.metadata" must be objects')
        sha, size = str(weights["sha256"]), int(weights["bytes"])
        adapter = _parse_adapter(ours["adapter"]) if "adapter" in ours else None  # a LoRA run's export
    except KeyError as e:
        raise ValueError(f"{where}: missing field {e}") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    return CheckpointInfo(folder, config, style, sha, metadata, size, adapter, exported=True)
