"""Model configuration: a small dataclass, the four OpenAI presets, JSON round trip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def from_known_fields(cls: type[T], d: dict[str, Any], what: str) -> T:
    """The dataclass ``cls`` built from ``d``; unknown keys are a one-line ``ValueError`` (a typo must not pass silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)}")
    return cls(**d)


@dataclass
class GPTConfig:
    """Hyperparameters of a GPT-2 model.

    The defaults are GPT-2 small (124M). ``dropout`` is 0 by default because
    instruction finetuning of a pretrained model does not need it.
    """

    vocab_size: int = 50257
    block_size: int = 1024  # context length (GPT-2's n_positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in every Linear and LayerNorm
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """Config of an OpenAI preset: ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``.

        ``tiny`` is a 2-layer model for tests and smoke runs.
        """
        short = name.split("/")[-1]
        if short not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[short], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        """Build from a dict, rejecting unknown keys."""
        return from_known_fields(cls, d, "GPTConfig field(s)")

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> "GPTConfig":
        """Translate a Hugging Face ``config.json`` of a GPT-2 model."""
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"config.json describes a {hf.get('model_type')!r} model, not gpt2")
        n_inner = hf.get("n_inner")
        if n_inner not in (None, 4 * hf["n_embd"]):
            raise ValueError(f"config.json has n_inner={n_inner}; only 4*n_embd is supported")
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"config.json has activation_function={act!r}; GPT-2 uses gelu_new")
        return cls(
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # Not an OpenAI model: a tiny shape for tests and offline smoke runs.
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=256),
}
