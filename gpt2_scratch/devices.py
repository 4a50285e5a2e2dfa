"""Devices: which one a run uses (``resolve_device``) and whether it computes bfloat16 natively.

Shared by training (bf16 autocast) and inference (the ``auto`` format); nothing here converts a model.
"""

from __future__ import annotations

import torch


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
