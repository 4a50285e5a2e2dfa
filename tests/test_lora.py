"""The LoRA layer and its checkpoint: exact base at B = 0, merge, the adapter off, names, init, load_model.

A tiny base in the Hub layout (the ``hf_tiny`` fixture) or ``random:tiny``; adapters get seeded
noise on B so that they change the logits. Offline.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from gpt2_scratch import lora
from gpt2_scratch.checkpoint import (
    ADAPTER_FILE,
    AdapterInfo,
    load_checkpoint,
    read_adapter,
    read_checkpoint_info,
    read_safetensors,
    save_adapter_checkpoint,
)
from gpt2_scratch.files import MARKER
from gpt2_scratch.inference import load_model, model_dtype
from gpt2_scratch.kernels import BF16Linear, Float32Linear, Int4Linear, Int8Linear
from gpt2_scratch.loading import load_gpt

TOKENS = torch.tensor(
    [[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13], [40, 588, 257, 1110, 286, 11, 1, 2, 3, 4]]
)


def logits(model, x=TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def nudge(model, seed: int = 1, std: float = 0.05) -> None:
    """Seeded noise on every B (and A), as after some training: the adapter now changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * std)
            layer.lora_A.add_(torch.randn(layer.lora_A.shape, generator=g) * std)


@pytest.fixture
def base(hf_tiny):
    model, _ = load_model(str(hf_tiny[1]))
    return model


def adapted(source: str, config: lora.LoRAConfig | None = None, seed: int = 1):
    model, _ = load_gpt(source)  # the plain model, as training loads it
    lora.inject(model, config or lora.LoRAConfig(rank=4), torch.Generator().manual_seed(0))
    nudge(model, seed)
    return model.eval()


def test_fresh_adapter_gives_exactly_the_base_logits(base, hf_tiny):
    expected = logits(base)
    lora.inject(base, lora.LoRAConfig(rank=8, dropout=0.1))
    base.eval()
    assert torch.equal(logits(base), expected)  # B = 0: bit for bit
    base.train()  # dropout on the adapter input changes nothing either while B = 0
    torch.manual_seed(0)
    assert torch.equal(logits(base), expected)


def test_names_shapes_and_init(base):
    lora.inject(base, lora.LoRAConfig(rank=4, alpha=12), torch.Generator().manual_seed(0))
    state = base.state_dict()
    # GPT-2's names are kept: the base weight where it was, the adapter beside it.
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (192, 64)
    assert state["transformer.h.0.attn.c_attn.lora_A"].shape == (4, 64)  # (r, in)
    assert state["transformer.h.0.attn.c_attn.lora_B"].shape == (192, 4)  # (out, r)
    assert state["transformer.h.1.mlp.c_proj.lora_A"].shape == (4, 256)
    layer = base.transformer.h[0].mlp.c_fc
    assert isinstance(layer, lora.LoRALinear) and layer.scaling == 3.0
    # A: Kaiming uniform with a = sqrt(5), as nn.Linear, PEFT and litgpt: U(-1/sqrt(in), 1/sqrt(in)). B: zero.
    for _, lay in lora.lora_layers(base):
        bound = 1 / math.sqrt(lay.in_features)
        assert lay.lora_A.abs().max() <= bound and lay.lora_A.abs().max() > 0.9 * bound
        assert lay.lora_A.std() > 0.5 * bound / math.sqrt(3)
        assert torch.count_nonzero(lay.lora_B) == 0
    # Only the adapters train: 4 targets x 2 layers x r(in + out).
    trainable = {n for n, p in base.named_parameters() if p.requires_grad}
    assert trainable == {k for k in state if k.endswith(("lora_A", "lora_B"))}
    per_block = 4 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))
    assert lora.trainable_parameters(base) == 2 * per_block
    assert not base.transformer.wte.weight.requires_grad and base.lm_head.weight is base.transformer.wte.weight


