"""Loading for inference: ``load_model``'s sources, and bfloat16 and int8 models against float32.

Tolerances (tiny shape, widened biases and LayerNorms, logits within about +-0.8):
the largest logit difference to float32 is at most 2% (bfloat16) / 3% (int8) of
the largest logit, and the mean KL(float32 || dtype) at most 1e-5 nats; measured,
they are about 0.6% / 0.7% and 1e-7.
"""

from __future__ import annotations

import pytest
import torch

import gpt2_scratch.gemv as gemv
import gpt2_scratch.inference as inference
import gpt2_scratch.kernels as kernels
from gpt2_scratch import GPT, GPTConfig
from gpt2_scratch.checkpoint import save_checkpoint
from gpt2_scratch.devices import native_bfloat16
from gpt2_scratch.generate.sampling import SamplingSettings, generate
from gpt2_scratch.inference import load_model, model_dtype, resolve_dtype
from gpt2_scratch.kernels import BF16Linear, CenteredHead, Int8Linear
from gpt2_scratch.loading import load_gpt
from gpt2_scratch.tokenizer import encode

DTYPES = ["float32", "bfloat16", "int8", "int4"]

MAX_LOGIT_ERROR = {"bfloat16": 0.02, "int8": 0.03, "int4": 0.25}  # of the largest |logit|
MAX_KL = {"bfloat16": 1e-5, "int8": 1e-5, "int4": 1e-3}  # nats, per position
MIN_TOP1 = {"bfloat16": 0.9, "int8": 0.9, "int4": 0.6}  # the same most likely token


@pytest.fixture(scope="module")
def models(hf_tiny) -> dict[str, GPT]:
    """The same weights (transformers' layout, widened biases) loaded in each dtype."""
    _, folder = hf_tiny
    return {dtype: load_model(str(folder), dtype=dtype)[0] for dtype in DTYPES}


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    p, q = reference.double().log_softmax(-1), logits.double().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "int4"])
def test_logits_are_close_to_float32(models, dtype):
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference, logits = models["float32"](idx), models[dtype](idx)
    assert logits.dtype == torch.float32  # the head returns float32 logits for sampling and losses
    error = (logits - reference).abs().max() / reference.abs().max()
    assert 0 < error <= MAX_LOGIT_ERROR[dtype]  # > 0: the model really computes in another format
    assert _kl(reference, logits).mean() <= MAX_KL[dtype]
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= MIN_TOP1[dtype]


def test_int4_computes_the_float32_model_of_its_q4_0_weights(models, hf_tiny):
    """What int4 loses is the weights' rounding (q4_0's); the rest (int8 activations, bfloat16) is small."""
    rounded, _ = load_gpt(str(hf_tiny[1]), "cpu")
    with torch.no_grad():
        for name, module in rounded.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.weight.copy_(gemv.unpack_int4(*gemv.pack_int4(module.weight)))
        head = rounded.transformer.wte.weight.clone()  # the head's rows centered, then rounded (CenteredHead)
        mean_row = head.mean(dim=0)
        rounded.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
        rounded.lm_head.weight.copy_(gemv.unpack_int4(*gemv.pack_int4(head - mean_row)) + mean_row)
    idx = torch.randint(0, 50257, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference, logits = rounded(idx), models["int4"](idx)
    assert (logits - reference).abs().max() / reference.abs().max() <= MAX_LOGIT_ERROR["int8"]
    assert _kl(reference, logits).mean() <= MAX_KL["int8"]


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
    assert native_bfloat16(torch.device("cpu")) is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "avx2": True})
    assert native_bfloat16(torch.device("cpu")) is False


