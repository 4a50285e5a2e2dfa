"""Reduced-precision inference: bfloat16 and int8 models against float32, the ``auto`` choice, generation.

Tolerances (tiny shape, widened biases and LayerNorms, logits within about +-0.8):
the largest logit difference to float32 is at most 2% (bfloat16) / 3% (int8) of
the largest logit, and the mean KL(float32 || dtype) at most 1e-5 nats; measured,
they are about 0.6% / 0.7% and 1e-7.
"""

from __future__ import annotations

import pytest
import torch

import gpt2_scratch.inference as inference
import gpt2_scratch.kernels as kernels
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model, model_dtype, resolve_dtype
from gpt2_scratch.kernels import BF16Head, BF16Linear, Int8Linear
from gpt2_scratch.model import GPT
from gpt2_scratch.tokenizer import encode

DTYPES = ["float32", "bfloat16", "int8"]
MAX_LOGIT_ERROR = {"bfloat16": 0.02, "int8": 0.03}  # of the largest |logit|


@pytest.fixture(scope="module")
def models(hf_tiny) -> dict[str, GPT]:
    """The same weights (transformers' layout, widened biases) loaded in each dtype."""
    _, folder = hf_tiny
    return {dtype: load_model(str(folder), dtype=dtype)[0] for dtype in DTYPES}


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    p, q = reference.double().log_softmax(-1), logits.double().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_logits_are_close_to_float32(models, dtype):
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference, logits = models["float32"](idx), models[dtype](idx)
    assert logits.dtype == torch.float32  # the head returns float32 logits for sampling and losses
    error = (logits - reference).abs().max() / reference.abs().max()
    assert 0 < error <= MAX_LOGIT_ERROR[dtype]  # > 0: the model really computes in another format
    assert _kl(reference, logits).mean() <= 1e-5
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9


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


def test_auto_follows_the_capability_check(monkeypatch):
    monkeypatch.setattr(inference, "native_bfloat16", lambda device: False)
    assert resolve_dtype("auto", "cpu") == "float32"
    assert model_dtype(load_model("random:tiny", dtype="auto")[0]) == "float32"
    monkeypatch.setattr(inference, "native_bfloat16", lambda device: True)
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    assert model_dtype(load_model("random:tiny", dtype="auto")[0]) == "bfloat16"
    assert resolve_dtype("int8", "cpu") == "int8"  # explicit names are kept; int8 is never automatic


def test_the_capability_check_reads_torchs_cpu_features(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert inference.native_bfloat16(torch.device("cpu")) is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "avx2": True})
    assert inference.native_bfloat16(torch.device("cpu")) is False


def test_an_unknown_dtype_or_a_second_conversion_is_a_clear_error(models):
    with pytest.raises(ValueError, match="dtype 'fp16' is not one of auto, float32, bfloat16, int8"):
        load_model("random:tiny", dtype="fp16")
    with pytest.raises(ValueError, match="already converted to int8; load it again"):
        inference.prepare_for_inference(models["int8"], "bfloat16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_left_padded_rows_equal_single_rows(models, dtype):
    model = models[dtype]
    prompts = [encode(t) for t in ["Hi", "Once upon a time in a land far away", "1 2 3 4 5", "A"]]
    settings = SamplingSettings(max_new_tokens=40)
    batched = generate(model, prompts, settings, eos_id=None)
    assert all(len(out) == 40 for out in batched)
    for p, got in zip(prompts, batched):
        assert got == generate(model, [p], settings, eos_id=None)[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampling_works_and_the_cache_uses_the_compute_dtype(models, dtype):
    model = models[dtype]
    expected = torch.float32 if dtype == "float32" else torch.bfloat16
    assert model.new_cache(2, 8).k.dtype == expected
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    first = generate(model, [[1, 2, 3], [4]], s, eos_id=None)
    assert first == generate(model, [[1, 2, 3], [4]], s, eos_id=None) and all(len(o) == 12 for o in first)


def test_int8_weights_are_int8_with_a_quarter_of_the_bytes(models):
    def linear_bytes(model):  # every tensor of the transformer blocks' linear layers
        layers = [
            m
            for block in model.transformer.h
            for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
        ]
        return layers, sum(t.numel() * t.element_size() for m in layers for t in m.state_dict().values())

    layers, int8_bytes = linear_bytes(models["int8"])
    assert all(isinstance(m, Int8Linear) and m.weight.dtype == torch.int8 for m in layers)
    assert all(m.scale.shape == (m.weight.shape[0],) for m in layers)  # one scale per output channel
    _, float32_bytes = linear_bytes(models["float32"])
    assert 0.25 <= int8_bytes / float32_bytes < 0.28  # int8 weights + bfloat16 scales and biases
    assert model_dtype(models["int8"]) == "int8"
    assert isinstance(models["int8"].lm_head, BF16Head)  # the head stays bfloat16 (faster and exact-er here)


def test_bfloat16_weights_are_bfloat16_and_packed_once(models):
    model = models["bfloat16"]
    layers = [m for m in model.modules() if isinstance(m, BF16Linear)]
    assert len(layers) == 4 * model.config.n_layer + 1  # the blocks' four, and the head's
    assert all(m.weight.dtype == torch.bfloat16 for m in layers)
    if kernels._onednn_bf16_available():  # on CPUs with oneDNN's bfloat16: only the packed copy is kept
        assert all(m.weight.is_mkldnn for m in layers)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert model_dtype(model) == "bfloat16" and model_dtype(models["float32"]) == "float32"


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


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_reduced_models_refuse_training(models, dtype):
    with pytest.raises(RuntimeError, match="converted to bfloat16/int8 for inference; load it in float32"):
        models[dtype].train()
    models[dtype].eval()  # still fine


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
