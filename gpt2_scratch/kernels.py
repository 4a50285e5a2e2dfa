"""The CPU kernels of inference: oneDNN-packed float32, bfloat16 and weight-only int8 linear layers.

Entry points: ``PackedLinear`` (float32, same parameters as ``nn.Linear``), ``BF16Linear``,
``Int8Linear`` and ``BF16Head`` (inference only: buffers, not parameters), and
``decode_attention``. ``inference.prepare_for_inference`` puts them into a loaded model.
Invariant: a row's result does not depend on the other rows of its batch (bit for bit),
so a batched request gets exactly its solo tokens. Measurements: docs/performance.md.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2_scratch.model import attention

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
# Above this many rows (prefill, or decoding many rows) int8 weights are dequantized to bfloat16
# for the product: int8pack_mm's time grows with the rows (it is a matrix-vector kernel), and
# from about 16 rows on the dequantized product is faster (3x at 128 rows, measured here).
INT8_KERNEL_MAX_ROWS = 8


# --- float32 ---------------------------------------------------------------------------------


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
            packed = (key, weight, one_row_differs(weight, self.bias, self.in_features, torch.float32))
            self.__dict__["_onednn_weight"] = packed
        return _onednn_linear(x, packed[1], self.bias, self.out_features, one_row_as_two=packed[2])

    def train(self, mode: bool = True) -> "PackedLinear":
        if mode:  # training changes the weights every step: free the inference copy
            self.__dict__.pop("_onednn_weight", None)
        return super().train(mode)


def _onednn_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int, *, one_row_as_two: bool
) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    if one_row_as_two and x2.shape[0] == 1:  # see one_row_differs
        y = torch.ops.mkldnn._linear_pointwise(x2.expand(2, -1).contiguous(), packed, bias, "none", [], "")[:1]
    else:
        y = torch.ops.mkldnn._linear_pointwise(x2.contiguous(), packed, bias, "none", [], "")
    return y.view(*x.shape[:-1], out_features)


# (inputs, outputs, dtype, threads) -> whether a lone row is computed as two; see one_row_differs.
_ONE_ROW_DIFFERS: dict[tuple[int, int, torch.dtype, int], bool] = {}


def one_row_differs(packed: torch.Tensor, bias: torch.Tensor | None, in_features: int, dtype: torch.dtype) -> bool:
    """Whether oneDNN gives a row other bits alone than among other rows: another kernel for one row.

    A request must get the same tokens decoding alone (``sampling.generate``,
    one row per product) as batched with others (``engine.Engine``). At GPT-2
    124M's shapes here, oneDNN multiplies one row with 3072 inputs (the MLP's
    ``c_proj``) with another kernel than two rows or more, whose sums round
    differently; every other layer, and every count from two rows up, gives each
    row the same bits. A layer of such a shape computes a lone row as two (the
    row twice, the first result kept): about 4% slower decoding at one row,
    where doing it in every layer cost 15%.

    The kernel depends on the shapes, the format and the threads, not on the
    values, so this is found once per shape, with the first such layer's
    ``packed`` weight: each of up to 64 probe rows (values spanning many
    magnitudes) is multiplied alone and among the others. One probe row shows a
    different kernel in float32; in bfloat16 the rounding of the output hides
    it about 4 times in 5, hence 64.
    """
    key = (in_features, packed.shape[0], dtype, torch.get_num_threads())
    if key not in _ONE_ROW_DIFFERS:
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(64, in_features, generator=g) * torch.exp(2 * torch.randn(64, in_features, generator=g))
        probe = probe.to(dtype)
        with torch.no_grad():
            together = torch.ops.mkldnn._linear_pointwise(probe, packed, bias, "none", [], "")
            _ONE_ROW_DIFFERS[key] = any(
                not torch.equal(
                    torch.ops.mkldnn._linear_pointwise(row[None], packed, bias, "none", [], "")[0], expected
                )
                for row, expected in zip(probe, together)
            )
    return _ONE_ROW_DIFFERS[key]


# --- bfloat16 and int8 -------------------------------------------------------------------------


class _InferenceOnly(nn.Module):
    """A layer converted for inference: its weights are buffers, and training it is refused."""

    def train(self, mode: bool = True) -> "_InferenceOnly":
        if mode:
            raise RuntimeError("this model was converted to bfloat16/int8 for inference; load it in float32 to train")
        return super().train(False)


@functools.lru_cache(maxsize=None)
def _onednn_bf16_available() -> bool:
    """oneDNN packs bfloat16 weights only on CPUs with AVX512 (native or emulated) or AVX-NE-CONVERT."""
    if not USE_ONEDNN:
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), ONEDNN_ROWS_HINT)
        return True
    except RuntimeError:
        return False


class BF16Linear(_InferenceOnly):
    """A linear layer in bfloat16: on CPU its weight is kept only in oneDNN's packed layout."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features = weight.shape[0]
        weight = weight.detach().to(torch.bfloat16).contiguous()
        self.packed = weight.device.type == "cpu" and _onednn_bf16_available()
        bias = None if bias is None else bias.detach().to(torch.bfloat16)
        self.one_row_as_two = False
        if self.packed:
            in_features = weight.shape[1]
            weight = torch.ops.mkldnn._reorder_linear_weight(weight, ONEDNN_ROWS_HINT)
            self.one_row_as_two = one_row_differs(weight, bias, in_features, torch.bfloat16)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            return _onednn_linear(x, self.weight, self.bias, self.out_features, one_row_as_two=self.one_row_as_two)
        return F.linear(x, self.weight, self.bias)


