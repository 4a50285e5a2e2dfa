"""Checkpoint folders: round trip, atomic saves, clear errors for bad folders; the safetensors reader."""

import json

import pytest
import torch

from gpt2_scratch import GPT, GPTConfig
from gpt2_scratch.checkpoint import load_checkpoint, read_checkpoint_info, read_safetensors, save_checkpoint
from gpt2_scratch.files import MARKER
from gpt2_scratch.inference import load_model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny")).eval()


def test_round_trip_keeps_weights_config_style_and_metadata(tmp_path, model):
    info = save_checkpoint(tmp_path / "ck", model, prompt_style="alpaca", metadata={"base_model": "gpt2", "step": 3})
    loaded, info2 = load_checkpoint(tmp_path / "ck")
    assert info2.config == model.config
    assert info2.prompt_style == "alpaca"
    assert info2.metadata == {"base_model": "gpt2", "step": 3}
    assert info2.sha256 == info.sha256
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [MARKER, "config.json", "model.safetensors"]


def test_no_pickle_in_the_folder(tmp_path, model):
    # The weights file is safetensors, byte for byte: an 8-byte little-endian header length, a JSON header
    # naming every tensor with its dtype, shape and byte range, then the raw data and nothing else.
    save_checkpoint(tmp_path / "ck", model)
    data = (tmp_path / "ck" / "model.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__")
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert sorted(header) == sorted(expected)
    for name, entry in header.items():
        assert entry["dtype"] == "F32" and entry["shape"] == list(expected[name].shape), name
    assert max(e["data_offsets"][1] for e in header.values()) == len(data) - 8 - n
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [MARKER, "config.json", "model.safetensors"]


def test_overwrite_replaces_atomically_and_leaves_no_temp(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, metadata={"v": 1})
    with torch.no_grad():
        model.transformer.ln_f.bias.fill_(0.5)
    save_checkpoint(tmp_path / "ck", model, metadata={"v": 2})
    loaded, info = load_checkpoint(tmp_path / "ck")
    assert info.metadata == {"v": 2}
    assert torch.all(loaded.transformer.ln_f.bias == 0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, model, monkeypatch):
    save_checkpoint(tmp_path / "ck", model, metadata={"v": 1})
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ck", model, metadata={"v": 2})
    assert read_checkpoint_info(tmp_path / "ck").metadata == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_interrupted_swap_is_recovered(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model, metadata={"v": 1})
    (tmp_path / "ck").rename(tmp_path / ".ck.old")  # killed between the two renames
    assert load_checkpoint(tmp_path / "ck")[1].metadata == {"v": 1}


def test_truncated_weights_are_refused(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model)
    w = tmp_path / "ck" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ValueError, match="has 1000 bytes, config.json says .* \\(truncated or replaced\\?\\)"):
        load_checkpoint(tmp_path / "ck")


def test_replaced_weights_are_refused(tmp_path, model):
    save_checkpoint(tmp_path / "ck", model)
    w = tmp_path / "ck" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # same size, different content
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the sha256 recorded in config.json"):
        load_checkpoint(tmp_path / "ck")


def test_foreign_config_is_refused(tmp_path, hf_tiny):
    _, folder = hf_tiny  # a transformers folder: config.json without our format marker
    with pytest.raises(ValueError, match="is not a gpt2_scratch checkpoint config"):
        read_checkpoint_info(folder)
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder: no config.json"):
        read_checkpoint_info(tmp_path)


def test_unknown_prompt_style_is_refused_at_save(tmp_path, model):
    with pytest.raises(ValueError, match="unknown prompt style 'vicuna'"):
        save_checkpoint(tmp_path / "ck", model, prompt_style="vicuna")
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("model"), '"model" must be an object of GPTConfig fields, got missing or null'),
        (lambda m: m.pop("weights"), '"weights" must be an object with "bytes" and "sha256", got missing or null'),
        (lambda m: m.update(model=[1, 2]), '"model" must be an object of GPTConfig fields, got an array'),
        (lambda m: m["weights"].pop("sha256"), '"weights.sha256" must be a 64-character hex string'),
        (lambda m: m["weights"].update(bytes="12"), '"weights.bytes" must be a non-negative integer, got a string'),
        (lambda m: m.update(metadata=[]), '"metadata" must be an object, got an array'),
        (lambda m: m["model"].update(n_head=3), "n_embd \\(64\\) must be divisible by n_head \\(3\\)"),
        (lambda m: m["model"].update(depth=3), "unknown GPTConfig field\\(s\\): depth"),
        (lambda m: m.update(prompt_style="vicuna"), "unknown prompt style 'vicuna'"),
        (lambda m: m.update(prompt_style=["alpaca"]), "config.json: "),
    ],
)
def test_config_with_the_wrong_structure_is_one_line_error(tmp_path, model, change, message):
    save_checkpoint(tmp_path / "ck", model, prompt_style="alpaca")
    cfg = tmp_path / "ck" / "config.json"
    meta = json.loads(cfg.read_text())
    change(meta)
    cfg.write_text(json.dumps(meta))
    for load in (read_checkpoint_info, load_checkpoint, lambda f: load_model(str(f))):
        with pytest.raises(ValueError, match=message) as e:
            load(tmp_path / "ck")
        assert str(cfg) in str(e.value) and "\n" not in str(e.value)


def test_read_safetensors_equals_the_safetensors_package(tmp_path):
    # Our plain-read loader against the reference implementation, on every dtype a checkpoint may hold.
    from safetensors.torch import load_file, save_file

    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(4, 2).to(torch.bfloat16),
        "f16": torch.randn(7).half(),
        "i64": torch.arange(6).reshape(2, 3),
        "u8": torch.tensor([1, 2, 255], dtype=torch.uint8),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
    ours, reference = read_safetensors(tmp_path / "t.safetensors"), load_file(str(tmp_path / "t.safetensors"))
    assert ours.keys() == reference.keys()
    for k in reference:
        assert ours[k].dtype == reference[k].dtype and torch.equal(ours[k], reference[k]), k
    data = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-3])
    with pytest.raises(
        ValueError, match=r"cut\.safetensors is not a readable safetensors file .*does not fit the file"
    ):
        read_safetensors(tmp_path / "cut.safetensors")


def test_a_checkpoint_written_before_markers_is_replaced_and_a_foreign_folder_is_not(tmp_path, model):
    from gpt2_scratch.files import FolderRefused

    save_checkpoint(tmp_path / "ck", model)
    (tmp_path / "ck" / MARKER).unlink()  # as earlier versions wrote it
    save_checkpoint(tmp_path / "ck", model)
    assert (tmp_path / "ck" / MARKER).is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    with pytest.raises(FolderRefused, match="it holds files this project did not write"):
        save_checkpoint(tmp_path / "mine", model)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["config.json"]
