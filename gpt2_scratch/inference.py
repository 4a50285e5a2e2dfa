"""A model ready for inference: ``load_model`` for any model string, its device and number format.

Entry point: ``load_model(source, device=, dtype=)`` (a checkpoint or export folder, a Hub id or
local weights, ``random:<preset>``; a LoRA checkpoint loads its base and merges). Checkpoints on disk stay float32; ``prepare_for_inference``
converts at load time: float32 keeps ``nn.Linear``'s parameters (the model can still be
trained), bfloat16 and int8 are inference only. ``auto`` is bfloat16 where the device computes
it natively. The layers themselves are in ``kernels``; measurements in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

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
from gpt2_scratch.kernels import USE_ONEDNN, BF16Head, BF16Linear, Int8Linear, PackedLinear, decode_attention
from gpt2_scratch.model import GPT, LayerNorm
from gpt2_scratch.runs import final_checkpoint, is_run_folder

DTYPES = ("auto", "float32", "bfloat16", "int8")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (not emulated through float32).

    CUDA: bfloat16 tensor cores (Ampere and later). CPU: what torch detects with
    cpuinfo: AVX512-BF16 or AMX-BF16 on x86, the BF16 extension on ARM.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return any(bool(caps.get(name)) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    return False


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> str:
    """The inference format for ``name`` on ``device``: ``float32``, ``bfloat16`` or ``int8``.

    ``auto`` is bfloat16 where ``native_bfloat16(device)`` (emulated bfloat16 is
    slower than float32), float32 elsewhere.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return name
    return "bfloat16" if native_bfloat16(torch.device(device)) else "float32"


def model_dtype(model: nn.Module) -> str:
    """The format ``prepare_for_inference`` gave ``model``: ``float32``, ``bfloat16`` or ``int8``."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return "int8"
    return "bfloat16" if isinstance(model.lm_head, BF16Head) else "float32"


def _convert_reduced(model: GPT, dtype: str) -> None:
    """Replace ``model``'s layers in place with their bfloat16 / int8 inference versions."""
    head = model.lm_head.weight  # tied to wte: keep float32 until the head is built
    layer = Int8Linear if dtype == "int8" else BF16Linear
    for block in model.transformer.h:
        for parent in (block.attn, block.mlp):
            for name in ("c_attn", "c_fc", "c_proj"):
                linear = getattr(parent, name, None)
                if isinstance(linear, lora.LoRALinear):  # an adapter kept apart: the base converted, the adapter kept
                    setattr(parent, name, lora.LoRAInference(layer(linear.weight, linear.bias), linear))
                elif isinstance(linear, nn.Linear):
                    setattr(parent, name, layer(linear.weight, linear.bias))
    model.lm_head = BF16Head(head)
    for block in model.transformer.h:
        block.attn.attention = decode_attention
    for module in model.modules():
        if isinstance(module, (nn.Embedding, LayerNorm)):
            module.to(torch.bfloat16)
    model.eval()
    _return_freed_memory()


def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (AttributeError where they do not exist)
        return libc
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Hand the heap pages freed by the conversion back to the OS (glibc only; elsewhere nothing).

    glibc keeps freed heap memory for reuse, and the conversion's temporaries sit
    between long-lived buffers, so without this the process keeps about 300 MB
    (124M, int8) it no longer uses: RSS after loading 745 MB instead of 465 MB.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@contextlib.contextmanager
def low_peak_loading(dtype: str) -> Iterator[None]:
    """While a model is read in float32 and converted to ``dtype``, keep the memory peak low (glibc only).

    A reduced format frees each float32 weight as soon as its converted copy
    exists. By default glibc serves buffers of up to 32 MB from its heap once a
    few large ones were freed (its mmap threshold adapts upwards), and freed heap
    memory stays in the process: the float32 weights and their converted copies
    then add up. Buffers over 1 MB get their own mapping while loading, so a
    freed weight goes back to the OS at once (measured, 124M to bfloat16: peak
    1452 -> 1243 MB for a second model). Afterwards the threshold is fixed at
    glibc's own adaptive maximum, 32 MB, so inference allocates as it did.
    """
    libc = _glibc() if dtype != "float32" else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.malloc_trim(0)


