"""The run folder's schema: the files the app needs and the files downloaded from a Hub repo."""

from __future__ import annotations

import fnmatch

from gpt2_scratch.runs import APP_FILES, HUB_RUN_FILES


def test_hub_downloads_the_files_of_both_layouts():
    """A run folder's final/, or an export's model at the repo root (issue 12's publish.py)."""
    assert set(APP_FILES) <= set(HUB_RUN_FILES) and "final/*" in HUB_RUN_FILES
    assert not any(
        fnmatch.fnmatch("train_state/model.safetensors", p) or fnmatch.fnmatch("best/config.json", p)
        for p in HUB_RUN_FILES
    )
