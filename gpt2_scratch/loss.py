"""The language-modelling loss and its ignore index, defined once.

Training, validation and the evaluation's reference-loss metric all call
``lm_loss`` so that the numbers they report are the same quantity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Targets equal to this value do not count in the loss (PyTorch's default for cross_entropy).
IGNORE_INDEX = -100


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(B, T, V)`` against ``targets`` ``(B, T)``.

    Positions whose target is ``IGNORE_INDEX`` are skipped. Computed in float32
    even under bf16 autocast, because the log-softmax over 50k classes loses
    precision in bf16.
    """
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction
    )
