"""The inference layers: a loaded model's linear layers, recomposed for fast CPU decoding, kernels chosen by measurement.

Entry points: ``Float32Linear``, ``BF16Linear``, ``Int8Linear``, ``Int4Linear`` (each made from a plain
``nn.Linear``: float32 keeps its very Parameters, the others hold converted buffers under the same names),
``CenteredHead``, and ``choose_kernel(format, in, out)``. ``inference.to_inference`` puts them into a model.
Every format has candidate kernels (``KERNELS``: torch's, and our C kernel ``gemv`` where a C compiler
built it), each fed rows one of three ways (``ROWS``); ``choose_kernel`` times them once on the layer's
shape at 1, 8 and 64 rows, keeps the fastest way that gives each row the same bits alone as among other
rows, and caches the choice per CPU model, torch version, threads and shape
(``~/.cache/gpt2_scratch/kernels.json``; ``GPT2_SCRATCH_KERNEL=<name>`` forces one).
Invariant: a row's result does not depend on the other rows of its batch (bit for bit), so a
batched request gets exactly its solo tokens. Measurements: docs/performance.md.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2_scratch import gemv
from gpt2_scratch.files import atomic_write_json, cache_folder

KERNEL_ENV = "GPT2_SCRATCH_KERNEL"  # force one kernel (a name of KERNELS[format]) for every layer
# --kernel's help in every script that loads a model for inference (evaluate.py, app.py).
KERNEL_HELP = (
    "the product kernel of every linear layer (float32/bfloat16: onednn, mkl or gemv; int8: int8pack, dequant "
    "or gemv; int4: gemv or dequant; also GPT2_SCRATCH_KERNEL)"
)
KERNEL_DEFAULT_TEXT = "measured per layer shape on this CPU and cached"
# Candidate kernels per format, in order of preference when they measure the same.
KERNELS = {
    "float32": ("onednn", "mkl", "gemv"),  # oneDNN with a prepacked weight; torch's F.linear (MKL's sgemm); ours
    "bfloat16": ("onednn", "mkl", "gemv"),  # the same three, bfloat16 weights and activations
    "int8": ("int8pack", "dequant", "gemv"),  # torch's weight-only int8 kernel; dequantize per product; ours
    "int4": ("gemv", "dequant"),  # ours (llama.cpp's q4_0 x q8_0); dequantize per product (where ours is not built)
}
FALLBACKS = {"int4": "dequant"}  # measured only where the format's other kernels are missing (50-200x slower)
# Batch size oneDNN lays the packed weight out for; one layout serves 1 to a few hundred rows.
ONEDNN_ROWS_HINT = 8


# --- the products --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def onednn_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN packs ``dtype`` weights here (bfloat16 needs AVX512, native or emulated, or AVX-NE-CONVERT)."""
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), ONEDNN_ROWS_HINT)
        return True
    except (AttributeError, RuntimeError):
        return False


def _pack(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's packed copy of ``weight`` ``(out, in)``: opaque, readable only by ``_onednn``."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ONEDNN_ROWS_HINT)


def _onednn(x2: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x2.contiguous(), packed, bias, "none", [], "")


# How a layer feeds its rows to its kernel, so that a row gets the same bits alone and batched (``_probe``):
# all at once; all at once but a lone row as two (the row twice, the first result kept: for a kernel whose
# one-row routine rounds differently); or one row at a time (exact by construction: the choice where the
# kernel is compute-bound, e.g. bfloat16 emulated on a CPU without it, and a lone row as two costs double).
ROWS = ("together", "lone as two", "one by one")


def feed_rows(product: Callable[[torch.Tensor], torch.Tensor], x2: torch.Tensor, rows: str) -> torch.Tensor:
    """``product(x2)`` for ``x2`` ``(N, in)``, its rows fed as ``rows`` (one of ``ROWS``) says."""
    if rows == "lone as two" and x2.shape[0] == 1:
        return product(x2.expand(2, -1))[:1]
    if rows == "one by one" and x2.shape[0] > 1:
        return torch.cat([product(x2[i : i + 1]) for i in range(x2.shape[0])])
    return product(x2)


class InferenceLinear(nn.Module):
    """What the inference layers share: the shape, the kernel, and how rows are fed to it (``ROWS``)."""

    def __init__(self, linear: nn.Linear, kernel: str):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernel = kernel
        self.rows = "together"  # set by ``inference.to_inference`` from ``choose_kernel``

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 W^T + b`` for ``x2`` ``(N, in)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = feed_rows(self.product, x.reshape(-1, x.shape[-1]), self.rows)
        return y.view(*x.shape[:-1], self.out_features)

    def _float32(self, name: str) -> torch.Tensor | None:
        """Buffer ``name`` in float32 for ``gemv`` (None stays None), copied again when the buffer changes.
        Called twice a product: dictionary lookups (as a ``getattr`` and a ``data_ptr`` 0.4 ms a token)."""
        t = self._buffers[name]
        if t is None or t.dtype is torch.float32:
            return t
        version = 0 if t.is_inference() else t._version  # inference tensors have no version (nor change)
        copies = self.__dict__.setdefault("_float32_copies", {})
        entry = copies.get(name)
        if entry is None or entry[0] is not t or entry[1] != version:
            entry = copies[name] = (t, version, t.float())
        return entry[2]

    def extra_repr(self) -> str:
        rows = "" if self.rows == "together" else f", rows {self.rows}"
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}{rows}"


