"""The run folder's schema: the files the app needs and the files downloaded from a Hub repo."""

from __future__ import annotations

import fnmatch
import json

from gpt2_scratch.runs import APP_FILES, HUB_RUN_FILES, RunInfo, hub_run_files


def test_hub_downloads_the_files_of_both_layouts():
    """A run folder's final/, or an export's model at the repo root (issue 12's publish.py)."""
    assert set(APP_FILES) <= set(HUB_RUN_FILES) and "final/*" in HUB_RUN_FILES
    assert not any(
        fnmatch.fnmatch("train_state/model.safetensors", p) or fnmatch.fnmatch("best/config.json", p)
        for p in HUB_RUN_FILES
    )


def test_a_lora_export_is_downloaded_without_its_merged_weights(tmp_path):
    cfg = tmp_path / "config.json"
    assert hub_run_files(cfg) == HUB_RUN_FILES  # no root config.json: a run folder pushed as it is
    cfg.write_text(json.dumps({"model_type": "gpt2", "gpt2_scratch": {"format_version": 1}}))
    assert hub_run_files(cfg) == HUB_RUN_FILES  # a full run's export: its weights are the model
    cfg.write_text(json.dumps({"model_type": "gpt2", "gpt2_scratch": {"adapter": {"method": "lora", "rank": 8}}}))
    files = hub_run_files(cfg)
    assert (
        "model.safetensors" not in files
        and "adapter/*" in files
        and set(files) == set(HUB_RUN_FILES) - {"model.safetensors"}
    )


def test_options_leave_out_what_is_no_option_of_the_model():
    training = {"base": "gpt2", "prompt_style": "alpaca", "dataset": "d.json", "lr": 1e-4}
    training |= {"name": "r", "out_dir": "runs", "resume": None, "device": "cuda:1", "epochs": 2}
    info = RunInfo(name="r", base_model="gpt2", prompt_style="alpaca", training=training)
    assert info.options() == {"lr": 1e-4, "epochs": 2}
