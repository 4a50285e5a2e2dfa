"""Our C matrix-vector kernel (``gemv.c``): built once per CPU with the C compiler at hand, cached, called through ctypes.

Entry points: ``available()`` (builds or loads it on first use; ``unavailable_reason()`` says why not) and
``linear(x2, weight, scale, bias)``; ``build_library`` and ``bind`` build and load any version of the source
(``benchmarks/bench_gemv.py`` compares two). ``kernels`` offers it as the ``gemv`` candidate of every format,
chosen where it measures fastest. The library is built with ``$CC`` (default ``cc``) ``-O3 -march=native
-fopenmp`` into ``<cache folder>/gemv/``, named by a hash of the source, the compiler, the flags and the
CPU's features, so another CPU or an edited source builds its own. Its OpenMP runtime is the one torch
has loaded (same soname, ``libgomp.so.1``), so it shares torch's threads; ctypes lets go of the GIL
during a call. Invariant: as ``gemv.c`` says, a row's result does not depend on the other rows.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

from gpt2_scratch.files import atomic_write_bytes, cache_folder

SOURCE = Path(__file__).with_name("gemv.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11")
COMPILER_ENV = "CC"
_FUNCTIONS = {
    torch.float32: "gemv_float32",
    torch.bfloat16: "gemv_bfloat16",
    torch.int8: "gemv_int8",
    torch.uint8: "gemv_int4",  # two 4-bit weights a byte (pack_int4)
}
_ARGS = (
    ctypes.c_void_p,  # x (M, K)
    ctypes.c_int,  # x is bfloat16
    ctypes.c_void_p,  # w (N, K)
    ctypes.c_void_p,  # scale (N,) float32 or NULL
    ctypes.c_void_p,  # bias (N,) float32 or NULL
    ctypes.c_void_p,  # y (M, N)
    ctypes.c_int,  # y is bfloat16
    ctypes.c_int64,  # M
    ctypes.c_int64,  # K
    ctypes.c_int64,  # N
    ctypes.c_int,  # threads
)
_reason: list[str] = []  # why the kernel is unavailable, once known
_built: list[str] = []  # the loaded library's id (the hash in its file name), once loaded


def _cpu_features() -> str:
    """The CPU's feature flags (what ``-march=native`` compiles for); the machine name where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() + " " + platform.processor()