def test_an_unknown_dtype_or_a_second_conversion_is_a_clear_error(models):
    with pytest.raises(ValueError, match="dtype 'fp16' is not one of auto, float32, bfloat16, int8"):
        load_model("random:tiny", dtype="fp16")
    with pytest.raises(ValueError, match=r"already converted \(int8\); load it again"):
        inference.to_inference(models["int8"], "bfloat16")


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_left_padded_rows_equal_single_rows(models, dtype):
    model = models[dtype]
    prompts = [encode(t) for t in ["Hi", "Once upon a time in a land far away", "1 2 3 4 5", "A"]]
    settings = SamplingSettings(max_new_tokens=40)
    batched = generate(model, prompts, settings, stop_ids=None)
    assert all(len(out) == 40 for out in batched)
    for p, got in zip(prompts, batched):
        assert got == generate(model, [p], settings, stop_ids=None)[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sampling_works_and_the_cache_holds_float32_on_cpu(models, dtype):
    model = models[dtype]
    # bfloat16 decoding attends in float32 on CPU: its cache holds keys and values so, converted once
    assert model.new_cache(2, 8).k.dtype == torch.float32
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    first = generate(model, [[1, 2, 3], [4]], s, stop_ids=None)
    assert first == generate(model, [[1, 2, 3], [4]], s, stop_ids=None) and all(len(o) == 12 for o in first)


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
    head = models["int8"].lm_head  # int8 too, its rows centered (the logits' common offset in float32)
    assert isinstance(head, CenteredHead) and isinstance(head.linear, Int8Linear) and head.fmt == "int8"


def test_bfloat16_weights_are_bfloat16_and_packed_once(models):
    model = models["bfloat16"]
    layers = [m for m in model.modules() if isinstance(m, BF16Linear)]
    assert len(layers) == 4 * model.config.n_layer + 1  # the blocks' four, and the head's
    assert all(m.weight.dtype == torch.bfloat16 for m in layers)
    # oneDNN keeps only its packed (opaque) copy; torch's own product a plain bfloat16 weight.
    assert all(m.weight.is_mkldnn == (m.kernel == "onednn") for m in layers)
    assert {m.kernel for m in layers} <= set(kernels.candidates("bfloat16"))
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert model_dtype(model) == "bfloat16" and model_dtype(models["float32"]) == "float32"


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "int4"])
def test_reduced_models_refuse_training(models, dtype):
    with pytest.raises(RuntimeError, match="converted to bfloat16/int8/int4 for inference; load it in float32"):
        models[dtype].train()
    models[dtype].eval()  # still fine


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny")).eval()


def test_load_model_dispatches_on_the_source(tmp_path, hf_tiny, model):
    a, info = load_model("random:tiny")
    b, _ = load_model("random:tiny")
    assert info is None and torch.equal(a.transformer.h[0].attn.c_attn.weight, b.transformer.h[0].attn.c_attn.weight)
    save_checkpoint(tmp_path / "ck", model, prompt_style="alpaca")
    loaded, info = load_model(str(tmp_path / "ck"))
    assert info.prompt_style == "alpaca"
    hf_model, _ = load_model(str(hf_tiny[1]))
    assert hf_model.config.n_head == 4
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        load_model("random:huge")


@pytest.mark.parametrize("fixture", ["hf_tiny", pytest.param("hf_124m", marks=pytest.mark.slow)])
def test_the_inference_layers_keep_parity_with_transformers(fixture, request):
    """float32 through the measured kernels: transformers' logits on the same weights, tiny and 124M."""
    hf, folder = request.getfixturevalue(fixture)
    ours, _ = load_model(str(folder))
    assert kernels.Float32Linear in {type(m) for m in ours.modules()}
    idx = torch.randint(0, 50257, (2, 37), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = hf(idx).logits
        got = ours(idx)
        cache = ours.new_cache(2, 38)
        ours(idx[:, :30], cache=cache)
        step = ours(idx[:, 30:31], cache=cache)  # a decode step through the cache
    assert (got - expected).abs().max().item() <= 1e-4
    assert (step[:, -1] - expected[:, 30]).abs().max().item() <= 1e-4


def test_run_apart_runs_in_a_thread_that_ends_and_hands_back_the_result_or_the_error():
    import threading

    from gpt2_scratch.inference import run_apart

    seen = []
    assert run_apart(lambda: seen.append(threading.current_thread()) or 42) == 42
    (thread,) = seen
    assert thread is not threading.current_thread() and not thread.is_alive()  # its OpenMP pool went with it
    with pytest.raises(ValueError, match="^no such model$"):
        run_apart(lambda: (_ for _ in ()).throw(ValueError("no such model")))
