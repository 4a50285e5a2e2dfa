"""Prompt styles: how an instruction (and optional input) becomes model text.

A style is defined once here and referred to by name everywhere else: the
finetuning data, generation in ``evaluate.py`` and ``app.py``, and the checkpoint,
which stores the style's name so that a model is always prompted the way it
was trained.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptStyle:
    """Formats an instruction/input pair into a prompt that ends where the response begins."""

    name: str

    def format(self, instruction: str, input: str = "") -> str:
        raise NotImplementedError

    def format_example(self, instruction: str, input: str, output: str) -> tuple[str, str]:
        """(prompt, response) text of one training example; the model is trained on their concatenation."""
        return self.format(instruction, input), output


@dataclass(frozen=True)
class Alpaca(PromptStyle):
    """The Alpaca format, as in the LLMs-from-scratch reference pipeline."""

    name: str = "alpaca"

    def format(self, instruction: str, input: str = "") -> str:
        text = (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request."
            f"\n\n### Instruction:\n{instruction}"
        )
        if input:
            text += f"\n\n### Input:\n{input}"
        return text + "\n\n### Response:\n"


@dataclass(frozen=True)
class Phi3(PromptStyle):
    """Phi-3's chat markers, written as plain text (GPT-2 has no such special tokens)."""

    name: str = "phi3"

    def format(self, instruction: str, input: str = "") -> str:
        body = f"{instruction}\n{input}" if input else instruction
        return f"<|user|>\n{body}\n<|assistant|>\n"


PROMPT_STYLES: dict[str, PromptStyle] = {s.name: s for s in (Alpaca(), Phi3())}
DEFAULT_PROMPT_STYLE = "alpaca"


def get_prompt_style(name: str) -> PromptStyle:
    """The prompt style called ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        raise ValueError(f"unknown prompt style {name!r}; known styles: {', '.join(PROMPT_STYLES)}") from None
