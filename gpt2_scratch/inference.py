"""Getting a loaded model ready for inference: the CPU oneDNN path for its linear layers.

``model.py`` is plain PyTorch, like nanoGPT's. Inference on a CPU is applied on
top of it, where inference models are loaded (``checkpoint.load_model``):
``prepare_for_inference`` turns every ``nn.Linear`` into a ``PackedLinear``,
which keeps the same parameters (and state dict) and only changes how the
product is computed in CPU float32 inference.

Why: generation multiplies a few rows by every weight matrix per token, and
MKL's float32 GEMM does that slowly on the AMD CPUs we benchmark on, while
oneDNN with the weight reordered once into its blocked layout is 1.7x (one row)
to 2.6x (8 rows) faster there.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

ONEDNN_ENV = "GPT2_SCRATCH_ONEDNN"  # "0" turns the oneDNN path off, e.g. to compare


def _onednn_available() -> bool:
    if os.environ.get(ONEDNN_ENV, "1") == "0":
        return False
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


USE_ONEDNN = _onednn_available()
# Batch size oneDNN lays the packed weight out for; one layout serves 1 to a few hundred rows.
ONEDNN_ROWS_HINT = 8


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose CPU float32 inference goes through oneDNN with a prepacked weight.

    The packed copy lives on the module, is rebuilt when the weight changes (its
    version counter moves on every in-place update, e.g. an optimizer step or
    ``load_state_dict``) and is dropped by ``train()``. It costs as much memory as
    the weight, during inference only. With gradients on, or off the CPU, this
    is ``nn.Linear``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()):
            return F.linear(x, self.weight, self.bias)
        key = (self.weight.data_ptr(), self.weight._version)
        packed = self.__dict__.get("_onednn_weight")
        if packed is None or packed[0] != key:
            weight = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach().contiguous(), ONEDNN_ROWS_HINT)
            packed = (key, weight)
            self.__dict__["_onednn_weight"] = packed
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        y = torch.ops.mkldnn._linear_pointwise(x2, packed[1], self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def train(self, mode: bool = True) -> "PackedLinear":
        if mode:  # training changes the weights every step: free the inference copy
            self.__dict__.pop("_onednn_weight", None)
        return super().train(mode)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Route ``model``'s linear layers through oneDNN for CPU inference, when oneDNN is available.

    Changes only the class of each ``nn.Linear`` (parameters, names and state dict
    stay the same), so training the model afterwards is unaffected.
    """
    if USE_ONEDNN:
        for module in model.modules():
            if type(module) is nn.Linear:
                module.__class__ = PackedLinear
    return model