def test_targets_subset_and_config_round_trip(base):
    config = lora.LoRAConfig(rank=2, targets=["mlp.c_proj", "attn.c_attn", "attn.c_attn"])
    assert config.targets == ("attn.c_attn", "mlp.c_proj") and config.alpha == 4
    assert lora.LoRAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    lora.inject(base, config)
    assert sorted({n.split(".", 3)[3] for n, _ in lora.lora_layers(base)}) == ["attn.c_attn", "mlp.c_proj"]
    assert type(base.transformer.h[0].attn.c_proj) is not lora.LoRALinear
    with pytest.raises(ValueError, match="has adapters already"):
        lora.inject(base, config)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rank=0), "--lora-rank must be a positive integer, got 0"),
        (dict(rank=2.5), "--lora-rank must be a positive integer, got 2.5"),
        (dict(rank=True), "--lora-rank must be a positive integer"),
        (dict(rank=4, alpha=0), "--lora-alpha must be a positive number, got 0"),
        (dict(rank=4, alpha=-1.5), "--lora-alpha must be a positive number"),
        (dict(rank=4, alpha=float("inf")), "--lora-alpha must be a positive number"),
        (dict(rank=4, dropout=1.0), r"--lora-dropout must be in \[0, 1\)"),
        (dict(rank=4, targets=("attn.c_attn", "lm_head")), "unknown target 'lm_head'; choose among attn.c_attn"),
        (dict(rank=4, targets=()), "--lora-targets must name at least one"),
        (dict(rank=4, targets="attn.c_attn"), "--lora-targets must name at least one"),
    ],
)
def test_bad_configs_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        lora.LoRAConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_merged_and_unmerged_agree_and_merge_undoes(hf_tiny):
    model = adapted(str(hf_tiny[1]))
    base = logits(load_gpt(str(hf_tiny[1]))[0])  # plain, as the adapted model's base layers
    unmerged = logits(model)
    assert (unmerged - base).abs().max() > 1e-2  # the adapter matters
    lora.merge(model)
    assert all(layer.merged for _, layer in lora.lora_layers(model))
    torch.testing.assert_close(logits(model), unmerged, atol=1e-5, rtol=0)
    lora.unmerge(model)
    torch.testing.assert_close(logits(model), unmerged, atol=1e-5, rtol=0)
    plain = lora.merged_model(model)
    assert not lora.has_adapters(plain) and type(plain.transformer.h[1].mlp.c_fc) is nn.Linear
    assert all(p.requires_grad for p in plain.parameters())  # a plain, trainable model again
    torch.testing.assert_close(logits(plain), unmerged, atol=1e-5, rtol=0)


def test_adapters_off_is_exactly_the_base(hf_tiny):
    model = adapted(str(hf_tiny[1]))
    base = logits(load_gpt(str(hf_tiny[1]))[0])  # plain, as the adapted model's base layers
    with_adapter = logits(model)
    with lora.adapters_disabled(model) as same:
        assert same is model and torch.equal(logits(model), base)
    assert torch.equal(logits(model), with_adapter)  # switched back on
    view = lora.base_view(model)
    assert torch.equal(logits(view), base) and torch.equal(logits(model), with_adapter)
    # The view shares every base tensor and holds no adapter.
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in ptrs for p in view.parameters())
    assert set(view.state_dict()) == set(load_model(str(hf_tiny[1]))[0].state_dict())  # the base's names only
    lora.merge(model)
    with pytest.raises(ValueError, match="merged"):
        lora.base_view(model)
    with pytest.raises(ValueError, match="merged"), lora.adapters_disabled(model):
        pass


def test_the_forward_switches_the_adapter_per_token_exactly(hf_tiny):
    model = adapted(str(hf_tiny[1])).eval()
    base, with_adapter = logits(lora.base_view(model)), logits(model)
    assert lora.view_of(lora.base_view(model)) is model and lora.view_of(model) is None
    adapter = torch.zeros(TOKENS.shape, dtype=torch.bool)
    adapter[0] = True  # row 0 adapted, row 1 the base
    with torch.no_grad():
        mixed = model(TOKENS, adapter=adapter)
    assert torch.equal(mixed[0], with_adapter[0]) and torch.equal(mixed[1], base[1])
    assert torch.equal(logits(model), with_adapter)  # nothing stays switched
    with pytest.raises(ValueError, match="no adapters"):
        lora.base_view(load_model(str(hf_tiny[1]))[0])


