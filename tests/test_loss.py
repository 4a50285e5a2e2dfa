"""The loss: ``lm_loss`` on (B, T, V) and (N, V) logits, and ``response_loss`` (the head at target positions only)."""

from __future__ import annotations

import torch

from gpt2_scratch.data.batches import collate, encode_record
from gpt2_scratch.data.records import Record
from gpt2_scratch.inference import load_model
from gpt2_scratch.loss import IGNORE_INDEX, lm_loss, response_loss

RECORDS = [Record(1, "Name a color.", "", "Blue."), Record(2, "Translate to French.", "Good morning", "Bonjour.")]


def test_response_loss_is_the_loss_of_the_full_logits_with_the_head_on_targets_only():
    model, _ = load_model("random:tiny")
    x, y = collate([encode_record(r, "alpaca") for r in RECORDS], max_length=256, mask_prompt=True)
    n_targets = int((y != IGNORE_INDEX).sum())
    assert 0 < n_targets < y.numel() // 4  # most positions are prompt or padding
    rows = []
    hook = model.lm_head.register_forward_hook(lambda m, inputs, out: rows.append(out.shape[0]))
    with torch.no_grad():
        got = response_loss(model, x, y, reduction="sum")
        full = lm_loss(model(x), y, reduction="sum")
    hook.remove()
    assert rows[0] == n_targets  # (N, V): one row of logits per target token
    torch.testing.assert_close(got, full, rtol=1e-6, atol=1e-5)
    keep = y != IGNORE_INDEX
    with torch.no_grad():
        picked = model(x)[keep]
    assert torch.equal(lm_loss(picked, y[keep]), lm_loss(picked.unsqueeze(0), y[keep].unsqueeze(0)))
