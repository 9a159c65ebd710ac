"""Non-linearities: the smooth leaky ReLU of the attention MLP and the equivariant gate."""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

__all__ = ["SmoothLeakyReLU", "make_gate"]


class SmoothLeakyReLU(nn.Module):
    """f(x) = (1+a)/2 x + (1-a)/2 x (2 sigmoid(x) - 1): smooth, slope ``a`` for x << 0, 1 for x >> 0."""

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.a = float(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1 + self.a) * x + 0.5 * (1 - self.a) * x * (2 * torch.sigmoid(x) - 1)


def make_gate(irreps_out: o3.Irreps) -> Gate:
    """A gate whose output is ``irreps_out``: SiLU on 0e (tanh on 0o) scalars, sigmoid gates on l>0.

    Its input irreps (``gate.irreps_in``) are scalars + one 0e gate per l>0 channel + gated
    irreps, which is what the linear layer before it must produce.
    """
    irreps_out = o3.Irreps(irreps_out)
    scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
    gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
    acts = [nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)