class Float32Linear(InferenceLinear):
    """A float32 linear layer for inference: the ``nn.Linear``'s own Parameters, its product by ``kernel``.

    ``onednn``: a packed copy of the weight (as much memory as the weight), rebuilt when the
    weight changes (its version counter moves on every in-place update). With gradients on, or
    off the CPU, this is ``F.linear``: the layer computes what the ``nn.Linear`` did.
    """

    def __init__(self, linear: nn.Linear, kernel: str = "mkl"):
        super().__init__(linear, kernel)
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: names and state dict stay

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        if self.kernel == "mkl" or not (x2.is_cpu and not torch.is_grad_enabled()):
            return F.linear(x2, self.weight, self.bias)
        if self.kernel == "gemv":
            return gemv.linear(x2, self.weight, None, self.bias)
        weight = self.weight  # loaded under torch.inference_mode: an inference tensor, no version (as _float32)
        key = (weight.data_ptr(), 0 if weight.is_inference() else weight._version)
        packed = self.__dict__.get("_packed")
        if packed is None or packed[0] != key:
            packed = self.__dict__["_packed"] = (key, _pack(weight))
        return _onednn(x2, packed[1], self.bias)


class _Converted:
    """A layer whose weights were converted for inference (buffers, not Parameters): training it is refused."""

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(
                "this model was converted to bfloat16/int8/int4 for inference; load it in float32 to train"
            )
        return super().train(False)


class BF16Linear(_Converted, InferenceLinear):
    """A linear layer in bfloat16 (inference only): ``weight`` and ``bias`` are bfloat16 buffers.

    ``onednn``: the weight is kept only in oneDNN's packed layout (an opaque tensor); ``mkl`` and
    ``gemv``: plain.
    """

    def __init__(self, linear: nn.Linear, kernel: str = "mkl"):
        super().__init__(linear, kernel)
        weight = linear.weight.detach().to(torch.bfloat16)
        if kernel == "onednn":
            weight = _pack(weight)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        if self.kernel == "onednn":
            return _onednn(x2, self.weight, self.bias)
        if self.kernel == "gemv" and x2.is_cpu:
            return gemv.linear(x2, self.weight, None, self._float32("bias"))
        return F.linear(x2, self.weight, self.bias)


