"""Prompt styles: how an instruction (and optional input) becomes model text.

A style is defined once here and referred to by name everywhere else: the
finetuning data, generation in ``evaluate.py`` and ``app.py``, and the checkpoint,
which stores the style's name so that a model is always prompted the way it
was trained. A style owns what ends an answer (``stop``: training appends the first, generation
stops on any, ``stop_ids``) and its system prompt, if it has one. The templates other tools read are
rendered from the style here too: ``chat_template`` (Jinja, for ``transformers``'
``apply_chat_template`` and llama.cpp) and ``ollama_template`` (Go, for an Ollama ``Modelfile``).
Invariant: for one user message both give exactly ``format(instruction)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

from gpt2_scratch.tokenizer import EOS_TEXT, encode

_MARK = "\x00instruction\x00"  # stands for the instruction while a template is cut out of ``format``


@dataclass(frozen=True)
class PromptStyle:
    """Formats an instruction/input pair into a prompt that ends where the response begins."""

    name: str
    # Text before every turn that sets the task, for the styles that have one (None: none).
    system: str | None = None
    # The end of every prompt, where the response begins (a chat template's "generation prompt").
    response_header: ClassVar[str] = ""
    # What ends an answer. Training appends the first after every response (its tokens, as encoded alone);
    # generation stops on any of them.
    stop: ClassVar[tuple[str, ...]] = (EOS_TEXT,)

    def format(self, instruction: str, input: str = "") -> str:
        raise NotImplementedError

    def stop_ids(self) -> tuple[tuple[int, ...], ...]:
        """The token ids of each ``stop`` text, encoded alone (one id for <|endoftext|>, several for a marker
        written as text): the stop sequences of generation; the first ends every training example."""
        return _encoded(self.stop)

    def format_example(self, instruction: str, input: str, output: str) -> tuple[str, str]:
        """(prompt, response) text of one training example; the model is trained on their concatenation."""
        return self.format(instruction, input), output

    def turn_parts(self) -> tuple[str, str]:
        """(text before, text after) the instruction in ``format(instruction)``, less the response header."""
        before, after = self.format(_MARK).split(_MARK)
        assert after.endswith(self.response_header), f"{self.name}: format() must end with its response_header"
        return before, after[: len(after) - len(self.response_header)]

    def chat_template(self) -> str:
        """A Jinja chat template: a user message is an instruction without input, an assistant message its
        answer followed by the style's end marker (``stop[0]``); ``add_generation_prompt`` appends the response header.

        Text goes in as string literals inside tags, so the Jinja settings of the reader (transformers'
        ``trim_blocks``, llama.cpp's own engine) cannot change a newline. Roles other than user and
        assistant are refused: the model was never trained on a system prompt.
        """
        before, after = self.turn_parts()
        user = " + ".join([_jinja_str(before), "message['content']"] + ([_jinja_str(after)] if after else []))
        header, stop = _jinja_str(self.response_header), _jinja_str(self.stop[0])
        return (
            "{%- for message in messages -%}"
            f"{{%- if message['role'] == 'user' -%}}{{{{- {user} -}}}}"
            f"{{%- elif message['role'] == 'assistant' -%}}{{{{- {header} + message['content'] + {stop} -}}}}"
            "{%- else -%}{{- raise_exception('the "
            + self.name
            + " prompt style has user and assistant messages only, not ' + message['role']) -}}"
            "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{- {header} -}}}}{{%- endif -%}}"
        )

    def ollama_template(self) -> str:
        """The style as an Ollama ``TEMPLATE`` (Go template): ``.Prompt`` is the user's message,
        ``.Response`` the answer (Ollama leaves out what follows it while generating)."""
        before, after = self.turn_parts()
        text = before + after + self.response_header + self.stop[0]
        if "{{" in text or '"""' in text:
            raise ValueError(f"the {self.name} prompt style's text cannot be written as an Ollama template")
        return f"{before}{{{{ .Prompt }}}}{after}{self.response_header}{{{{ .Response }}}}{self.stop[0]}"


@dataclass(frozen=True)
class Alpaca(PromptStyle):
    """The Alpaca format, as in the LLMs-from-scratch reference pipeline."""

    name: str = "alpaca"
    system: str | None = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    )
    response_header: ClassVar[str] = "\n\n### Response:\n"

    def format(self, instruction: str, input: str = "") -> str:
        text = (
            f"{self.system}\n\n### Instruction:\n{instruction}" if self.system else f"### Instruction:\n{instruction}"
        )
        if input:
            text += f"\n\n### Input:\n{input}"
        return text + self.response_header


@dataclass(frozen=True)
class Phi3(PromptStyle):
    """Phi-3's chat markers, written as plain text (GPT-2 has no such special tokens)."""

    name: str = "phi3"
    response_header: ClassVar[str] = "<|assistant|>\n"

    def format(self, instruction: str, input: str = "") -> str:
        body = f"{instruction}\n{input}" if input else instruction
        return f"<|user|>\n{body}\n{self.response_header}"


@dataclass(frozen=True)
class ChatML(PromptStyle):
    """ChatML turns (user, then assistant; a system turn first when ``system`` is set). GPT-2's vocabulary
    has no ``<|im_start|>``/``<|im_end|>`` tokens, so the markers are plain text, several tokens each (as
    litgpt's ChatML gives them with such a tokenizer). An answer ends with ``<|im_end|>``'s tokens;
    generation also stops on <|endoftext|>, which a model not finetuned in this style writes."""

    name: str = "chatml"
    response_header: ClassVar[str] = "<|im_start|>assistant\n"
    stop: ClassVar[tuple[str, ...]] = ("<|im_end|>", EOS_TEXT)

    def format(self, instruction: str, input: str = "") -> str:
        body = f"{instruction}\n{input}" if input else instruction
        system = f"<|im_start|>system\n{self.system}<|im_end|>\n" if self.system else ""
        return f"{system}<|im_start|>user\n{body}<|im_end|>\n{self.response_header}"


PROMPT_STYLES: dict[str, PromptStyle] = {s.name: s for s in (Alpaca(), Phi3(), ChatML())}
DEFAULT_PROMPT_STYLE = "alpaca"


def get_prompt_style(name: str) -> PromptStyle:
    """The prompt style called ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        raise ValueError(f"unknown prompt style {name!r}; known styles: {', '.join(PROMPT_STYLES)}") from None


@functools.lru_cache(maxsize=None)
def _encoded(texts: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(encode(t)) for t in texts)


def _jinja_str(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal (escapes that Jinja2 and llama.cpp's engine share)."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return "'" + escaped.replace("\t", "\\t") + "'"
