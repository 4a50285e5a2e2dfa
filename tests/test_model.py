"""The model itself: parameter counts, logits parity with transformers, KV cache, masks, half-precision weights."""

import pytest
import torch

from gpt2_scratch import GPT, GPTConfig
from gpt2_scratch.hub import load_pretrained


def test_124m_has_exactly_124439808_parameters():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2"))
    assert model.num_params() == 124_439_808


def test_preset_sizes():
    expected = {"gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200}
    for name, n in expected.items():
        with torch.device("meta"):
            assert GPT(GPTConfig.from_preset(name)).num_params() == n, name


def test_parameter_names_follow_gpt2():
    names = set(GPT(GPTConfig.from_preset("tiny")).state_dict())
    for n in [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        "transformer.h.1.ln_1.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_proj.bias",
        "transformer.h.0.mlp.c_fc.weight",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.ln_f.bias",
    ]:
        assert n in names


def test_head_is_tied_to_wte():
    model = GPT(GPTConfig.from_preset("tiny"))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("fixture", ["hf_tiny", pytest.param("hf_124m", marks=pytest.mark.slow)])
def test_logits_parity_with_transformers(fixture, request):
    hf, folder = request.getfixturevalue(fixture)
    ours = load_pretrained(str(folder))
    idx = torch.randint(0, 50257, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(idx).logits
        got = ours(idx)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


def test_kv_cache_logits_match_full_forward():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    idx = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2, 20)
        first = model(idx[:, :12], cache=cache)
        steps = [model(idx[:, t : t + 1], cache=cache) for t in range(12, 20)]
    got = torch.cat([first] + steps, dim=1)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    assert cache.length == 20


def test_left_padding_with_mask_matches_unpadded():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny")).eval()
    row = torch.randint(0, 50257, (1, 9))
    padded = torch.cat([torch.full((1, 4), 50256), row], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 9])
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(row)
        got = model(padded, attention_mask=mask, position_ids=positions)[:, 4:]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)


def test_sequence_longer_than_context_is_an_error():
    model = GPT(GPTConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="exceeds the context length 256"):
        model(torch.zeros(1, 257, dtype=torch.long))


def test_weights_stored_in_half_precision_load_as_float32():
    # A Hub repo or an export may store bfloat16 or float16 weights: the model keeps float32 parameters.
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32)
    source = GPT(config)
    for dtype in (torch.bfloat16, torch.float16):
        state = {k: v.to(dtype) for k, v in source.state_dict().items() if k != "lm_head.weight"}
        with torch.device("meta"):
            model = GPT(config)
        model.load_weights(state, "half.safetensors")
        for name, p in model.state_dict().items():
            key = "transformer.wte.weight" if name == "lm_head.weight" else name
            assert p.dtype == torch.float32 and torch.equal(p, state[key].float()), name
        assert model.lm_head.weight is model.transformer.wte.weight
