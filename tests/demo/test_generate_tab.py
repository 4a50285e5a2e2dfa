"""The generation tabs' wiring: generation under ``spaces.GPU`` where the package exists."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

# Gradio's own queue code trips pandas deprecation warnings; they are not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")


def test_generation_runs_under_spaces_gpu_when_available(monkeypatch):
    import types

    from gpt2_scratch.demo.generate.tab import _on_gpu

    def fn():
        return "answer"

    assert _on_gpu(fn) is fn  # no spaces package here
    wrapped = []
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=lambda f: wrapped.append(f) or "gpu"))
    assert _on_gpu(fn) == "gpu" and wrapped == [fn]
