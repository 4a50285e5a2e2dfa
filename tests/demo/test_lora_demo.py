"""The app on a LoRA run: one copy of the base weights serves the base, finetuned and side-by-side tabs;
the results browser compares the LoRA settings among the training options.

The run is ``fixtures.lora.write_lora_run`` (base ``random:tiny``, an adapter with noise).
"""

from __future__ import annotations

import fnmatch
import shutil

import pytest
import torch

from gpt2_scratch import lora
from gpt2_scratch.demo import DemoApp, discovery
from gpt2_scratch.demo.generate.backends import Batched
from gpt2_scratch.demo.results.compare import RunResults, compare, option_differences
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model
from gpt2_scratch.prompts import get_prompt_style
from gpt2_scratch.publish.export import export_run
from gpt2_scratch.runs import RunInfo, RunPaths
from gpt2_scratch.tokenizer import decode, encode
from tests.fixtures.lora import write_lora_run

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]
GREEDY = (12, 0.0, 0, 1.0, None)  # max new tokens, temperature, top-k, top-p, seed as the UI sends them
INSTRUCTION = "Name a primary color."


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_lora_run(tmp_path_factory.mktemp("lora-demo") / "lora-run")


def greedy(model, text: str, n: int = 12) -> str:
    return decode(generate(model, [encode(text)], SamplingSettings(max_new_tokens=n))[0])


def tensors(model) -> dict[int, torch.Tensor]:
    """``model``'s parameters and buffers by object identity (the dict keeps them alive, so ids stay unique).

    Not by ``data_ptr()``: where oneDNN packs bfloat16 weights (AVX512 CPUs), they are opaque
    mkldnn tensors with no storage to point at. Two models holding the same tensor objects share
    their memory on every CPU.
    """
    return {id(t): t for t in [*model.parameters(), *model.buffers()]}


def test_tensors_are_compared_by_identity_even_when_oneDNN_packs_them_opaquely():
    packed = torch.nn.Module()
    packed.register_buffer("weight", torch.randn(4, 4).to_mkldnn())  # no storage, as a packed weight
    with pytest.raises(RuntimeError, match="storage"):
        packed.weight.data_ptr()
    view = torch.nn.Module()
    view.register_buffer("weight", packed.weight)
    copy = torch.nn.Module()
    copy.register_buffer("weight", packed.weight.clone())
    assert tensors(view).keys() <= tensors(packed).keys() and not tensors(copy).keys() <= tensors(packed).keys()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_copy_of_the_base_serves_both_models(run, dtype):
    app = DemoApp.from_run(run, dtype=dtype)
    assert app.shared_base and "(LoRA adapter, rank 4)" in app.checkpoint_name
    base, finetuned = app.base.get(), app.finetuned.get()
    assert base is not finetuned and lora.has_adapters(finetuned) and not lora.has_adapters(base)
    prompt = get_prompt_style("alpaca").format(INSTRUCTION)
    alone_base, _ = load_model("random:tiny", dtype=dtype)
    # Every base tensor (packed or not) is one of the finetuned model's own: no second copy.
    shared = tensors(base)
    assert len(shared) == len(tensors(alone_base)) and shared.keys() <= tensors(finetuned).keys()
    assert list(app.generate_base(prompt, *GREEDY))[-1][0] == greedy(alone_base, prompt)
    answer = list(app.generate_finetuned(INSTRUCTION, "", *GREEDY))[-1][0]
    assert answer == greedy(load_model(str(run.final), dtype=dtype, merge=False)[0], prompt)
    if dtype == "float32":  # the merged checkpoint answers the same
        assert answer == greedy(load_model(str(run.final))[0], prompt)
    assert answer != greedy(alone_base, prompt)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_side_by_side_with_batching_is_one_batch_of_both_models(run, dtype, monkeypatch):
    import gpt2_scratch.generate.engine as serving

    batches = []
    forward = serving._forward_rows
    monkeypatch.setattr(serving, "_forward_rows", lambda m, rows: batches.append(len(rows)) or forward(m, rows))
    backend = Batched(max_rows=4, max_waiting=4)
    app = DemoApp.from_run(run, backend=backend, dtype=dtype)
    try:
        base_text, finetuned_text, status = list(app.generate_side_by_side(INSTRUCTION, "", *GREEDY))[-1]
        engines = [engine for _, engine in backend._engines.values()]
    finally:
        app.close()
    # One engine, the finetuned model's: the base rows ran in its batch with the adapter off.
    assert len(engines) == 1 and engines[0].model is app.finetuned.get()
    assert batches.count(2) >= 11  # both rows in (almost) every step: at most the first prefill apart
    prompt = get_prompt_style("alpaca").format(INSTRUCTION)
    assert base_text == greedy(load_model("random:tiny", dtype=dtype)[0], prompt)
    assert finetuned_text == greedy(load_model(str(run.final), merge=False, dtype=dtype)[0], prompt)
    assert base_text != finetuned_text and status.startswith("New tokens: base 12, finetuned 12")


