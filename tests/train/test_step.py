"""The optimizer step's pieces: the learning-rate schedule and which parameters decay."""

from __future__ import annotations

import pytest
import torch

from gpt2_scratch.config import GPTConfig
from gpt2_scratch.model import GPT
from gpt2_scratch.train.config import TrainConfig
from gpt2_scratch.train.step import configure_optimizer, lr_at


def test_lr_schedule():
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, schedule="cosine")
    assert [lr_at(s, 104, cfg) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lr_at(4, 104, cfg) == pytest.approx(1e-3)
    assert lr_at(54, 104, cfg) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: midpoint of peak and 10% floor
    assert lr_at(104, 104, cfg) == pytest.approx(1e-4)
    const = TrainConfig(lr=5e-5)
    assert {lr_at(s, 232, const) for s in (0, 100, 231)} == {5e-5}


def test_weight_decay_only_on_matrices_and_embeddings():
    model = GPT(GPTConfig.from_preset("tiny"))
    opt = configure_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {names[id(p)] for p in decay["params"]}
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed
    assert "transformer.h.0.attn.c_attn.weight" in decayed
    assert all(p.dim() == 1 for p in no_decay["params"])
    assert {names[id(p)] for p in no_decay["params"]} >= {
        "transformer.h.0.ln_1.weight",
        "transformer.h.0.attn.c_attn.bias",
    }
    # The tied head is the embedding: each parameter appears exactly once.
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
