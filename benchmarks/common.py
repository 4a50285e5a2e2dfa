"""Shared by the benchmarks: the shared data's path, one set of random GPT-2 weights in both transformers
and ours, RSS readings, the machine's description (CPU, ISA, torch, read bandwidth) and interleaved
rounds (A B A B ...) summarised as a median with its min-max. Run every benchmark from the repository
root as a module: ``python -m benchmarks.bench_decode`` (so ``gpt2_scratch`` imports without path hacks)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from gpt2_scratch.inference import load_model

ROOT = Path(__file__).resolve().parents[1]
# The real data, beside the project checkout (../shared/data/): see its README.md.
SHARED_DATA = ROOT.parent / "shared" / "data"
INSTRUCTION_DATA = SHARED_DATA / "instruction-data.json"
PREFERENCE_DATA = SHARED_DATA / "instruction-data-with-preference.json"


def twin_models(seed: int = 0, **hf_config):
    """(transformers ``GPT2LMHeadModel`` with SDPA attention, our ``GPT``) holding identical random weights.

    The transformers model is saved with ``save_pretrained`` and loaded into ours
    through our public loader, so both run exactly the same numbers.
    ``hf_config`` overrides ``GPT2Config`` (default: the 124M shape).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel._from_config(GPT2Config(**hf_config), attn_implementation="sdpa").eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours, _ = load_model(d)
    return hf, ours


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(peak RSS, current RSS) of process ``pid`` in MB, from Linux's ``/proc/<pid>/status``.

    (``resource``'s ``ru_maxrss`` would not do: Linux keeps it across exec, so a
    worker would report its parent's peak.)
    """
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def read_bandwidth_gbs(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s: the best time to sum a ``n_bytes`` float32 tensor (512 MB)."""
    x = torch.ones(n_bytes // 4)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return n_bytes / best / 1e9


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (torch's name for it elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return str(torch.cpu.get_capabilities().get("cpu_name", "unknown CPU"))


def machine_line(threads: int | None = None) -> str:
    """One line saying where a benchmark ran: CPU, the ISA that matters here, torch, threads, read bandwidth."""
    caps = torch.cpu.get_capabilities()
    isa = [name for name in ("avx2", "avx512_f", "avx512_bf16", "amx_bf16") if caps.get(name)]
    return (
        f"CPU {cpu_model()} ({caps.get('num_physical_cores', '?')} cores; ISA {' '.join(isa) or 'baseline'}; "
        f"torch sees {torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
        f"{threads or torch.get_num_threads()} threads, read bandwidth {read_bandwidth_gbs():.1f} GB/s"
    )


def interleaved(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each side's measurements, the sides run in turn ``rounds`` times (A B A B ...).

    Each callable measures once and returns its figure (e.g. tokens/s). On a
    shared machine a slow spell then hits every side, and the ratio of two
    sides within one round is steadier than either figure alone.
    """
    results: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, measure in sides.items():
            results[name].append(measure())
    return results


def ratio_summary(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios ``a[i] / b[i]``."""
    ratios = [x / y for x, y in zip(a, b)]
    return statistics.median(ratios), min(ratios), max(ratios)


def spread(values: Sequence[float]) -> str:
    """``median (min-max)`` of a side's rounds, for a table."""
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def ratio_text(a: Sequence[float], b: Sequence[float]) -> str:
    """``0.83x (0.79-0.88)``: the median per-round ratio with its min-max."""
    median, low, high = ratio_summary(a, b)
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"
