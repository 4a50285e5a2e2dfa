"""Shared by the benchmarks: the shared data's path, one set of random GPT-2 weights in both transformers
and ours, and RSS readings. Run every benchmark from the repository root as a module:
``python -m benchmarks.bench_decode`` (so ``gpt2_scratch`` imports without path hacks)."""

from __future__ import annotations

import tempfile
from pathlib import Path

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
