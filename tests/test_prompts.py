"""Prompt styles: the exact text of each, their stop tokens, their system prompt, the registry's choices."""

import dataclasses

import pytest

from gpt2_scratch.prompts import PROMPT_STYLES, get_prompt_style
from gpt2_scratch.tokenizer import EOS_ID, EOS_TEXT, encode
from gpt2_scratch.train.config import TrainConfig


def test_chatml_prompt_text_is_exact():
    style = get_prompt_style("chatml")
    assert style.format("Name a color.") == "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"
    assert style.format("Translate.", "Hallo") == (
        "<|im_start|>user\nTranslate.\nHallo<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = dataclasses.replace(style, system="Be brief.")
    assert with_system.format("Hi.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_alpacas_system_prompt_is_its_preamble_and_the_text_is_unchanged():
    style = get_prompt_style("alpaca")
    assert style.format("Add 2 and 3.", "x") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd 2 and 3.\n\n### Input:\nx\n\n### Response:\n"
    )
    assert style.system.startswith("Below is an instruction") and get_prompt_style("phi3").system is None


def test_each_style_stops_on_its_markers_encoded_alone():
    assert get_prompt_style("alpaca").stop_ids() == ((EOS_ID,),)
    assert get_prompt_style("phi3").stop_ids() == ((EOS_ID,),)
    chatml = get_prompt_style("chatml")
    assert chatml.stop == ("<|im_end|>", EOS_TEXT)
    assert chatml.stop_ids() == (tuple(encode("<|im_end|>")), (EOS_ID,))
    assert len(chatml.stop_ids()[0]) == 7  # no such special token in GPT-2: the marker is text


def test_every_registered_style_is_a_choice_of_prompt_style():
    [choices] = [f.metadata["choices"] for f in dataclasses.fields(TrainConfig) if f.name == "prompt_style"]
    assert set(choices) == set(PROMPT_STYLES) >= {"alpaca", "phi3", "chatml"}
    with pytest.raises(ValueError, match="unknown prompt style 'vicuna'; known styles: alpaca, phi3, chatml"):
        get_prompt_style("vicuna")
