"""The inference kernels: bfloat16 head and attention, int8 linear layers, oneDNN's one-row result."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import gpt2_scratch.kernels as kernels
from gpt2_scratch.kernels import BF16Head, BF16Linear, Int8Linear, PackedLinear


def test_head_keeps_logits_with_a_large_common_offset_accurate():
    # GPT-2's logits sit around -100: rounded to bfloat16 there they would be off by up to 0.25.
    g = torch.Generator().manual_seed(0)
    common = torch.randn(64, generator=g)
    weight = torch.randn(1000, 64, generator=g) * 0.5 + common  # every row shares ``common``
    x = (-100 * common / common.dot(common) + 0.3 * torch.randn(5, 64, generator=g)).to(torch.bfloat16)
    exact = x.float() @ weight.T  # what a float32 head computes from the same input
    assert exact.mean() < -80
    naive = (x @ weight.to(torch.bfloat16).T).float()
    with torch.inference_mode():
        centered = BF16Head(weight)(x)
    assert (naive - exact).abs().mean() > 0.1  # measured: 0.13 (0.38 at most)
    assert (centered - exact).abs().mean() < 0.02  # measured: 0.012 (0.07 at most)


def test_int8_decode_kernel_and_prefill_path_agree():
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(96, 64, generator=g) * 0.05, torch.randn(96, generator=g)
    layer = Int8Linear(weight, bias)
    x = torch.randn(20, 64, generator=g).to(torch.bfloat16)
    dequantized = layer.weight.float() * layer.scale.float()[:, None]
    assert ((dequantized - weight).abs() <= layer.scale.float()[:, None] / 2 + 1e-7).all()  # half a step
    assert (layer.weight.abs().amax(dim=1) >= 126).all()  # and the int8 range is used
    odd_layer = Int8Linear(weight[:, :60], bias)  # the kernel needs the inner size to be a multiple of 16
    assert layer.use_kernel and not odd_layer.use_kernel
    with torch.inference_mode():
        few = layer(x[: kernels.INT8_KERNEL_MAX_ROWS])  # the int8 kernel
        many = layer(x)  # more rows: dequantized product
        odd = odd_layer(x[:2, :60])  # dequantized product
    exact = x.float() @ dequantized.T + bias
    assert torch.allclose(few.float(), exact[: len(few)], atol=0.05)
    assert torch.allclose(many.float(), exact, atol=0.05)
    assert torch.allclose(odd.float(), x[:2, :60].float() @ dequantized[:, :60].T + bias, atol=0.05)


def test_bfloat16_decoding_attends_in_float32_on_cpu():
    # One query a row (decoding): computed in float32 from the bfloat16 cache, then rounded once;
    # many queries (prefill) stay on the bfloat16 kernel.
    from gpt2_scratch.kernels import decode_attention as attention

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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_row_gets_the_same_bits_alone_as_among_others(dtype):
    """Here oneDNN multiplies one row with 3072 inputs with another kernel than several rows, whose sums round
    differently: such a layer computes a lone row as two, so a request decodes the same alone and batched."""
    torch.manual_seed(0)
    linear = nn.Linear(3072, 768)
    x = torch.randn(16, 3072) * torch.exp(2 * torch.randn(16, 3072))  # many magnitudes: rounding shows
    if dtype == "float32":
        linear.__class__ = PackedLinear  # as prepare_for_inference does
        layer = linear
    else:
        layer, x = BF16Linear(linear.weight, linear.bias), x.to(torch.bfloat16)
    with torch.inference_mode():
        together = layer(x)
        for i in range(len(x)):
            assert torch.equal(layer(x[i : i + 1])[0], together[i]), f"row {i}"
