"""A LoRA run's adapter in PEFT's layout: ``adapter/adapter_config.json`` and ``adapter/adapter_model.safetensors``.

Entry point: ``write_peft_adapter(folder, info, tensors, base_model_name_or_path)``. PEFT loads it
on a ``transformers.GPT2LMHeadModel`` of the same base (``PeftModel.from_pretrained``).

Layout. PEFT names a tensor ``base_model.model.<module>.lora_A.weight``: our
``transformer.h.0.attn.c_attn.lora_A`` becomes ``base_model.model.transformer.h.0.attn.c_attn.lora_A.weight``.
GPT-2's projections are ``Conv1D`` layers with ``(in, out)`` weights, hence ``fan_in_fan_out: true``;
that flag only tells PEFT to transpose the *base* weight when merging: its ``lora_A`` is an
``nn.Linear(in, r)`` weight ``(r, in)`` and ``lora_B`` ``(out, r)`` whatever the base layer, the
shapes ours have, so the tensors are copied as they are (tests/publish/test_lora_export.py checks it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gpt2_scratch.checkpoint import PEFT_CONFIG_FILE, PEFT_DIR, PEFT_PREFIX, PEFT_WEIGHTS_FILE, AdapterInfo
from gpt2_scratch.files import atomic_write_json


def peft_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our adapter tensors under PEFT's names (shapes unchanged)."""
    out = {}
    for key, tensor in tensors.items():
        if not key.endswith((".lora_A", ".lora_B")):
            raise ValueError(f"unexpected tensor {key!r}: not a LoRA adapter tensor")
        out[f"{PEFT_PREFIX}{key}.weight"] = tensor.contiguous()
    return out


def peft_config(adapter: AdapterInfo, base_model_name_or_path: str | None) -> dict:
    """``adapter_config.json``: PEFT's ``LoraConfig`` of the same adapter."""
    alpha = adapter.lora.alpha
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": adapter.lora.rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": adapter.lora.dropout,
        # Suffixes of the module names ("transformer.h.0.attn.c_attn" ends with ".attn.c_attn").
        "target_modules": list(adapter.lora.targets),
        "fan_in_fan_out": True,  # GPT2LMHeadModel's Conv1D layers
        "bias": "none",
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def write_peft_adapter(
    folder: Path, adapter: AdapterInfo, tensors: dict[str, torch.Tensor], base_model_name_or_path: str | None
) -> list[str]:
    """Write ``folder/adapter/``; return the file paths relative to ``folder``."""
    from safetensors.torch import save_file

    out = folder / PEFT_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_file(peft_state_dict(tensors), str(out / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    atomic_write_json(out / PEFT_CONFIG_FILE, peft_config(adapter, base_model_name_or_path))
    return [f"{PEFT_DIR}/{PEFT_CONFIG_FILE}", f"{PEFT_DIR}/{PEFT_WEIGHTS_FILE}"]
