"""The language-modelling loss and its ignore index, defined once.

Training, validation and the evaluation's reference-loss metric all call
``response_loss`` (``lm_loss`` of the logits at the target positions) so that the numbers they report
are the same quantity. Invariant: the head runs on target tokens only: prompt and padding positions,
whose loss is ignored, get no logits (the head and the softmax over 50,257 classes are the largest
per-token work after the blocks).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

# Targets equal to this value do not count in the loss (PyTorch's default for cross_entropy).
IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(B, T, V)`` (or ``(N, V)``) against ``targets`` ``(B, T)`` (or ``(N,)``).

    Positions whose target is ``IGNORE_INDEX`` are skipped. Computed in float32
    even under bf16 autocast, because the log-softmax over 50k classes loses
    precision in bf16.
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


def response_loss(
    model: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """``lm_loss`` of ``model(inputs)`` against ``targets`` ``(B, T)``, the head run at target positions only.

    The same value as ``lm_loss(model(inputs), targets)`` (equal up to float rounding), without
    logits for the positions it ignores. ``autocast``: the context the forward pass runs in.
    """
    keep = targets != IGNORE_INDEX
    with autocast():
        logits = model(inputs, logits_at=keep)  # (N, V)
    return lm_loss(logits, targets[keep], reduction=reduction)
