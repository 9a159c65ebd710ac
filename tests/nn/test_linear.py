"""IrrepsLinear equals e3nn's o3.Linear (the oracle) given the same weights."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from equiformer_calc.nn import IrrepsLinear


@pytest.mark.parametrize(
    "irreps_in, irreps_out",
    [("8x0e+4x1o+2x2e", "6x0e+3x1o+5x2e"), ("3x0e+2x0e+4x1o+1x1o", "5x0e+2x1o+3x1e"), ("4x1o+1x0e", "2x0e+3x1o")],
)
def test_equals_e3nn_linear(irreps_in, irreps_out):
    ours = IrrepsLinear(irreps_in, irreps_out, bias=True).double()
    oracle = o3.Linear(o3.Irreps(irreps_in), o3.Irreps(irreps_out),
                       biases=[ir.l == 0 and ir.p == 1 for _, ir in o3.Irreps(irreps_out)]).double()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in oracle.parameters())
    with torch.no_grad():
        if ours.bias is not None:
            ours.bias.normal_()
            oracle.bias.copy_(ours.bias)
        # e3nn stores one flat weight, its instructions in input-major order
        flat = []
        for ins in (i for i in oracle.instructions if i.i_in >= 0):
            k = [(p.i_in, p.i_out) for p in ours.paths].index((ins.i_in, ins.i_out))
            flat.append(ours.weights[k].reshape(-1))
        oracle.weight.copy_(torch.cat(flat))
    x = torch.randn(7, o3.Irreps(irreps_in).dim, dtype=torch.float64)
    torch.testing.assert_close(ours(x), oracle(x))


def test_equivariant():
    irreps_in, irreps_out = o3.Irreps("4x0e+3x1o+2x2e"), o3.Irreps("2x0e+2x1o+1x2e")
    lin = IrrepsLinear(irreps_in, irreps_out).double()
    x = torch.randn(5, irreps_in.dim, dtype=torch.float64)
    rot = o3.rand_matrix(dtype=torch.float64)
    torch.testing.assert_close(lin(x @ irreps_in.D_from_matrix(rot).T), lin(x) @ irreps_out.D_from_matrix(rot).T)
