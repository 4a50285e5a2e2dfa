"""The exported model card: metadata, model index and text come from the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.publish.model_card import hub_base_model, hub_dataset
from gpt2_scratch.runs import RunPaths
from tests.fixtures.export import DATASET_URL, TRAINING, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunPaths:
    return make_run(tmp_path_factory.mktemp("export") / "tiny-run")


@pytest.fixture(scope="module")
def export(run, tmp_path_factory) -> Path:
    return export_run(run.root, tmp_path_factory.mktemp("out") / "export", repo_id="me/tiny-alpaca").folder


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# --------------------------------------------------------------------------- the model card


def test_model_card_metadata_and_model_index_come_from_the_run(export):
    from huggingface_hub import ModelCard

    card = (export / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "mit" and meta["pipeline_tag"] == "text-generation"
    assert meta["base_model"] == "openai-community/gpt2" and "gpt2" in meta["tags"]
    assert "datasets" not in meta  # a URL is no Hub dataset id
    [index] = meta["model-index"]
    assert index["name"] == "me/tiny-alpaca"
    metrics = {m["type"]: m["value"] for m in index["results"][0]["metrics"]}
    assert metrics == {"rougeL": 0.8375, "exact_match": 0.5, "perplexity": 3.49, "loss": 1.25}
    assert index["results"][0]["dataset"]["split"] == "test"
    parsed = ModelCard(card).data  # huggingface_hub reads it back
    assert {r.metric_type for r in parsed.eval_results} == set(metrics)


def test_model_card_text_covers_training_evaluation_curve_prompt_and_usage(export):
    card = (export / "README.md").read_text()
    for key, value in TRAINING.items():  # every training option, with its value
        assert f"| {key} | {json.dumps(value) if not isinstance(value, str) else value} |" in card, key
    assert f"| dataset source | {DATASET_URL} |" in card
    assert "| ROUGE-L F1 | 0.163 | 0.838 |" in card and "| Exact match | 0.0% | 50.0% |" in card
    assert "| Perplexity | 33.12 | 3.49 |" in card and "Judge" not in card  # no judge ran: no judge rows
    assert "![Training and validation loss against tokens seen](loss.png)" in card
    assert get_prompt_style("alpaca").format("{instruction}", "{input}") in card
    assert 'pipeline("text-generation", model="me/tiny-alpaca")' in card
    assert 'snapshot_download("me/tiny-alpaca"' in card and "load_model(" in card


def test_run_without_evaluation_exports_with_a_note_in_the_card(tmp_path):
    run = make_run(tmp_path / "no-eval", with_eval=False)
    result = export_run(run.root, tmp_path / "export", repo_id="me/no-eval")
    assert not result.has_eval and not (tmp_path / "export" / "eval").exists()
    card = (tmp_path / "export" / "README.md").read_text()
    assert "model-index" not in front_matter(card)
    assert "has not been evaluated yet" in card and "python evaluate.py --run runs/no-eval" in card


def test_base_model_and_dataset_ids_for_the_metadata():
    assert hub_base_model("gpt2-medium") == "openai-community/gpt2-medium"
    assert hub_base_model("someone/gpt2-finetune") == "someone/gpt2-finetune"
    assert hub_base_model("random:tiny") is None and hub_base_model("/models/gpt2") is None
    assert hub_base_model("weights.safetensors") is None
    assert hub_dataset("yahma/alpaca-cleaned") == "yahma/alpaca-cleaned"
    assert hub_dataset(DATASET_URL) is None and hub_dataset("data/train.json") is None
