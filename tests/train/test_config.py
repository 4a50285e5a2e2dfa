"""TrainConfig validation: one clear error per bad option."""

from __future__ import annotations

import pytest

from gpt2_scratch.train.config import TrainConfig


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(batch_size=0), "--batch-size must be a positive integer"),
        (dict(batch_size=6, grad_accum=4), "must be divisible by --grad-accum"),
        (dict(schedule="linear"), "--schedule must be one of constant, cosine"),
        (dict(lr=-1.0), "--lr must be a positive number"),
        (dict(name="a/b"), "--name must be a plain folder name"),
        (dict(prompt_style="vicuna"), "--prompt-style must be one of"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)
