"""The inference layer: ``to_inference(model, dtype)`` recomposes a loaded model for fast decoding.

Entry points: ``load_model(source, device=, dtype=)`` (``loading.load_gpt`` then ``to_inference``) and
``to_inference``. Each linear layer of the blocks and the head is replaced by a layer of ``kernels``
made from it (composition, visible in ``print(model)``; the names and the state dict keys stay
GPT-2's): float32 keeps the very Parameters (``Float32Linear``), bfloat16, int8 and int4 hold converted
buffers, inference only. Each layer's kernel is chosen by measurement (``kernels.choose_kernel``).
``auto`` is bfloat16 where the device computes it natively. Nothing in training imports this module.
Measurements: docs/performance.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Callable, Iterator, TypeVar

import torch
import torch.nn as nn

from gpt2_scratch.checkpoint import CheckpointInfo
from gpt2_scratch.devices import native_bfloat16
from gpt2_scratch.kernels import (
    LAYERS,
    CenteredHead,
    InferenceLinear,
    check_kernel,
    choose_kernel,
)
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.model import GPT, LayerNorm

DTYPES = ("auto", "float32", "bfloat16", "int8", "int4")
T = TypeVar("T")


def resolve_dtype(name: str, device: str | torch.device = "cpu") -> str:
    """The inference format for ``name`` on ``device``: ``float32``, ``bfloat16``, ``int8`` or ``int4``.

    ``auto`` is bfloat16 where ``devices.native_bfloat16(device)`` (emulated bfloat16 is
    slower than float32), float32 elsewhere.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return name
    return "bfloat16" if native_bfloat16(torch.device(device)) else "float32"


def model_dtype(model: nn.Module) -> str:
    """The format ``to_inference`` gave ``model``: ``float32`` (a plain model too), ``bfloat16``, ``int8`` or ``int4``."""
    formats = {layer: fmt for fmt, layer in LAYERS.items()}
    return next((formats[type(m)] for m in model.modules() if type(m) in formats), "float32")


def _inference_layer(
    linear: nn.Linear, fmt: str, kernel: str | None, layer_type: type | None = None, head: bool = False
) -> nn.Module:
    """``linear`` as ``fmt``'s inference layer (or ``layer_type``), its kernel ``kernel`` or chosen by measurement
    (as the model's ``head``: ``kernels.measure``)."""
    if linear.weight.device.type == "cpu":
        kernel, rows = choose_kernel(fmt, linear.in_features, linear.out_features, kernel, head)
    else:  # the candidates are CPU kernels; elsewhere torch's own product
        kernel, rows = ("dequant" if fmt in ("int8", "int4") else "mkl"), "together"
    layer = LAYERS[fmt](linear, kernel) if layer_type is None else layer_type(linear, kernel, fmt)
    (layer.linear if isinstance(layer, CenteredHead) else layer).rows = rows
    return layer


@torch.no_grad()
def to_inference(model: GPT, dtype: str = "float32", kernel: str | None = None) -> GPT:
    """``model`` (in place, in eval mode) with inference layers: ``float32``, ``bfloat16``, ``int8`` or ``int4``.

    Every ``nn.Linear`` of the blocks (a LoRA layer's ``base_layer`` included: the adapter wraps
    the inference layer and stays float32) and the head are replaced; ``bfloat16``, ``int8`` and ``int4``
    also put the embeddings and LayerNorms in bfloat16 (the activations' format) and the head in
    ``CenteredHead`` of their format. float32 keeps every Parameter: the model's numbers are the plain model's.
    ``kernel``: one of ``kernels.KERNELS[dtype]`` for every layer (default: measured per shape).
    """
    if dtype not in DTYPES[1:]:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES[1:])} (resolve 'auto' with resolve_dtype)")
    if any(type(m) in LAYERS.values() for m in model.modules()):
        raise ValueError(f"the model is already converted ({model_dtype(model)}); load it again to convert it")
    check_kernel(dtype, kernel)
    for block in model.transformer.h:
        for parent in [m for m in block.modules() if not isinstance(m, nn.Linear)]:
            for name, child in list(parent.named_children()):
                if type(child) is nn.Linear:
                    setattr(parent, name, _inference_layer(child, dtype, kernel))
    if dtype == "float32":
        model.lm_head = _inference_layer(model.lm_head, dtype, kernel, head=True)  # the Parameter tied to wte
    else:
        model.lm_head = _inference_layer(model.lm_head, dtype, kernel, CenteredHead, head=True)
        for module in model.modules():
            if isinstance(module, (nn.Embedding, LayerNorm)):
                module.to(torch.bfloat16)
    _return_freed_memory()
    return model.eval()


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