def prepare_for_inference(model: GPT, dtype: str = "float32") -> GPT:
    """Ready ``model`` for inference in ``dtype`` (``float32``, ``bfloat16`` or ``int8``; see the module doc).

    float32 only changes the class of each ``nn.Linear`` (parameters, names and
    state dict stay the same), so training the model afterwards is unaffected.
    bfloat16 and int8 convert the model in place, for inference only.
    """
    if dtype not in DTYPES[1:]:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES[1:])} (resolve 'auto' with resolve_dtype)")
    if model_dtype(model) != "float32":
        raise ValueError(f"the model is already converted to {model_dtype(model)}; load it again to convert it")
    if dtype == "float32":
        if USE_ONEDNN:
            for module in model.modules():
                if type(module) is nn.Linear:
                    module.__class__ = PackedLinear
    else:
        _convert_reduced(model, dtype)
    return model


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
    source: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    merge: bool = True,
    base: str | None = None,
) -> tuple[GPT, CheckpointInfo | None]:
    """The one entry point for "give me a model from this string".

    - ``random:<preset>`` (e.g. ``random:tiny``, ``random:gpt2``): randomly
      initialised weights from a fixed seed, so the same string always gives the
      same model (offline smoke runs and tests);
    - a folder written by ``save_checkpoint``: that checkpoint (its info is returned);
      a run folder (``runs/<name>``): its ``final/`` checkpoint;
    - anything else: OpenAI-format weights through ``hub.load_pretrained``
      (Hub id, short name, or local safetensors file/folder); a folder written by
      ``publish.export.export_run`` also returns its info (prompt style, metadata).

    The model comes in eval mode, ready for inference (``inference.prepare_for_inference``)
    in ``dtype``: ``float32`` (the default; the model can still be trained), or for
    inference only ``bfloat16``, ``int8`` (weight-only) or ``auto`` (bfloat16 where the
    device computes it natively, else float32; ``inference.resolve_dtype``). The weights
    are read in float32 and converted here.

    A LoRA checkpoint (a LoRA run's ``final/``): its base model (``base``, default the one it
    records) is loaded and must be the same weights (``lora.base_sha256``), else a one-line
    ``ValueError`` naming it; the adapter is merged into it (``merge=False`` keeps the adapter
    apart, so that ``lora.base_view`` can serve the base from the same weights). A LoRA run's
    export loads its merged weights; with ``merge=False`` (or without them) its base and ``adapter/``.
    """
    dtype = resolve_dtype(dtype, device)  # a bad name fails before any loading
    with low_peak_loading(dtype):
        model, info = _load_float32(source, device, merge=merge, base=base)
        return prepare_for_inference(model, dtype), info


def _load_adapter(folder: Path, device, *, merge: bool, base: str | None) -> tuple[GPT, CheckpointInfo]:
    """The base a LoRA checkpoint records (or ``base``), checked by hash, with the adapter on it (merged or not)."""
    info, tensors = read_adapter(folder)
    source = base or info.adapter.base_model
    try:
        model, _ = _load_float32(source, device)
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


def _load_float32(
    source: str, device: str | torch.device, *, merge: bool = True, base: str | None = None
) -> tuple[GPT, CheckpointInfo | None]:
    """``load_model``'s dispatch on the source, before conversion to the inference format."""
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
        return load_checkpoint(path, device=device)
    info = read_export_info(source)
    # A LoRA run's export: the merged weights at its root, or (kept apart, or without them) base + adapter/.
    if info is not None and info.adapter is not None and (not merge or not info.weights_file.is_file()):
        return _load_adapter(path, device, merge=merge, base=base)
    return load_pretrained(source, device=device), info


def _is_our_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