class Int8Linear(_Converted, InferenceLinear):
    """Weight-only int8 (inference only): ``weight`` int8 ``(out, in)``, ``scale`` one bfloat16 per output channel.

    Symmetric per-channel quantization: ``w ~= weight * scale[:, None]`` with
    ``scale = max|w_row| / 127``, so ``x @ w.T = (x @ weight.T) * scale``. Activations are
    bfloat16. ``int8pack``: ``torch._weight_int8pack_mm`` (a CPU matrix-vector kernel, fast with
    bfloat16 inputs; it needs the inner size to be a multiple of 16); ``dequant``: the weight is
    dequantized to bfloat16 for each product; ``gemv``: ours, summed in float32, rounded once.
    """

    def __init__(self, linear: nn.Linear, kernel: str = "dequant"):
        if kernel == "int8pack" and linear.in_features % 16:
            kernel = "dequant"  # the kernel reads the inner dimension 16 values at a time (other sizes crash it)
        super().__init__(linear, kernel)
        w = linear.weight.detach().float()
        # The kernel takes bfloat16 scales. Rounding a scale up (by more than bfloat16's
        # half step, 2^-9) before the weights are divided by it keeps every |q| <= 127
        # with no clipping, and the dequantized weights within half a step of the originals.
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127 * (1 + 2**-8)).to(torch.bfloat16)
        q = (w / scale.float()[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        if self.kernel == "gemv" and x2.is_cpu:
            return gemv.linear(x2, self.weight, self._float32("scale"), self._float32("bias"))
        if self.kernel == "int8pack" and x2.is_cpu:
            y = torch._weight_int8pack_mm(x2.contiguous(), self.weight, self.scale)
        else:
            y = F.linear(x2, self.weight.to(x2.dtype)) * self.scale
        return y if self.bias is None else y + self.bias


class Int4Linear(_Converted, InferenceLinear):
    """Weight-only int4 (inference only), llama.cpp's q4_0: ``weight`` ``(out, in / 2)`` bytes of 4-bit values
    and ``scale`` ``(out, in / 32)`` float32, one per block of 32 inputs (``gemv.pack_int4``, q4_0's very
    values). ``gemv``: activations rounded to int8 per block of 32 (q8_0), blocks summed in integers;
    ``dequant``: the weight unpacked for each product (slow: where ours is not built)."""

    def __init__(self, linear: nn.Linear, kernel: str = "gemv"):
        super().__init__(linear, kernel)
        weight, scale = gemv.pack_int4(linear.weight)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))

    def product(self, x2: torch.Tensor) -> torch.Tensor:
        if self.kernel == "gemv" and x2.is_cpu:
            return gemv.linear(x2, self.weight, self.scale, self._float32("bias"))
        y = F.linear(x2, gemv.unpack_int4(self.weight, self.scale).to(x2.dtype))
        return y if self.bias is None else y + self.bias


class CenteredHead(_Converted, nn.Module):
    """The output head in bfloat16 or int8 (``fmt``; inference only), returning float32 logits.

    GPT-2's logits share a large per-position offset (often around -100 with
    OpenAI's weights), and bfloat16 keeps 8 significant bits: rounded at that size,
    logits would be off by up to 0.25. The head's rows are therefore centered (their mean
    row subtracted) before they are converted (``BF16Linear`` or ``Int8Linear``), so the
    product holds only the small differences between tokens, and the offset ``x . mean_row``
    is added back in float32. Same cost as a plain head of that format. The head is the
    largest layer (a third of GPT-2 small's weights): int8 halves what a token reads there.
    """

    def __init__(self, head: nn.Linear, kernel: str = "mkl", fmt: str = "bfloat16"):
        super().__init__()
        w = head.weight.detach().float()
        mean_row = w.mean(dim=0)
        centered = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        centered.weight = nn.Parameter(w - mean_row, requires_grad=False)
        self.fmt = fmt
        self.linear = LAYERS[fmt](centered, kernel)
        self.register_buffer("mean_row", mean_row)  # float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not ``x.float() @ self.mean_row``: that matrix-vector product's sums round differently
        # from 4 rows up, and a row must get the same bits whatever shares its batch.
        offset = (x.float() * self.mean_row).sum(-1)  # (B, T)
        return self.linear(x).float() + offset.unsqueeze(-1)


LAYERS = {"float32": Float32Linear, "bfloat16": BF16Linear, "int8": Int8Linear, "int4": Int4Linear}
ACTIVATIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.bfloat16, "int4": torch.bfloat16}


# --- choosing a kernel by measurement --------------------------------------------------------------


def _machine_key() -> str:
    cpu = (torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}).get("cpu_name", "cpu")
    return f"{cpu}|torch {torch.__version__}|{torch.get_num_threads()} threads{gemv.build_tag()}"


def candidates(fmt: str) -> tuple[str, ...]:
    """The kernels ``fmt`` can use here (oneDNN's only where it packs that dtype; ours where it was built)."""
    usable = {"onednn": lambda: onednn_available(ACTIVATIONS[fmt]), "gemv": gemv.available}
    found = tuple(n for n in KERNELS[fmt] if n != FALLBACKS.get(fmt) and usable.get(n, lambda: True)())
    return found or (FALLBACKS[fmt],)


PROBE_ROWS = 32
PROBE_BATCHES = (2, 3, 5, 8, 16)
LARGE = 8 << 20  # weights from which 16 probe rows suffice (a row shows a difference in as many outputs)


