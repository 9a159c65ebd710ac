"""Equivariant layer norm over irreps blocks."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

__all__ = ["EquivariantLayerNorm"]


class EquivariantLayerNorm(nn.Module):
    """Equivariant layer norm. (N, irreps.dim) -> (N, irreps.dim).

    ``mode="block"`` (the paper): per irrep block, centre the 0e scalars and divide by the RMS over
    the block's channels and components. At high-symmetry sites (atoms of a perfect surface or
    crystal) the l>0 blocks vanish by symmetry, and x / sqrt(mean(x^2) + eps) then acts like a
    sign function of a tiny displacement: forces get huge curvature and MD loses energy.
    ``mode="smooth"`` (this project's default) centres the scalars and divides every block by one
    RMS over all components of the node's feature vector, so vanishing l>0 blocks stay small and
    the map is smooth. Both then scale by a per-channel weight and add a bias to 0e scalars.
    """

    def __init__(self, irreps: str | o3.Irreps, eps: float = 1e-5, mode: str = "smooth") -> None:
        super().__init__()
        if mode not in ("block", "smooth"):
            raise ValueError(f"layer norm mode must be 'block' or 'smooth', got {mode!r}")
        self.mode = mode
        self.irreps = o3.Irreps(irreps)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(self.irreps.num_irreps))
        num_scalar = sum(mul for mul, ir in self.irreps if ir.l == 0 and ir.p == 1)
        self.bias = nn.Parameter(torch.zeros(num_scalar))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "smooth":
            return self._forward_smooth(x)
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

    def _forward_smooth(self, x: torch.Tensor) -> torch.Tensor:
        fields = []
        for (mul, ir), sl in zip(self.irreps, self.irreps.slices()):
            field = x[:, sl].reshape(-1, mul, ir.dim)
            if ir.l == 0 and ir.p == 1:
                field = field - field.mean(dim=1, keepdim=True)
            fields.append(field)
        sq = sum(f.pow(2).sum(dim=(1, 2)) for f in fields)
        inv_rms = (sq / self.irreps.dim + self.eps).rsqrt().view(-1, 1, 1)
        out = []
        iw = 0
        ib = 0
        for (mul, ir), field in zip(self.irreps, fields):
            field = field * inv_rms * self.weight[iw : iw + mul].view(1, mul, 1)
            iw += mul
            if ir.l == 0 and ir.p == 1:
                field = field + self.bias[ib : ib + mul].view(1, mul, 1)
                ib += mul
            out.append(field.reshape(-1, mul * ir.dim))
        return torch.cat(out, dim=-1)
