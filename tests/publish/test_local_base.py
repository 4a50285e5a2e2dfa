"""Publishing a run trained on a local base: the dry run warns, the card and adapter_config.json name no
local path, the card links a Hub base in its metadata; a Space downloads the merged weights of such a LoRA export."""

from __future__ import annotations

import json

import pytest

from gpt2_scratch.checkpoint import save_checkpoint
from gpt2_scratch.inference import load_model
from gpt2_scratch.publish.hub_upload import notes, prepare_publish
from gpt2_scratch.publish.model_card import model_card
from gpt2_scratch.runs import HUB_RUN_FILES, RunInfo, hub_run_files
from tests.fixtures.lora import write_lora_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """A finished LoRA run whose base is the local folder ``.../models/gpt2-small``."""
    tmp = tmp_path_factory.mktemp("local-base")
    base = tmp / "models" / "gpt2-small"
    save_checkpoint(base, load_model("random:tiny")[0], prompt_style="alpaca")
    return write_lora_run(tmp / "runs" / "lora-run", base=str(base)), base


def test_the_dry_run_warns_and_the_card_and_adapter_config_name_no_local_path(local_run, hub):
    run, base = local_run
    plan = prepare_publish(run.root, "me/lora", dry_run=True)
    try:
        [warning] = [line for line in notes(plan) if line.startswith("warning: the base model")]
        assert warning.startswith(f"warning: the base model {base} is a local path: the card names it only as")
        assert "adapter/adapter_config.json names no base" in warning and "\n" not in warning
        card = (plan.export.folder / "README.md").read_text()
        assert str(base) not in card and str(base.parent) not in card
        assert "gpt2-small (a local model)" in card and "\nbase_model:" not in card.split("\n---\n")[0]
        adapter_config = json.loads((plan.export.folder / "adapter" / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] is None
    finally:
        plan.discard()
    assert not (run.root / "export").exists()


def test_a_hub_base_is_in_the_card_metadata():
    from gpt2_scratch.config import GPTConfig

    run = RunInfo(name="r", base_model="gpt2", prompt_style="alpaca", status="finished")
    card = model_card(
        run,
        GPTConfig.from_preset("tiny"),
        None,
        repo_id="me/r",
        license="mit",
        num_params=1,
        has_loss_plot=False,
        prompt_style="alpaca",
    )
    assert "\nbase_model: openai-community/gpt2\n" in card.split("\n---\n")[0]


def test_a_space_downloads_the_merged_weights_when_the_lora_base_is_not_there(tmp_path):
    config = tmp_path / "config.json"
    for base, merged in (("/nowhere/models/gpt2-small", True), ("gpt2", False), ("random:tiny", False)):
        config.write_text(json.dumps({"gpt2_scratch": {"base_model": base, "adapter": {"base_model": base}}}))
        assert ("model.safetensors" in hub_run_files(config)) == merged, base
    config.write_text(json.dumps({"gpt2_scratch": {"base_model": "/nowhere"}}))  # not LoRA: everything
    assert hub_run_files(config) == HUB_RUN_FILES