def _probe(layer: InferenceLinear, dtype: torch.dtype) -> tuple[bool, bool]:
    """(exact, lone row differs): whether each row gets the same bits in batches of 2 to 32 rows, and alone.

    A kernel may multiply one row with another routine than several rows (oneDNN here does at
    3072 inputs), whose sums round differently: such a layer computes a lone row as two (about 4%
    slower decoding at one row). A kernel whose rows differ between batch sizes from two rows up
    cannot keep a batched request's tokens equal to its solo ones, and is not chosen. The routine
    depends on the shapes, the format and the threads, not on the values: probe rows of many
    magnitudes, every one of them alone and in every batch size, show it (in bfloat16 the
    rounding of the output hides a difference most of the time, so one row is not enough).
    """
    g = torch.Generator().manual_seed(0)
    n_in = layer.in_features
    rows = PROBE_ROWS if n_in * layer.out_features < LARGE else PROBE_ROWS // 2  # the head: 16
    x = (torch.randn(rows, n_in, generator=g) * torch.exp(2 * torch.randn(rows, n_in, generator=g))).to(dtype)
    with torch.inference_mode():
        together = layer.product(x)

        def same(product, n: int) -> bool:
            return all(torch.equal(product(x[i : i + n]), together[i : i + n]) for i in range(0, rows - n + 1, n))

        exact = all(same(layer.product, n) for n in PROBE_BATCHES)
        lone = not same(layer.product, 1)
        if lone:  # computed as two rows, a lone row must get its bits from a batch
            exact = exact and same(functools.partial(feed_rows, layer.product, rows="lone as two"), 1)
    return exact, lone


def _fastest(calls: dict[str, Callable[[], object]], budget_s: float) -> dict[str, float]:
    """The fastest seconds of each of ``calls``, timed in turns (A B C A B C ...; at least 5 turns, 3 when a
    turn takes over 20 ms, then until ``budget_s``). In turns, another process on the machine slows every
    candidate alike, and the minimum keeps the turns it did not slow."""
    best = dict.fromkeys(calls, math.inf)
    with torch.inference_mode():
        start = time.perf_counter()
        for call in calls.values():
            call()  # warm-up: packing, first-call allocations
        least = 3 if time.perf_counter() - start > 0.02 else 5
        start, turns = time.perf_counter(), 0
        while turns < least or (turns < 50 and time.perf_counter() - start < budget_s):
            for name, call in calls.items():
                t0 = time.perf_counter()
                call()
                best[name] = min(best[name], time.perf_counter() - t0)
            turns += 1
    return best


def _sample_linear(in_features: int, out_features: int) -> nn.Linear:
    """A layer of this shape with seeded weights of GPT-2's scale, to probe and time kernels on."""
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(1)) * 0.02)
    return linear


def _exact_ways(layer: InferenceLinear, dtype: torch.dtype) -> list[str]:
    """The ways of feeding ``layer`` rows (``ROWS``) that keep a row's bits: one by one always; all at once
    where the probe finds it exact, a lone row as two where only a lone row differs."""
    exact, lone = _probe(layer, dtype)
    return ["one by one"] + (["lone as two" if lone else "together"] if exact else [])


@functools.lru_cache(maxsize=None)
def _forced_rows(fmt: str, in_features: int, out_features: int, kernel: str) -> str:
    """How a forced kernel is fed rows: the fastest-in-general exact way (probed once per shape, not per layer)."""
    return _exact_ways(LAYERS[fmt](_sample_linear(in_features, out_features), kernel), ACTIVATIONS[fmt])[-1]


