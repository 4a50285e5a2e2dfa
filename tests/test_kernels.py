"""The inference layers: bfloat16 head, int8 kernels, a row's bits alone and batched, the measured kernel choice."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import gpt2_scratch.files as files
import gpt2_scratch.inference as inference
import gpt2_scratch.kernels as kernels
from gpt2_scratch.config import GPTConfig
from gpt2_scratch.inference import load_model, to_inference
from gpt2_scratch.kernels import CenteredHead, Float32Linear, Int8Linear
from gpt2_scratch.model import GPT, attention


def linear_of(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
def test_head_keeps_logits_with_a_large_common_offset_accurate(fmt):
    # GPT-2's logits sit around -100: rounded to bfloat16 there they would be off by up to 0.25.
    g = torch.Generator().manual_seed(0)
    common = torch.randn(64, generator=g)
    weight = torch.randn(1000, 64, generator=g) * 0.5 + common  # every row shares ``common``
    x = (-100 * common / common.dot(common) + 0.3 * torch.randn(5, 64, generator=g)).to(torch.bfloat16)
    exact = x.float() @ weight.T  # what a float32 head computes from the same input
    assert exact.mean() < -80
    naive = (x @ weight.to(torch.bfloat16).T).float()
    for kernel in kernels.candidates(fmt):
        with torch.inference_mode():
            centered = CenteredHead(linear_of(weight), kernel, fmt)(x)
        assert (naive - exact).abs().mean() > 0.1  # measured: 0.13 (0.38 at most)
        # measured: bfloat16 0.012 (0.07 at most), int8 0.03
        assert (centered - exact).abs().mean() < (0.02 if fmt == "bfloat16" else 0.05), kernel


def test_int8_kernels_agree_with_the_dequantized_weights():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 64, generator=g) * 0.05, torch.randn(96, generator=g)
    x = torch.randn(20, 64, generator=g).to(torch.bfloat16)
    packed, dequant = Int8Linear(linear_of(weight, bias), "int8pack"), Int8Linear(linear_of(weight, bias), "dequant")
    dequantized = packed.weight.float() * packed.scale.float()[:, None]
    assert ((dequantized - weight).abs() <= packed.scale.float()[:, None] / 2 + 1e-7).all()  # half a step
    assert (packed.weight.abs().amax(dim=1) >= 126).all()  # and the int8 range is used
    odd = Int8Linear(linear_of(weight[:, :60], bias), "int8pack")  # the kernel needs a multiple of 16 inputs
    assert (packed.kernel, odd.kernel) == ("int8pack", "dequant")
    exact = x.float() @ dequantized.T + bias
    with torch.inference_mode():
        for layer in (packed, dequant):
            assert torch.allclose(layer(x).float(), exact, atol=0.05)
        assert torch.allclose(odd(x[:2, :60]).float(), x[:2, :60].float() @ dequantized[:, :60].T + bias, atol=0.05)


def test_bfloat16_decoding_attends_in_float32_on_cpu():
    # One query a row (decoding): computed in float32 from the bfloat16 cache, then rounded once;
    # many queries (prefill) stay on the bfloat16 kernel.
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g).bfloat16() for _ in range(3))
    one = q[:, :, -1:]
    expected = torch.nn.functional.scaled_dot_product_attention(one.float(), k.float(), v.float()).bfloat16()
    assert torch.equal(attention(one, k, v, None), expected)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[0, :, :, :4] = False  # padding keys of row 0
    expected = torch.nn.functional.scaled_dot_product_attention(
        one.float(), k.float(), v.float(), attn_mask=mask
    ).bfloat16()
    assert torch.equal(attention(one, k, v, mask), expected)
    causal = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert causal.dtype == torch.bfloat16 and torch.equal(attention(q, k, v, None), causal)


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("fmt", ["float32", "bfloat16", "int8", "int4"])
@pytest.mark.parametrize("shape", [(3072, 768), (768, 2304)])
def test_every_way_the_probe_accepts_gives_a_row_the_same_bits_alone_and_batched(fmt, shape):
    """A kernel may multiply one row with another routine than several (oneDNN does at 3072 inputs here):
    the probe finds it, and the layer then computes a lone row as two, or every row alone."""
    torch.manual_seed(0)
    linear = nn.Linear(*shape)
    x = torch.randn(16, shape[0]) * torch.exp(2 * torch.randn(16, shape[0]))  # many magnitudes: rounding shows
    x = x.to(kernels.ACTIVATIONS[fmt])
    for kernel in kernels.candidates(fmt):
        layer = kernels.LAYERS[fmt](linear, kernel)
        exact, lone = kernels._probe(layer, x.dtype)
        for rows in ["one by one"] + (["lone as two" if lone else "together"] if exact else []):
            layer.rows = rows
            with torch.inference_mode():
                together = layer(x)
                for n in (1, 2, 5):
                    for i in range(0, 16, n):
                        assert torch.equal(layer(x[i : i + n]), together[i : i + n]), f"{kernel}, {rows}: rows {i}"


def test_rows_are_fed_as_the_rule_says():
    calls = []

    def product(x2):
        calls.append(x2.shape[0])
        return x2 * 2

    x = torch.arange(6.0).view(3, 2)
    for rows, expected in (("together", [3, 1]), ("lone as two", [3, 2]), ("one by one", [1, 1, 1, 1])):
        calls.clear()
        assert torch.equal(kernels.feed_rows(product, x, rows), x * 2)
        assert torch.equal(kernels.feed_rows(product, x[:1], rows), x[:1] * 2)
        assert calls == expected, rows


def test_the_choice_is_measured_once_cached_per_machine_and_shape_and_can_be_forced(tmp_path, monkeypatch):
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(kernels, "_CHOICES", {})
    calls = []
    real = kernels.measure
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: calls.append(a) or real(*a, **k))
    kernel, _ = kernels.choose_kernel("float32", 64, 96)
    assert kernel in kernels.candidates("float32") and calls == [("float32", 64, 96)]
    saved = json.loads((tmp_path / "kernels.json").read_text())
    (key,) = saved
    assert (
        key.endswith(f"|float32|64x96|{'/'.join(kernels.candidates('float32'))}")
        and f"{torch.get_num_threads()} threads{kernels.gemv.build_tag()}|" in key  # a rebuilt kernel: measured again
    )
    assert saved[key]["rows"] in kernels.ROWS
    assert {name.split(",")[0] for name in saved[key]["seconds"]} == set(kernels.candidates("float32"))
    assert all(min(t) > 0 for t in saved[key]["seconds"].values())  # seconds at 1, 8 and 64 rows
    monkeypatch.setattr(kernels, "_CHOICES", {})  # a new process: read from the cache, not measured again
    assert kernels.choose_kernel("float32", 64, 96)[0] == kernel and len(calls) == 1
    monkeypatch.setenv(kernels.KERNEL_ENV, "mkl")
    assert kernels.choose_kernel("float32", 64, 96)[0] == "mkl" and len(calls) == 1
    model, _ = load_model("random:tiny")
    assert inference.summary(model) == f"mkl x{4 * model.config.n_layer + 1}"
    monkeypatch.setenv(kernels.KERNEL_ENV, "int4")
    with pytest.raises(ValueError, match=r"GPT2_SCRATCH_KERNEL='int4' is not a float32 kernel \(onednn, mkl, gemv\)"):
        kernels.choose_kernel("float32", 64, 96)
    monkeypatch.delenv(kernels.KERNEL_ENV)
    with pytest.raises(ValueError, match=r"--kernel='dequant' is not a float32 kernel"):
        load_model("random:tiny", kernel="dequant")
    model, _ = load_model("random:tiny", dtype="int8", kernel="dequant")  # the option, without the variable
    assert inference.summary(model) == f"dequant x{4 * model.config.n_layer + 1}"  # the int8 head too


def test_a_float32_inference_model_keeps_the_plain_models_parameters_names_and_numbers():
    torch.manual_seed(0)
    plain = GPT(GPTConfig.from_preset("tiny")).eval()
    names = {k: v.clone() for k, v in plain.state_dict().items()}
    idx = torch.randint(0, plain.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = plain(idx)
    params = {n: p for n, p in plain.named_parameters()}
    fast = to_inference(plain, "float32")
    assert isinstance(fast.transformer.h[0].mlp.c_fc, Float32Linear) and "Float32Linear" in repr(fast)
    assert {n: p for n, p in fast.named_parameters()}.keys() == params.keys()
    assert all(p is params[n] for n, p in fast.named_parameters())  # the very Parameters
    assert fast.state_dict().keys() == names.keys()
    with torch.inference_mode():
        torch.testing.assert_close(fast(idx), expected, atol=2e-5, rtol=0)


def test_a_choice_measured_on_a_busy_machine_is_measured_again_by_a_later_process_when_quieter(tmp_path, monkeypatch):
    monkeypatch.setenv(files.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(kernels.KERNEL_ENV, raising=False)
    monkeypatch.setattr(kernels, "_CHOICES", {})
    calls = []
    real = kernels.measure
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(kernels, "_MEASURED", set())
    monkeypatch.setattr(kernels, "_load_per_core", lambda: 2.0)  # another job on every core
    first = kernels.choose_kernel("float32", 64, 96)
    (entry,) = json.loads((tmp_path / "kernels.json").read_text()).values()
    assert entry["load"] == 2.0 and len(calls) == 1
    monkeypatch.setattr(kernels, "_load_per_core", lambda: 0.1)
    assert kernels.choose_kernel("float32", 64, 96) == first  # never twice in one process: the same kernels
    assert len(calls) == 1
    monkeypatch.setattr(kernels, "_CHOICES", {})  # a later process, on a quieter machine
    monkeypatch.setattr(kernels, "_MEASURED", set())
    kernels.choose_kernel("float32", 64, 96)  # measured again, and kept from now on
    kernels.choose_kernel("float32", 64, 96)
    assert len(calls) == 2
    (entry,) = json.loads((tmp_path / "kernels.json").read_text()).values()
    assert entry["load"] == 0.1


@pytest.mark.parametrize("kernel", ["onednn", "gemv"])
def test_a_model_loaded_under_inference_mode_computes_with_every_float32_kernel(kernel):
    if kernel not in kernels.candidates("float32"):
        pytest.skip(f"{kernel} is not available on this CPU")
    torch.manual_seed(0)
    plain = GPT(GPTConfig.from_preset("tiny")).eval()
    idx = torch.randint(0, plain.config.vocab_size, (1, 5))
    with torch.no_grad():
        expected = plain(idx)
    with torch.inference_mode():  # the parameters made here are inference tensors (no version counter)
        fast = to_inference(GPT(GPTConfig.from_preset("tiny")), "float32", kernel=kernel)
        fast.load_state_dict(plain.state_dict())
        torch.testing.assert_close(fast(idx), expected, atol=2e-5, rtol=0)