def test_the_training_update_has_the_formulas_output_and_gradients_with_its_dropout():
    layer = lora.LoRALinear(nn.Linear(16, 24), lora.LoRAConfig(rank=4, dropout=0.25))
    with torch.no_grad():
        layer.lora_B.normal_(generator=torch.Generator().manual_seed(2))
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    g = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(5)
    out = layer.train()(x)
    out.backward(g)
    got = [t.grad.clone() for t in (x, layer.lora_A, layer.lora_B)]
    for t in (x, layer.lora_A, layer.lora_B):
        t.grad = None
    torch.manual_seed(5)  # the same draw: the same dropout
    keep, scale = lora.dropout_mask(x.shape, 0.25, x.device)
    assert keep.dtype == torch.bool and scale == 4 / 3
    d = keep * scale
    ref = (
        nn.functional.linear(x, layer.weight, layer.bias)
        + layer.scaling * (x * d) @ layer.lora_A.t() @ layer.lora_B.t()
    )
    ref.backward(g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, (x.grad, layer.lora_A.grad, layer.lora_B.grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dropout_drops_p_of_the_inputs_and_keeps_the_mean():
    torch.manual_seed(0)
    keep, scale = lora.dropout_mask(torch.Size([1000, 1000]), 0.05, "cpu")
    assert abs(float((~keep).float().mean()) - 0.05) < 0.002
    assert abs(float(keep.float().mean()) * scale - 1.0) < 0.003
    assert not torch.equal(keep, lora.dropout_mask(torch.Size([1000, 1000]), 0.05, "cpu")[0])  # a new draw each time


def test_gradients_flow_to_the_adapters_only(hf_tiny):
    model = adapted(str(hf_tiny[1])).train()
    model(TOKENS).logsumexp(-1).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {n for n, _ in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in grads)


def test_base_sha256_names_the_weights_not_their_file(hf_tiny, tmp_path):
    from gpt2_scratch.checkpoint import save_checkpoint

    hub, _ = load_model(str(hf_tiny[1]))
    save_checkpoint(tmp_path / "ckpt", hub)
    ours, _ = load_model(str(tmp_path / "ckpt"))
    assert lora.base_sha256(hub) == lora.base_sha256(ours)
    assert lora.base_sha256(hub) != lora.base_sha256(load_model("random:tiny")[0])
    lora.inject(ours, lora.LoRAConfig(rank=2))
    nudge(ours)
    assert lora.base_sha256(ours) == lora.base_sha256(hub)  # the adapters are not part of the base


# --------------------------------------------------------------------------- the adapter checkpoint


def save_adapter(folder, model, base_source: str, base_hash: str, config: lora.LoRAConfig):
    info = AdapterInfo(config, base_source, base_hash)
    return save_adapter_checkpoint(
        folder, lora.adapter_state_dict(model), model.config, info, prompt_style="alpaca", metadata={"step": 3}
    )


@pytest.fixture
def adapter_folder(hf_tiny, tmp_path):
    """(folder of a saved adapter on hf_tiny's base, the adapted model, the base's logits)."""
    source = str(hf_tiny[1])
    base = load_gpt(source)[0]  # plain, as the adapted model's base layers
    config = lora.LoRAConfig(rank=4, alpha=6, targets=("attn.c_attn", "mlp.c_fc"))
    model = adapted(source, config)
    save_adapter(tmp_path / "final", model, source, lora.base_sha256(base), config)
    return tmp_path / "final", model, logits(base)


def test_adapter_checkpoint_holds_the_adapter_only(adapter_folder):
    folder, model, _ = adapter_folder
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "adapter.safetensors", "config.json"]
    tensors = read_safetensors(folder / ADAPTER_FILE)
    assert set(tensors) == {k for k in model.state_dict() if k.endswith(("lora_A", "lora_B"))}
    assert len(tensors) == 2 * 2 * 2  # 2 layers x 2 targets x (A, B): no base tensor
    meta = json.loads((folder / "config.json").read_text())
    assert meta["adapter"]["method"] == "lora" and meta["adapter"]["rank"] == 4 and meta["adapter"]["alpha"] == 6
    assert meta["adapter"]["targets"] == ["attn.c_attn", "mlp.c_fc"] and meta["prompt_style"] == "alpaca"
    assert len(meta["adapter"]["base_sha256"]) == 64 and meta["weights"]["file"] == ADAPTER_FILE
    info = read_checkpoint_info(folder)
    assert info.adapter.lora.rank == 4 and info.adapter.base_model == meta["adapter"]["base_model"]
    assert info.metadata == {"step": 3}
    with pytest.raises(ValueError, match="holds a LoRA adapter, not a whole model: load it with inference.load_model"):
        load_checkpoint(folder)


def test_load_model_merges_the_adapter_into_its_base(adapter_folder):
    folder, model, base = adapter_folder
    expected = logits(model)
    merged, info = load_model(str(folder))
    assert info.adapter is not None and info.prompt_style == "alpaca"
    assert not lora.has_adapters(merged)  # merged: plain layers, no per-token cost
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=0)
    apart, _ = load_gpt(str(folder), merge=False)  # plain layers under the adapters: the same numbers, bit for bit
    assert lora.has_adapters(apart) and torch.equal(logits(apart), expected)
    assert torch.equal(logits(lora.base_view(apart)), base)
    fast, _ = load_model(str(folder), merge=False)  # the inference layers: the same numbers up to rounding
    torch.testing.assert_close(logits(fast), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "dtype, layer, tolerance",
    [
        ("bfloat16", BF16Linear, 0.05),
        ("int8", Int8Linear, 0.05),
        ("int4", Int4Linear, 0.15),
    ],  # measured: 0.004, 0.008, 0.075
)
def test_an_adapter_kept_apart_in_a_reduced_format_shares_the_converted_base(
    adapter_folder, hf_tiny, dtype, layer, tolerance
):
    folder, model, _ = adapter_folder
    apart, _ = load_model(str(folder), merge=False, dtype=dtype)
    assert model_dtype(apart) == dtype
    c_attn = apart.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, lora.LoRALinear) and isinstance(c_attn.base_layer, layer)
    assert c_attn.lora_A.dtype == torch.float32  # the adapter stays float32
    view = lora.base_view(apart)
    assert view.transformer.h[0].attn.c_attn is c_attn.base_layer  # the same converted weights, not a copy
    reduced_base, _ = load_model(str(hf_tiny[1]), dtype=dtype)
    assert torch.equal(logits(view), logits(reduced_base))
    merged, _ = load_model(str(folder), dtype=dtype)
    # Kept apart or merged before rounding: both near the float32 adapted model.
    for m in (apart, merged):
        assert (logits(m) - logits(model)).abs().max() < tolerance
    with pytest.raises(RuntimeError, match="converted to bfloat16/int8/int4 for inference"):
        apart.train()


