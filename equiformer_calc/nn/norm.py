"""Equivariant layer norm over irreps blocks."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

__all__ = ["EquivariantLayerNorm"]


class EquivariantLayerNorm(nn.Module):
    """Per irrep block: centre the 0e scalars, divide by the RMS over channels and components,
    scale by a per-channel weight, add a bias on 0e scalars. (N, irreps.dim) -> (N, irreps.dim)."""

    def __init__(self, irreps: str | o3.Irreps, eps: float = 1e-5) -> None:
        super().__init__()
        self.irreps = o3.Irreps(irreps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.irreps.num_irreps))
        num_scalar = sum(mul for mul, ir in self.irreps if ir.l == 0 and ir.p == 1)
        self.bias = nn.Parameter(torch.zeros(num_scalar))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        iw = 0
        ib = 0
        for (mul, ir), sl in zip(self.irreps, self.irreps.slices()):
            field = x[:, sl].reshape(-1, mul, ir.dim)
            if ir.l == 0 and ir.p == 1:
                field = field - field.mean(dim=1, keepdim=True)
            inv_rms = (field.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps).rsqrt()
            field = field * inv_rms * self.weight[iw : iw + mul].view(1, mul, 1)
            iw += mul
            if ir.l == 0 and ir.p == 1:
                field = field + self.bias[ib : ib + mul].view(1, mul, 1)
                ib += mul
            out.append(field.reshape(-1, mul * ir.dim))
        return torch.cat(out, dim=-1)
