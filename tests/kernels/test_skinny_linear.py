"""The native skinny kernels against a float64 reference, their fallbacks, and their build cache."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lmlab.kernels import (
    BLOCK_ROWS,
    MAX_ROWS,
    int8_activation_range,
    load_native,
    native_status,
    quantize_rows,
    skinny_linear,
    skinny_linear_int8,
)

native = pytest.mark.skipif(load_native() is None, reason=f"native kernel unavailable: {native_status()}")


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


@native
@pytest.mark.parametrize("rows", range(1, BLOCK_ROWS + 1))
@pytest.mark.parametrize("n, k", [(1, 1), (7, 5), (64, 48), (301, 70), (513, 1000)])
@pytest.mark.parametrize("bias", [True, False])
def test_float_kernel_matches_float64(rows, n, k, bias):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    with torch.no_grad():
        got = skinny_linear(x, w, b)
    assert got is not None and got.shape == (rows, n)
    torch.testing.assert_close(got, reference(x, w, b), rtol=1e-5, atol=1e-5 * k**0.5)


@native
@pytest.mark.parametrize("n, k", [(130, 3072), (2304, 768), (97, 1000)])
def test_a_rows_result_does_not_depend_on_the_rows_beside_it(n, k):
    # the engine decodes a request in batches of any size: its logits must be bitwise the same
    # (16 rows walk W in blocks, and long rows walk k in chunks; one row does neither)
    g = torch.Generator().manual_seed(n + k)
    x, w, b = torch.randn(BLOCK_ROWS, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    with torch.no_grad():
        together = skinny_linear(x, w, b)
        for lo, hi in [(0, 1), (5, 6), (15, 16), (0, 8), (8, 16), (3, 12)]:
            assert torch.equal(skinny_linear(x[lo:hi], w, b), together[lo:hi]), (lo, hi)


@native
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("n, k", [(5, 3), (300, 77), (1001, 768), (64, 3072)])
def test_int8_kernel_is_exact_integer_arithmetic(rows, n, k):
    g = torch.Generator().manual_seed(n + k + rows)
    x = torch.randn(rows, k, generator=g)
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, generator=g) + 0.01
    xq, xscale = quantize_rows(x, int8_activation_range(k))
    assert xq.abs().max() <= int8_activation_range(k)
    got = skinny_linear_int8(xq, xscale, q, scale)
    sums = xq.long() @ q.long().t()  # (rows, n) exact
    want = (sums.double() * xscale.double()[:, None] * scale.double()).float()
    torch.testing.assert_close(got, want, rtol=2**-21, atol=0)
    weight = q.double() * scale.double()[:, None]  # (n, k)
    error = (x.double() - xq.double() * xscale.double()[:, None]).norm(dim=1, keepdim=True)  # (rows, 1)
    bound = error * weight.norm(dim=1) + 2**-22 * got.double().abs()  # Cauchy–Schwarz, then the scaling
    assert ((x.double() @ weight.t() - got.double()).abs() <= bound).all()


def test_int8_activation_range_keeps_sums_in_int32():
    for k in (1, 768, 3072, 11008, 100_000):
        assert 127 * k * int8_activation_range(k) < 2**31


@native
def test_leading_dimensions_and_strided_inputs():
    w, b = torch.randn(33, 20), torch.randn(33)
    x = torch.randn(2, 1, 40)[..., ::2]  # (2, 1, 20), not contiguous
    with torch.no_grad():
        got = skinny_linear(x, w, b)
    assert got.shape == (2, 1, 33)
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_falls_back_where_it_does_not_apply():
    w = torch.randn(8, 4)
    with torch.no_grad():
        assert skinny_linear(torch.randn(BLOCK_ROWS + 1, 4), w) is None  # too many rows
        assert skinny_linear(torch.randn(1, 4, dtype=torch.float64), w.double()) is None
        assert skinny_linear(torch.randn(1, 4), w.t().contiguous().t()) is None  # not row-major
        assert skinny_linear(torch.randn(0, 4), w) is None
    assert skinny_linear(torch.randn(1, 4), w.requires_grad_()) is None  # autograd wants its graph


def test_disabled_by_the_environment():
    code = "from lmlab.kernels import native_status; print(native_status())"
    env = {**os.environ, "LMLAB_NATIVE_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "disabled by LMLAB_NATIVE_KERNELS=0"


@native
def test_a_fresh_cache_builds_the_library_once(tmp_path):
    code = (
        "from lmlab.kernels import native_status; import pathlib, os;"
        "print(native_status(), len(list(pathlib.Path(os.environ['LMLAB_CACHE'], 'kernels').glob('*.so'))))"
    )
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path)}
    for _ in range(2):  # the second run finds the library the first one built
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["ready", "1"]
    assert not list((tmp_path / "kernels").glob(".*tmp"))  # no half-written library left behind


def test_a_failing_compiler_means_plain_pytorch(tmp_path):
    code = (
        "import torch; from lmlab.kernels import native_status; from lmlab.models import ModelConfig, build_model;"
        "from lmlab.generation import GenerationConfig, generate;"
        "m = build_model(ModelConfig(vocab_size=20, n_layer=1, n_head=2, d_model=8, context_length=16)).eval();"
        "print(native_status()); print(len(generate(m, [1, 2], GenerationConfig(max_new_tokens=4))))"
    )
    env = {**os.environ, "LMLAB_CACHE": str(tmp_path), "CC": "false", "LMLAB_NATIVE_KERNELS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    status, produced = out.stdout.strip().splitlines()
    assert status.startswith(("compiling the kernel failed", "no native kernel", "the CPU lacks")) and produced == "4"


@native
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 11, 16])
@pytest.mark.parametrize("n, k", [(1, 1), (7, 5), (301, 70), (513, 1000)])
@pytest.mark.parametrize("bias", [True, False])
def test_bfloat16_kernel_rounds_the_float32_product_once(rows, n, k, bias):
    g = torch.Generator().manual_seed(rows * 100 + n + k)
    x, w = torch.randn(rows, k, generator=g).bfloat16(), torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    with torch.no_grad():
        got = skinny_linear(x, w, b)
    assert got is not None and got.dtype == torch.bfloat16 and got.shape == (rows, n)
    exact = reference(x.float(), w.float(), None if b is None else b.float()).double()  # the float32 product
    ulp = exact.abs().clamp(min=1e-30) * 2.0**-7  # one bfloat16 step (8 significant bits)
    assert ((got.double() - exact).abs() <= ulp + 1e-5 * k**0.5).all()
    torch.testing.assert_close(got, F.linear(x, w, b), rtol=1e-2, atol=1e-2 * k**0.5)