def load_model(
    source: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    merge: bool = True,
    base: str | None = None,
    kernel: str | None = None,
) -> tuple[GPT, CheckpointInfo | None]:
    """The one entry point for "give me a model to run from this string": ``loading.load_gpt`` + ``to_inference``.

    ``dtype``: ``float32`` (the default), or for inference only ``bfloat16``, ``int8`` or ``int4``
    (weight-only) or ``auto`` (bfloat16 where the device computes it natively, else float32;
    ``resolve_dtype``). The weights are read in float32 and converted here. ``merge`` and
    ``base``: ``load_gpt``'s (a LoRA checkpoint's adapter merged or kept apart, another base).
    ``kernel``: ``to_inference``'s (default: measured).
    """
    dtype = resolve_dtype(dtype, device)  # a bad name fails before any loading
    check_kernel(dtype, kernel)
    with low_peak_loading(dtype):
        model, info = load_gpt(source, device, merge=merge, base=base)
        return to_inference(model, dtype, kernel), info


def run_apart(fn: Callable[[], T]) -> T:
    """``fn()`` in a thread of its own that ends with it: its result, or its exception.

    For loading and calibrating in a process whose decoding runs in another, long-lived thread (the
    app's engine). torch's OpenMP runtime (libgomp) keeps a pool of worker threads for every thread
    that has run a parallel region, as long as that thread lives; once a process holds more such
    threads than it has CPUs, the workers stop waiting actively between regions and every region pays
    a wake-up: measured here (2 cores), a 100,000-element add 7.8 -> 64 us and a 768x768 product
    (``gemv``) 27 -> 87 us in a second thread, about 50 such regions a token. A thread that has
    ended has given its pool back (docs/performance.md).
    """
    out: list = []

    def run() -> None:
        try:
            out.append((True, fn()))
        except BaseException as e:  # handed to the caller
            out.append((False, e))

    thread = threading.Thread(target=run, name="gpt2-load")
    thread.start()
    thread.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def summary(model: nn.Module) -> str:
    """The kernels of ``model``'s inference layers for a header or a log line, e.g. ``onednn x48, mkl x1``."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, InferenceLinear):
            counts[m.kernel] = counts.get(m.kernel, 0) + 1
    return ", ".join(f"{k} x{n}" for k, n in counts.items()) or "torch's own (a plain model)"


def plan(fmt: str, n_embd: int, vocab_size: int, kernel: str | None = None) -> str:
    """The kernel each layer of a GPT-2 of this width gets in ``fmt`` (measured now if not cached), for a header.

    e.g. ``c_attn onednn, attn.c_proj onednn, c_fc onednn, mlp.c_proj onednn (lone as two), head mkl``.
    """
    C = n_embd
    layers = {"c_attn": (C, 3 * C), "attn.c_proj": (C, C), "c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}
    parts = []
    for name, (n_in, n_out) in [*layers.items(), ("head", (C, vocab_size))]:
        chosen, rows = choose_kernel(fmt, n_in, n_out, kernel, head=name == "head")
        parts.append(f"{name} {chosen}" + ("" if rows == "together" else f" ({rows})"))
    return ", ".join(parts)
