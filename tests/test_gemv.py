"""Our C kernel: the products it computes, a row's bits alone and batched, its build and its failures."""

from __future__ import annotations

import subprocess

import gguf
import pytest
import torch
import torch.nn.functional as F

import gpt2_scratch.gemv as gemv
import gpt2_scratch.kernels as kernels

needs_kernel = pytest.mark.skipif(not gemv.available(), reason=f"gemv not built here: {gemv.unavailable_reason()}")


def reference(x, w, scale=None, bias=None):
    """The product in float64 from the same (already rounded) inputs."""
    y = x.double() @ w.double().T
    if scale is not None:
        y = y * scale.double()
    return y if bias is None else y + bias.double()


# (out, in): GPT-2's widths, and sizes off every step the kernel takes (4 rows, 16 or 32 inputs)
SHAPES = [(2304, 768), (37, 100), (5, 31), (1, 7)]


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.int8])
def test_products_match_float64_for_every_weight_format(shape, wdtype):
    g = torch.Generator().manual_seed(0)
    n, k = shape
    w = torch.randn(n, k, generator=g)
    scale = None
    if wdtype == torch.int8:
        scale = torch.rand(n, generator=g) / 100
        w = torch.randint(-127, 128, (n, k), generator=g).to(torch.int8)
    else:
        w = w.to(wdtype)
    bias = torch.randn(n, generator=g)
    for xdtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, k, generator=g).to(xdtype)
        y = gemv.linear(x, w, scale, bias)
        assert y.dtype == xdtype and y.shape == (3, n)
        expected = reference(x, w, scale, bias)
        tol = 1e-5 if xdtype == torch.float32 else 2**-8  # float32 sums; a bfloat16 output rounds to 8 bits
        torch.testing.assert_close(y.double(), expected, atol=tol * expected.abs().max().item(), rtol=tol)


@needs_kernel
def test_no_rows_give_no_rows():
    for wdtype in (torch.float32, torch.bfloat16):
        assert gemv.linear(torch.ones(0, 8, dtype=wdtype), torch.ones(3, 8, dtype=wdtype)).shape == (0, 3)


@needs_kernel
def test_a_bfloat16_output_is_the_float32_sum_rounded_to_nearest_even():
    x = torch.tensor([[1.0, 1.0]])
    # 1 + 2^-8 lies halfway between two bfloat16 values: rounds to the even one (1.0); + 3 * 2^-8 rounds up
    w = torch.tensor([[1.0, 2.0**-8], [1.0, 3 * 2.0**-8]])
    y = gemv.linear(x.bfloat16(), w.bfloat16())
    assert y.tolist() == [[1.0, 1.015625]]
    nan = gemv.linear(torch.tensor([[float("nan")]]).bfloat16(), torch.ones(1, 1).bfloat16())
    assert torch.isnan(nan).all()


@needs_kernel
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.int8])
def test_a_row_gets_the_same_bits_alone_in_any_batch_and_on_any_number_of_threads(wdtype):
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(203, 300, generator=g) * 50).to(wdtype)
    scale = torch.rand(203, generator=g) if wdtype == torch.int8 else None
    x = torch.randn(9, 300, generator=g) * torch.exp(2 * torch.randn(9, 300, generator=g))
    alone = torch.cat([gemv.linear(x[i : i + 1], w, scale) for i in range(9)])
    for n in range(2, 10):  # every tile size, and tiles of X_AT_ONCE (2 or 6) with the rest
        for start in range(0, 9 - n + 1):
            assert torch.equal(gemv.linear(x[start : start + n], w, scale), alone[start : start + n])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(gemv.linear(x, w, scale), alone)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_every_inference_layer_computes_what_torch_does_with_the_gemv_kernel():
    g = torch.Generator().manual_seed(2)
    linear = torch.nn.Linear(128, 40)  # int4 takes inputs in 64s
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 128, generator=g) * 0.02)
    x = torch.randn(4, 128, generator=g)
    with torch.inference_mode():
        expected = F.linear(x, linear.weight, linear.bias)
        for fmt, tol in (("float32", 1e-6), ("bfloat16", 2e-2), ("int8", 2e-2), ("int4", 0.2)):
            layer = kernels.LAYERS[fmt](linear, "gemv")
            y = layer(x.to(kernels.ACTIVATIONS[fmt])).float()
            torch.testing.assert_close(y, expected, atol=tol * expected.abs().max().item(), rtol=0)
        int4 = kernels.Int4Linear(linear, "gemv")  # exactly: q4_0 weights, q8_0 activations
        y = int4(x.bfloat16()).double()
        expected = int4_reference(x.bfloat16(), int4.weight, int4.scale, linear.bias.bfloat16())
        torch.testing.assert_close(y, expected, atol=2**-8 * expected.abs().max().item(), rtol=2**-8)


@needs_kernel
def test_int4_measures_only_our_kernel_where_it_is_built_and_still_lets_the_fallback_be_forced():
    assert kernels.candidates("int4") == ("gemv",)
    assert kernels.check_kernel("int4", "dequant") == "dequant"