def test_a_published_lora_run_is_served_from_its_base_and_adapter_without_the_merged_weights(
    run, tmp_path, monkeypatch
):
    repo = export_run(run.root, tmp_path / "repo", repo_id="me/tiny-lora").folder
    asked = []

    def snapshot_download(repo_id, *, allow_patterns, local_files_only=False):  # the Hub, from the export folder
        asked.append(list(allow_patterns))
        out = tmp_path / "snapshot"
        for f in repo.rglob("*"):
            rel = f.relative_to(repo).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, out / rel)
        return str(out)

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setattr(discovery, "require_hub", lambda what: None)
    snapshot = discovery.download_run("me/tiny-lora")  # what a Space does with GPT2_SCRATCH_HUB_REPO
    assert asked[0] == ["config.json"] and "adapter/*" in asked[1] and "model.safetensors" not in asked[1]
    assert not (snapshot.root / "model.safetensors").exists()  # the merged weights are not downloaded
    app = DemoApp.from_run(snapshot)
    assert app.shared_base and app.checkpoint_name == "lora-run (exported model) (LoRA adapter, rank 4)"
    base, finetuned = app.base.get(), app.finetuned.get()
    assert lora.has_adapters(finetuned) and tensors(base).keys() <= tensors(finetuned).keys()  # one copy of the base
    prompt = get_prompt_style("alpaca").format(INSTRUCTION)
    assert list(app.generate_base(prompt, *GREEDY))[-1][0] == greedy(load_model("random:tiny")[0], prompt)
    answer = list(app.generate_finetuned(INSTRUCTION, "", *GREEDY))[-1][0]
    assert answer == greedy(load_model(str(run.final), merge=False)[0], prompt)
    # Asked to merge, the folder without its root weights merges base + adapter/ instead.
    merged, info = load_model(str(snapshot.root))
    assert not lora.has_adapters(merged) and info.exported and greedy(merged, prompt) == answer


def test_another_base_is_not_shared(run):
    app = DemoApp.from_run(run, base="gpt2")  # --base overrides the run's base: two models, nothing loaded yet
    assert not app.shared_base and app.finetuned.merge and app.base.source == "gpt2"


def test_an_unreachable_base_says_so_in_both_tabs(tmp_path):
    import json

    gone = write_lora_run(tmp_path / "gone")
    meta = json.loads((gone.final / "config.json").read_text())
    meta["adapter"]["base_model"] = "random:tiny"  # the run says random:tiny; the adapter names another base
    meta["adapter"]["base_sha256"] = "0" * 64
    (gone.final / "config.json").write_text(json.dumps(meta))
    app = DemoApp.from_run(gone)
    for outputs in (list(app.generate_base("Hello", *GREEDY)), list(app.generate_finetuned("Hi", "", *GREEDY))):
        text, status = outputs[-1]
        assert text == "" and "is not the one this adapter was trained on" in status


def test_the_results_browser_compares_the_lora_settings():
    full = RunInfo(name="full", base_model="gpt2", prompt_style="alpaca", training={"lr": 5e-5, "lora_rank": 0})
    training = {"lr": 2e-4, "lora_rank": 8, "lora_alpha": None, "lora_targets": ["attn.c_attn"]}
    low = RunInfo(name="lora", base_model="gpt2", prompt_style="alpaca", training=training)
    diff = option_differences(compare([RunResults("full", full), RunResults("lora", low)]))
    rows = {row[0]: row[1:] for row in diff.frame.values.tolist()}
    assert rows["finetuning"] == ["full (every weight)", "LoRA rank 8, alpha 16"]
    assert rows["lora_rank"] == ["0", "8"] and rows["lora_targets"] == ["—", "['attn.c_attn']"]


def test_a_lora_export_with_a_missing_or_foreign_adapter_is_one_line_in_both_tabs(run, tmp_path):
    import safetensors.torch

    repo = export_run(run.root, tmp_path / "repo", repo_id="me/tiny-lora").folder
    (repo / "model.safetensors").unlink()  # as a Space downloads it
    weights = repo / "adapter" / "adapter_model.safetensors"
    tensors = safetensors.torch.load_file(str(weights))
    weights.unlink()
    app = DemoApp.from_run(RunPaths(repo))
    text, status = list(app.generate_finetuned(INSTRUCTION, "", *GREEDY))[-1]
    assert text == "" and "is missing adapter/adapter_model.safetensors" in status and "\n" not in status
    safetensors.torch.save_file({"base_model.model.lm_head.weight": next(iter(tensors.values()))}, str(weights))
    app = DemoApp.from_run(RunPaths(repo))
    text, status = list(app.generate_base("Hello", *GREEDY))[-1]
    assert text == "" and "not a LoRA tensor of PEFT's layout" in status and "\n" not in status
