"""The fast depthwise tensor product equals the plain e3nn layer (the oracle) to 1e-5 relative."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from equiformer_calc.nn import DepthwiseTensorProduct, reference_tensor_product, sh_irreps, with_parity


@pytest.mark.parametrize(
    "irreps_in, lmax, target, e3",
    [
        ("8x0e+4x1e+2x2e", 2, "8x0e+4x1e+2x2e", True),
        ("8x0e+4x1e+2x2e", 2, "8x0e+4x1e+2x2e", False),
        ("6x0e+3x1e+2x2e+1x3e", 3, "6x0e+3x1e+2x2e+1x3e", True),
        ("16x0e+8x1e", 1, "16x0e+8x1e", False),
        ("4x0e+4x1e+4x2e", 2, "4x0e+2x1e", True),  # paths to dropped irreps, 0e always kept
    ],
)
def test_fast_path_equals_e3nn_oracle(irreps_in, lmax, target, e3):
    irreps_in, target = with_parity(irreps_in, e3), with_parity(target, e3)
    irreps_sh = sh_irreps(lmax, e3)
    fast = DepthwiseTensorProduct(irreps_in, irreps_sh, target).double()
    oracle = reference_tensor_product(irreps_in, irreps_sh, target).double()
    assert fast.irreps_out == oracle.irreps_out
    assert fast.weight_numel == oracle.weight_numel
    g = torch.Generator().manual_seed(0)
    n = 37
    x = torch.randn(n, irreps_in.dim, generator=g, dtype=torch.float64, requires_grad=True)
    vec = torch.randn(n, 3, generator=g, dtype=torch.float64)
    sh = o3.spherical_harmonics(irreps_sh, vec, normalize=True, normalization="component").requires_grad_(True)
    w = torch.randn(n, fast.weight_numel, generator=g, dtype=torch.float64, requires_grad=True)
    a, b = fast(x, sh, w), oracle(x, sh, w)
    assert a.abs().max() > 0.1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    # gradients too: forces go through the backward of this layer
    ga = torch.autograd.grad((a * torch.sin(b.detach())).sum(), (x, sh, w))
    gb = torch.autograd.grad((b * torch.sin(b.detach())).sum(), (x, sh, w))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5 * v.abs().max().item())


def test_shared_weights_broadcast():
    irreps = with_parity("4x0e+2x1e", True)
    sh = sh_irreps(1, True)
    tp = DepthwiseTensorProduct(irreps, sh, irreps, internal_weights=True)
    x = torch.randn(5, irreps.dim)
    y = o3.spherical_harmonics(sh, torch.randn(5, 3), True, "component")
    expected = tp(x, y, tp.weight.expand(5, -1))
    torch.testing.assert_close(tp(x, y), expected)


def test_zero_edges():
    irreps = with_parity("4x0e+2x1e", True)
    sh = sh_irreps(2, True)
    tp = DepthwiseTensorProduct(irreps, sh, irreps)
    out = tp(torch.zeros(0, irreps.dim), torch.zeros(0, sh.dim), torch.zeros(0, tp.weight_numel))
    assert out.shape == (0, tp.irreps_out.dim)