class Int8Linear(_InferenceOnly):
    """Weight-only int8: ``weight`` int8 ``(out, in)``, ``scale`` one bfloat16 per output channel.

    Symmetric per-channel quantization: ``w ~= weight * scale[:, None]`` with
    ``scale = max|w_row| / 127``, so ``x @ w.T = (x @ weight.T) * scale``.
    Activations are bfloat16: ``torch._weight_int8pack_mm`` (the CPU kernel used up
    to ``INT8_KERNEL_MAX_ROWS`` rows) is fast with bfloat16 inputs and about 10x
    slower with float32 ones here.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        w = weight.detach().float()
        # The kernel takes bfloat16 scales. Rounding a scale up (by more than bfloat16's
        # half step, 2^-9) before the weights are divided by it keeps every |q| <= 127
        # with no clipping, and the dequantized weights within half a step of the originals.
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127 * (1 + 2**-8)).to(torch.bfloat16)
        q = (w / scale.float()[:, None]).round_().clamp_(-127, 127).to(torch.int8)  # one temporary
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
        # The CPU kernel reads the inner dimension 16 values at a time (other sizes crash it).
        self.use_kernel = w.device.type == "cpu" and w.shape[1] % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        if self.use_kernel and x2.shape[0] <= INT8_KERNEL_MAX_ROWS:
            y = torch._weight_int8pack_mm(x2.contiguous(), self.weight, self.scale)
        else:  # prefill, or off the CPU: dequantize for this product only
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.weight.shape[0])


class BF16Head(_InferenceOnly):
    """The output head in bfloat16, returning float32 logits.

    GPT-2's logits share a large per-position offset (often around -100 with
    OpenAI's weights), and bfloat16 keeps 8 significant bits: rounded at that size,
    logits would be off by up to 0.25. The head's rows are therefore centered (their mean
    row subtracted) before they are rounded to bfloat16, so the bfloat16 product
    holds only the small differences between tokens, and the offset ``x . mean_row``
    is added back in float32. Same cost as a plain bfloat16 head.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        mean_row = w.mean(dim=0)
        self.linear = BF16Linear(w - mean_row, None)
        self.register_buffer("mean_row", mean_row)  # float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not ``x.float() @ self.mean_row``: that matrix-vector product's sums round differently
        # from 4 rows up, and a row must get the same bits whatever shares its batch.
        offset = (x.float() * self.mean_row).sum(-1)  # (B, T)
        return self.linear(x).float() + offset.unsqueeze(-1)


def decode_attention(q, k, v, mask: torch.Tensor | None, dropout_p: float = 0.0) -> torch.Tensor:
    """``model.attention``, with bfloat16 decoding on CPU computed in float32 and rounded once.

    At one query a row torch's bfloat16 SDPA kernel is 2.6x (1 row) to 3.6x (8 rows)
    slower than its float32 one, more than upcasting the cached keys and values
    costs; prefill (many queries) stays on the bfloat16 kernel, faster there.
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu" and q.shape[2] == 1:
        return attention(q.float(), k.float(), v.float(), mask, dropout_p).to(q.dtype)
    return attention(q, k, v, mask, dropout_p)
