"""Shared by the benchmarks: one set of random GPT-2 weights in both transformers and ours, and RSS readings."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2_scratch.inference import load_model


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