def build_library(folder: Path, source_file: Path | None = None) -> Path:
    """The library of ``source_file`` (default ``SOURCE``) for this CPU, compiled now if ``folder`` has none.
    Raises RuntimeError with one line."""
    source_file = source_file or SOURCE
    compiler = os.environ.get(COMPILER_ENV) or "cc"
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"no C compiler ({compiler}: {e.__class__.__name__})") from e
    source = source_file.read_bytes()
    key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(FLAGS).encode(), _cpu_features().encode()]))
    path = folder / f"gemv-{key.hexdigest()[:16]}.so"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f".build-{os.getpid()}.so"
    try:
        done = subprocess.run(
            [compiler, *FLAGS, str(source_file), "-o", str(scratch)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise RuntimeError(f"{compiler} could not build gemv.c ({first})")
        atomic_write_bytes(path, scratch.read_bytes())  # a concurrent build of the same key writes the same bytes
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{compiler} could not build gemv.c ({e.__class__.__name__}: {e})") from e
    finally:
        scratch.unlink(missing_ok=True)
    return path


@functools.lru_cache(maxsize=1)
def _functions() -> dict[torch.dtype, ctypes._CFuncPtr] | None:
    """The kernel's function for each weight dtype, or None where it cannot be built or loaded."""
    try:
        path = build_library(cache_folder() / "gemv")
        lib = ctypes.CDLL(str(path))
    except (RuntimeError, OSError) as e:
        _reason.append(str(e).splitlines()[0])
        return None
    _built.append(path.stem.removeprefix("gemv-"))
    return bind(lib)


def bind(lib: ctypes.CDLL) -> dict[torch.dtype, ctypes._CFuncPtr]:
    """The library's function for each weight dtype, with its argument types."""
    functions = {dtype: getattr(lib, name) for dtype, name in _FUNCTIONS.items()}
    for function in functions.values():
        function.argtypes, function.restype = _ARGS, ctypes.c_int
    return functions


def available() -> bool:
    """Whether the kernel runs here (built now, or loaded from the cache). Only CPUs: the kernel is C."""
    return _functions() is not None


def build_tag() -> str:
    """``|gemv <id>``: the loaded kernel's id (a hash of its source, compiler, flags and CPU), '' where it is
    unavailable. Part of the kernel choices' cache key: a changed kernel is measured again."""
    return f"|gemv {_built[0]}" if available() else ""


def unavailable_reason() -> str:
    """Why ``available()`` is False, in one line ('' when it is available)."""
    return "" if available() else _reason[0]


def linear(
    x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``(x2 @ weight.T) * scale + bias`` in ``x2``'s dtype, summed in float32.

    ``x2`` ``(M, K)`` float32 or bfloat16; ``weight`` ``(N, K)`` float32, bfloat16 or int8, contiguous;
    ``scale`` and ``bias`` ``(N,)`` float32 or None. Or int4: ``weight`` and ``scale`` from ``pack_int4``.
    CPU tensors only.
    """
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    (m, k), n = x2.shape, weight.shape[0]
    if weight.shape[1] * (2 if weight.dtype == torch.uint8 else 1) != k or not weight.is_contiguous():
        raise ValueError(f"gemv: weight {tuple(weight.shape)} does not fit rows of {k} (or is not contiguous)")
    y = torch.empty(m, n, dtype=x2.dtype)
    if m == 0:  # no rows (e.g. no position to score): nothing to compute
        return y
    low = x2.dtype == torch.bfloat16
    status = _functions()[weight.dtype](
        x2.data_ptr(),
        low,
        weight.data_ptr(),
        None if scale is None else scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        low,
        m,
        k,
        n,
        torch.get_num_threads(),
    )
    if status == 2:
        raise ValueError(f"gemv: int4 needs rows of a multiple of 64 inputs, not {k}")
    if status:
        raise MemoryError(f"gemv: no memory to prepare {m}x{k} activations")
    return y


# --- int4: llama.cpp's q4_0 blocks, in the order gemv.c reads them ------------------------------------

INT4_BLOCK = 32  # inputs sharing one scale


def pack_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` ``(N, K)`` in 4 bits: (``(N, K / 2)`` uint8, scales ``(N, K / 32)`` float32); K a multiple of 64.

    Each block of 32 inputs is llama.cpp's q4_0 (``gguf.quants.Q4_0``, the same values): ``d`` is the
    block's value of largest magnitude over -8 (rounded to float16, as q4_0 stores it), ``q = trunc(w / d
    + 8.5)`` clipped to 0..15, and ``w ~= (q - 8) * d``. The bytes are in gemv.c's order: byte u of a
    block holds its input u (low 4 bits) and u + 16 (high), and the 16 bytes of two neighbouring blocks
    are interleaved 4 by 4, so that one vector lane multiplies one block.
    """
    n, k = weight.shape
    if k % (2 * INT4_BLOCK):
        raise ValueError(f"int4 needs layers of a multiple of {2 * INT4_BLOCK} inputs; this one has {k}")
    blocks = weight.detach().float().reshape(n, k // INT4_BLOCK, INT4_BLOCK)
    largest = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))  # signed
    d = largest / -8
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = (blocks * inverse + 8.5).trunc().clamp(0, 15).to(torch.uint8)  # (N, K / 32, 32)
    half = INT4_BLOCK // 2
    by = q[..., :half] | (q[..., half:] << 4)  # (N, K / 32, 16): byte u = inputs u and u + 16
    pairs = by.reshape(n, k // (2 * INT4_BLOCK), 2, 4, 4).permute(0, 1, 3, 2, 4)  # 4 bytes of A, 4 of B, ...
    return pairs.reshape(n, k // 2).contiguous(), d.squeeze(-1).half().float().contiguous()


def unpack_int4(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 weight ``(N, K)`` that ``pack_int4``'s output stands for: ``(q - 8) * d``."""
    n, k = packed.shape[0], packed.shape[1] * 2
    by = packed.reshape(n, k // (2 * INT4_BLOCK), 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(n, k // INT4_BLOCK, -1)
    q = torch.cat([by & 15, by >> 4], dim=-1).float()  # (N, K / 32, 32)
    return ((q - 8) * scales.unsqueeze(-1)).reshape(n, k)