def measure(fmt: str, in_features: int, out_features: int, budget_s: float = 0.05, head: bool = False) -> dict:
    """Every candidate of ``fmt`` on an ``(out, in)`` layer, each way of feeding it rows that keeps a row's
    bits (``ROWS``, ``_probe``): seconds at 1, 8 and 64 rows (the ``head``: 1 and 8).

    The choice: the least ``t(1) + t(8) / 8 + t(64) / 100``: a row's time decoding alone and among 8
    visitors weigh the same, and a 64-token prefill happens once for about 100 decoded tokens (the head
    computes a prefill's last row only).
    Each call reads another copy of the layer, ``COLD_BYTES`` of them in all, as decoding reads each
    layer's weights once a token: from memory, not from a core's caches (a kernel that prefetches
    well and one that does not measure the same on a layer the caches hold).
    Returns ``{"kernel", "rows", "seconds": {"<kernel>, <rows>": [t1, t8, t64]}, "load"}`` (``load``: the
    machine's load per core when measured; ``choose_kernel`` measures a choice made on a busy machine
    again).
    """
    load = _load_per_core()
    dtype = ACTIVATIONS[fmt]
    linear = _sample_linear(in_features, out_features)
    copies = min(MAX_COPIES, math.ceil(COLD_BYTES / (in_features * out_features * WEIGHT_BYTES[fmt])))
    x = torch.randn(64, in_features, generator=torch.Generator().manual_seed(2)).to(dtype)
    ways: dict[str, tuple[list[InferenceLinear], str]] = {}
    for name in candidates(fmt):
        # float32 layers share the nn.Linear's weight: each copy its own; the others convert it anew
        layers = [LAYERS[fmt](copy.deepcopy(linear) if fmt == "float32" else linear, name) for _ in range(copies)]
        for rows in _exact_ways(layers[0], dtype):
            ways[f"{name}, {rows}"] = (layers, rows)

    def call(layers: list[InferenceLinear], rows: str, n: int) -> Callable[[], object]:
        turn = itertools.cycle(layers)
        return lambda: feed_rows(next(turn).product, x[:n], rows)

    seconds = {way: [] for way in ways}
    for n in (1, 8) if head else (1, 8, 64):
        batched = {w: lr for w, lr in ways.items() if n == 1 or lr[1] != "one by one"}
        timed = _fastest({w: call(*lr, n) for w, lr in batched.items()}, budget_s)
        for way in ways:  # one by one: n lone rows
            seconds[way].append(timed[way] if way in timed else n * seconds[way][0])
    score = {way: sum(t / w for t, w in zip(times, (1, 8, 100))) for way, times in seconds.items()}
    best = min(score, key=score.get)
    kernel, rows = best.split(", ")
    return {"kernel": kernel, "rows": rows, "seconds": seconds, "load": load}


COLD_BYTES = 64 << 20  # weights read in turn while timing a kernel: more than a core's caches hold
MAX_COPIES = 64  # small layers: enough to leave a core's own caches, few enough to build quickly
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1, "int4": 0.5}


def _load_per_core() -> float:
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average here
        return 0.0


BUSY = 0.5  # load per core above which a measurement is taken again later, when the machine is quieter


_CHOICES: dict[str, dict] = {}
_MEASURED: set[str] = set()  # the choices this process measured itself


def check_kernel(fmt: str, kernel: str | None, option: str = "--kernel") -> str | None:
    """``kernel`` (or ``GPT2_SCRATCH_KERNEL``) when it names one of ``fmt``'s kernels; None: measure. One-line errors."""
    if kernel is None:
        kernel, option = os.environ.get(KERNEL_ENV, "").strip() or None, KERNEL_ENV
    if kernel is not None and kernel not in KERNELS[fmt]:
        raise ValueError(f"{option}={kernel!r} is not a {fmt} kernel ({', '.join(KERNELS[fmt])})")
    if kernel is not None and kernel not in (*candidates(fmt), FALLBACKS.get(fmt)):
        why = f" ({gemv.unavailable_reason()})" if kernel == "gemv" else ""
        raise ValueError(f"{option}={kernel}: that kernel is not available on this CPU{why}")
    return kernel


def choose_kernel(
    fmt: str, in_features: int, out_features: int, kernel: str | None = None, head: bool = False
) -> tuple[str, str]:
    """(kernel, how rows are fed: one of ``ROWS``) for an ``(out, in)`` layer in ``fmt`` (the model's
    ``head`` or not: ``measure``): measured once per machine and cached.

    ``kernel`` (else ``GPT2_SCRATCH_KERNEL``) forces one; how it is fed rows is still probed (all at
    once when exact, a lone row as two where only it differs, else one by one).
    """
    forced = check_kernel(fmt, kernel)
    # The candidates are part of the key: a kernel added (or no longer built here) is a new measurement.
    key = f"{_machine_key()}|{fmt}|{in_features}x{out_features}{'|head' * head}|{'/'.join(candidates(fmt))}"
    if forced:
        return forced, _forced_rows(fmt, in_features, out_features, forced)
    path = cache_folder() / "kernels.json"
    if not _CHOICES:
        try:
            _CHOICES.update(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass
    cached = _CHOICES.get(key)
    stale = cached is None or cached.get("rows") not in ROWS  # none yet, or a cache of an earlier version
    # Measured by an earlier process on a busy machine: again, now that it is quieter. Never twice in one
    # process: every model it loads computes with the same kernels (a row's bits alone and batched).
    busy = cached is not None and key not in _MEASURED and cached.get("load", 0) > BUSY
    if stale or (busy and _load_per_core() < cached["load"]):
        _CHOICES[key] = measure(fmt, in_features, out_features, head=head)
        _MEASURED.add(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, _CHOICES)
        except OSError:  # a read-only home: measure again next time
            pass
    choice = _CHOICES[key]
    return choice["kernel"], choice["rows"]