def test_float32_with_the_adapter_apart_stays_trainable(adapter_folder):
    folder, _, _ = adapter_folder
    apart, _ = load_model(str(folder), merge=False)
    c_attn = apart.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, lora.LoRALinear) and isinstance(c_attn.base_layer, Float32Linear)
    apart.train()
    assert {n for n, p in apart.named_parameters() if p.requires_grad} == {
        k for k in apart.state_dict() if k.endswith(("lora_A", "lora_B"))
    }


def test_another_base_is_a_one_line_error_naming_it(adapter_folder, tmp_path):
    folder, _, _ = adapter_folder
    with pytest.raises(ValueError) as e:
        load_model(str(folder), base="random:tiny")
    assert str(e.value) == (
        f"{folder}: the base model 'random:tiny' is not the one this adapter was trained on "
        f"(its weights' sha256 differs from {read_checkpoint_info(folder).adapter.base_sha256[:12]}...)"
    )
    meta = json.loads((folder / "config.json").read_text())
    meta["adapter"]["base_model"] = str(tmp_path / "gone")
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        load_model(str(folder))
    message = str(e.value)
    assert message.startswith(f"{folder}: cannot load its base model '{tmp_path / 'gone'}' (no such file or folder")
    assert "\n" not in message


def test_a_damaged_adapter_is_refused(adapter_folder):
    folder, _, _ = adapter_folder
    data = bytearray((folder / ADAPTER_FILE).read_bytes())
    data[-1] ^= 0xFF
    (folder / ADAPTER_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the sha256 recorded in config.json"):
        read_adapter(folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["adapter"]["rank"] = 0
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="config.json: --lora-rank must be a positive integer"):
        read_checkpoint_info(folder)


def test_an_adapter_of_another_shape_is_refused(hf_tiny):
    model = adapted(str(hf_tiny[1]))
    state = lora.adapter_state_dict(model)
    key = "transformer.h.0.attn.c_attn.lora_A"
    with pytest.raises(ValueError, match=r"has shape \(2, 64\), expected \(4, 64\) \(another rank\?\)"):
        lora.load_adapter_state_dict(model, {**state, key: torch.zeros(2, 64)})
    with pytest.raises(ValueError, match="unexpected tensor 'transformer.wte.weight'"):
        lora.load_adapter_state_dict(model, {**state, "transformer.wte.weight": torch.zeros(1)})
    del state[key]
    with pytest.raises(ValueError, match=f"missing tensor '{key}'"):
        lora.load_adapter_state_dict(model, state)