def test_int4_packs_the_very_values_of_llama_cpps_q4_0():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(7, 192, generator=g) * torch.exp(torch.randn(7, 192, generator=g))
    w[0, :32] = 0  # a block of zeros: scale 0
    w[1, 32:64] = 0.5  # a block of one value
    packed, scales = gemv.pack_int4(w)
    assert packed.shape == (7, 96) and packed.dtype == torch.uint8 and scales.shape == (7, 6)
    q4_0 = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0)
    expected = torch.from_numpy(gguf.quants.dequantize(q4_0, gguf.GGMLQuantizationType.Q4_0)).float()
    assert torch.equal(gemv.unpack_int4(packed, scales), expected)
    d = torch.from_numpy(q4_0.reshape(7, 6, 18)[..., :2].copy()).view(torch.float16).float().squeeze(-1)
    assert torch.equal(scales, d)
    with pytest.raises(ValueError, match="^int4 needs layers of a multiple of 64 inputs; this one has 96$"):
        gemv.pack_int4(torch.ones(3, 96))


def int4_reference(x, packed, scales, bias=None):
    """The int4 product in float64: the activations rounded to int8 per block of 32 (q8_0's rule), times the
    unpacked weights."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    step = blocks.abs().amax(-1, keepdim=True) / 127
    xq = torch.where(step > 0, torch.round(blocks / torch.where(step > 0, step, 1)) * step, 0).reshape(x.shape)
    y = xq.double() @ gemv.unpack_int4(packed, scales).double().T
    return y if bias is None else y + bias.double()


@needs_kernel
def test_int4_products_match_float64_and_keep_a_rows_bits_in_any_batch():
    g = torch.Generator().manual_seed(4)
    for n, k in ((2304, 768), (37, 192), (5, 64)):  # pairs of blocks: even, odd (a last odd step), one
        packed, scales = gemv.pack_int4(torch.randn(n, k, generator=g) * 0.02)
        bias = torch.randn(n, generator=g)
        x = torch.randn(9, k, generator=g) * torch.exp(2 * torch.randn(9, k, generator=g))
        x[0, :32] = 0  # a block of zero activations
        alone = torch.cat([gemv.linear(x[i : i + 1], packed, scales, bias) for i in range(9)])
        expected = int4_reference(x, packed, scales, bias)
        torch.testing.assert_close(alone.double(), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)
        for rows in range(2, 10):  # every tile size
            assert torch.equal(gemv.linear(x[:rows], packed, scales, bias), alone[:rows])
        broken = x.clone()
        broken[4, 5] = float(
            "nan"
        )  # a NaN makes its row's outputs NaN, as in the other formats; the others keep theirs
        y = gemv.linear(broken, packed, scales, bias)
        assert torch.isnan(y[4]).all() and torch.equal(torch.cat([y[:4], y[5:]]), torch.cat([alone[:4], alone[5:]]))
        low = gemv.linear(x[:3].bfloat16(), packed, scales, bias)
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(
            low.double(),
            int4_reference(x[:3].bfloat16(), packed, scales, bias),
            atol=2**-8 * expected.abs().max().item(),
            rtol=2**-8,
        )


def test_the_library_is_built_once_per_source_and_cpu_and_then_read_from_the_cache(tmp_path, monkeypatch):
    if not gemv.available():
        pytest.skip(f"gemv not built here: {gemv.unavailable_reason()}")
    first = gemv.build_library(tmp_path)
    assert first.parent == tmp_path and first.name.startswith("gemv-") and first.suffix == ".so"
    built = []
    real_run = subprocess.run
    monkeypatch.setattr(gemv.subprocess, "run", lambda cmd, **kw: built.append(cmd) or real_run(cmd, **kw))
    assert gemv.build_library(tmp_path) == first
    assert all("--version" in cmd for cmd in built)  # the compiler asked its version, nothing compiled
    loaded = gemv.build_library(gemv.cache_folder() / "gemv")  # what available() loaded: its id is the tag
    assert gemv.build_tag() == f"|gemv {loaded.stem.removeprefix('gemv-')}"
    edited = tmp_path / "gemv.c"
    edited.write_text(gemv.SOURCE.read_text() + "\n/* edited */\n")
    monkeypatch.setattr(gemv, "SOURCE", edited)
    assert gemv.build_library(tmp_path) != first  # another source: its own library
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".so") == sorted(
        [first.name, gemv.build_library(tmp_path).name]
    )


def test_no_compiler_or_a_failed_build_is_one_line_and_forcing_the_kernel_then_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv(gemv.COMPILER_ENV, str(tmp_path / "no-such-cc"))
    with pytest.raises(RuntimeError, match=r"^no C compiler \(.*no-such-cc: FileNotFoundError\)$"):
        gemv.build_library(tmp_path)
    monkeypatch.delenv(gemv.COMPILER_ENV)
    broken = tmp_path / "gemv.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(gemv, "SOURCE", broken)
    if gemv.available():  # a compiler is here: the broken source fails to build, in one line
        with pytest.raises(RuntimeError, match=r"could not build gemv.c \(") as failed:
            gemv.build_library(tmp_path / "out")
        assert "\n" not in str(failed.value)
        assert not list((tmp_path / "out").glob("*.so"))  # nothing half-built left in the cache
    monkeypatch.setattr(gemv, "available", lambda: False)
    monkeypatch.setattr(gemv, "unavailable_reason", lambda: "no C compiler (cc: FileNotFoundError)")
    assert "gemv" not in kernels.candidates("float32")
    assert kernels.candidates("int4") == ("dequant",)  # int4's fallback, measured only without ours
    with pytest.raises(ValueError, match=r"^--kernel=gemv: that kernel is not available on this CPU \(no C compiler"):
        kernels.check_kernel("float32", "gemv")
