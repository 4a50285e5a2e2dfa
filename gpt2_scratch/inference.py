"""Getting a loaded model ready for inference: its number format and the CPU oneDNN path.

``model.py`` is plain PyTorch, like nanoGPT's. Inference is applied on top of
it where inference models are loaded (``checkpoint.load_model``), by
``prepare_for_inference(model, dtype)``. Checkpoints on disk stay float32; the
conversion happens here, at load time. Decoding at a few rows is bound by
reading every weight once per token, so fewer bytes per weight is most of the speed.

- ``float32``: every ``nn.Linear`` becomes a ``PackedLinear``, which keeps the
  same parameters (and state dict, so the model can still be trained) and only
  changes how the product is computed in CPU float32 inference: through oneDNN
  with the weight reordered once into its blocked layout. MKL's float32 GEMM
  multiplies the few rows of generation slowly on the AMD CPUs we benchmark on;
  oneDNN is 1.7x (one row) to 2.6x (8 rows) faster there.
- ``bfloat16``: every linear layer becomes a ``BF16Linear`` that keeps only its
  oneDNN-packed bfloat16 weight. Activations, LayerNorm parameters, embeddings
  and the KV cache are bfloat16 too; LayerNorm statistics and the attention
  softmax are accumulated in float32 inside their kernels, and logits come out
  in float32 (``BF16Head``).
- ``int8``: weight-only int8 in the transformer blocks (``Int8Linear``: int8
  weights, one scale per output channel, bfloat16 activations). The head stays
  a ``BF16Head``: in int8 it is no faster at one row and 3x slower at 8 rows.

The reduced formats are for inference only: their layers hold buffers, not
parameters, and ``model.train()`` refuses. ``auto`` (``resolve_dtype``) is
bfloat16 where the hardware computes it natively, float32 elsewhere; int8 is
never automatic.

Measured here (2-core AMD EPYC with AVX512-BF16, one thread, the 48 linear
layers of GPT-2 124M's blocks, one token): float32 oneDNN 27.7 ms, bfloat16
oneDNN 12.7 ms, bfloat16 ``F.linear`` 18.9 ms (8 rows: 37.2 / 14.7 / 24.0 ms;
128 rows: 225 / 111 / 119 ms), int8 about 11 ms at one row. With oneDNN held to
AVX512 without BF16 (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``, i.e. emulated
bfloat16), bfloat16 is 20.6 ms at one row but 2x slower than float32 at 8 rows
and 2.8x at 128, hence float32 for ``auto`` on such CPUs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2_scratch.model import GPT, LayerNorm

ONEDNN_ENV = "GPT2_SCRATCH_ONEDNN"  # "0" turns the oneDNN path off, e.g. to compare
DTYPES = ("auto", "float32", "bfloat16", "int8")


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


# --- choosing the format -------------------------------------------------------------------


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (not emulated through float32).

    CUDA: bfloat16 tensor cores (Ampere and later). CPU: what torch detects with
    cpuinfo: AVX512-BF16 or AMX-BF16 on x86, the BF16 extension on ARM.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return any(bool(caps.get(name)) for name in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    return False


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> str:
    """The inference format for ``name`` on ``device``: ``float32``, ``bfloat16`` or ``int8``.

    ``auto`` is bfloat16 where ``native_bfloat16(device)`` (emulated bfloat16 is
    slower than float32), float32 elsewhere.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return name
    return "bfloat16" if native_bfloat16(torch.device(device)) else "float32"


def model_dtype(model: nn.Module) -> str:
    """The format ``prepare_for_inference`` gave ``model``: ``float32``, ``bfloat16`` or ``int8``."""
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        return "int8"
    return "bfloat16" if isinstance(model.lm_head, BF16Head) else "float32"


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

    A request must get the same tokens decoding alone (``generation.generate``,
    one row per product) as batched with others (``serving.Engine``). At GPT-2
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


def _convert_reduced(model: GPT, dtype: str) -> None:
    """Replace ``model``'s layers in place with their bfloat16 / int8 inference versions."""
    head = model.lm_head.weight  # tied to wte: keep float32 until the head is built
    layer = Int8Linear if dtype == "int8" else BF16Linear
    for block in model.transformer.h:
        for parent in (block.attn, block.mlp):
            for name in ("c_attn", "c_fc", "c_proj"):
                linear = getattr(parent, name, None)
                if isinstance(linear, nn.Linear):
                    setattr(parent, name, layer(linear.weight, linear.bias))
    model.lm_head = BF16Head(head)
    for module in model.modules():
        if isinstance(module, (nn.Embedding, LayerNorm)):
            module.to(torch.bfloat16)
    model.eval()
    _return_freed_memory()


def _glibc():
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (AttributeError where they do not exist)
        return libc
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Hand the heap pages freed by the conversion back to the OS (glibc only; elsewhere nothing).

    glibc keeps freed heap memory for reuse, and the conversion's temporaries sit
    between long-lived buffers, so without this the process keeps about 300 MB
    (124M, int8) it no longer uses: RSS after loading 745 MB instead of 465 MB.
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@contextlib.contextmanager
def low_peak_loading(dtype: str) -> Iterator[None]:
    """While a model is read in float32 and converted to ``dtype``, keep the memory peak low (glibc only).

    A reduced format frees each float32 weight as soon as its converted copy
    exists. By default glibc serves buffers of up to 32 MB from its heap once a
    few large ones were freed (its mmap threshold adapts upwards), and freed heap
    memory stays in the process: the float32 weights and their converted copies
    then add up. Buffers over 1 MB get their own mapping while loading, so a
    freed weight goes back to the OS at once (measured, 124M to bfloat16: peak
    1452 -> 1243 MB for a second model). Afterwards the threshold is fixed at
    glibc's own adaptive maximum, 32 MB, so inference allocates as it did.
    """
    libc = _glibc() if dtype != "float32" else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.malloc_trim(0)


def prepare_for_inference(model: GPT, dtype: str = "float32") -> GPT:
    """Ready ``model`` for inference in ``dtype`` (``float32``, ``bfloat16`` or ``int8``; see the module doc).

    float32 only changes the class of each ``nn.Linear`` (parameters, names and
    state dict stay the same), so training the model afterwards is unaffected.
    bfloat16 and int8 convert the model in place, for inference only.
    """
    if dtype not in DTYPES[1:]:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES[1:])} (resolve 'auto' with resolve_dtype)")
    if model_dtype(model) != "float32":
        raise ValueError(f"the model is already converted to {model_dtype(model)}; load it again to convert it")
    if dtype == "float32":
        if USE_ONEDNN:
            for module in model.modules():
                if type(module) is nn.Linear:
                    module.__class__ = PackedLinear
    else:
        _convert_reduced(model, dtype)
    return model
