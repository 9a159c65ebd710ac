"""Radial basis functions, the smooth cutoff envelope and the radial MLP ("radial profile").

Every per-edge weight in the network is ``RadialMLP(basis(r)) * envelope(r)``, so each edge's
contribution and its first two derivatives go to zero continuously at the cutoff.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PolynomialEnvelope", "BesselBasis", "GaussianBasis", "ExpNormalBasis", "RadialMLP", "make_radial_basis"]


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff c(r) of DimeNet: 1 at r=0, 0 with vanishing first and second derivative at r_c.

    c(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_c, zero for x >= 1.
    Input (E,) distances, output (E,).
    """

    def __init__(self, cutoff: float, p: int = 5) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.cutoff
        c = (
            1.0
            - (p + 1) * (p + 2) / 2 * x.pow(p)
            + p * (p + 2) * x.pow(p + 1)
            - p * (p + 1) / 2 * x.pow(p + 2)
        )
        return torch.where(x < 1.0, c, torch.zeros_like(c))


class BesselBasis(nn.Module):
    """sqrt(2/r_c) sin(n pi r / r_c) / r, n = 1..num_basis, with trainable frequencies. (E,) -> (E, B)."""

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = True) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        freqs = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / self.cutoff
        self.freqs = nn.Parameter(freqs, requires_grad=trainable)
        self.prefactor = math.sqrt(2.0 / self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs * r) / r


class GaussianBasis(nn.Module):
    """Gaussians with learnable centres and widths, as the reference's 128-function basis. (E,) -> (E, B)."""

    def __init__(self, cutoff: float, num_basis: int = 128) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.means = nn.Parameter(torch.linspace(0.0, cutoff, num_basis))
        self.log_widths = nn.Parameter(torch.full((num_basis,), math.log(cutoff / num_basis * 2.0)))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = (r.unsqueeze(-1) - self.means) / self.log_widths.exp()
        return torch.exp(-0.5 * x.pow(2)) / math.sqrt(2 * math.pi)


class ExpNormalBasis(nn.Module):
    """TorchMD-Net's exponential-normal basis exp(-beta (exp(-alpha r) - mu)^2). (E,) -> (E, B)."""

    def __init__(self, cutoff: float, num_basis: int = 32) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.alpha = 5.0 / self.cutoff
        start = math.exp(-self.cutoff)
        self.means = nn.Parameter(torch.linspace(start, 1.0, num_basis))
        self.betas = nn.Parameter(torch.full((num_basis,), (2.0 / num_basis * (1.0 - start)) ** -2))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return torch.exp(-self.betas * (torch.exp(-self.alpha * r) - self.means).pow(2))


def make_radial_basis(kind: str, cutoff: float, num_basis: int) -> nn.Module:
    """Factory for the basis named ``kind`` in {'bessel', 'gaussian', 'exp'}."""
    kinds = {"bessel": BesselBasis, "gaussian": GaussianBasis, "exp": ExpNormalBasis}
    if kind not in kinds:
        raise ValueError(f"unknown radial basis {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind](cutoff, num_basis)


class RadialMLP(nn.Module):
    """basis -> [Linear -> LayerNorm -> SiLU] * len(hidden) -> Linear(no bias) + offset. (E, B) -> (E, out)."""

    def __init__(self, num_basis: int, hidden: tuple[int, ...] | list[int], num_out: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = num_basis
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.SiLU()]
            width = h
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(width, num_out, bias=False)
        self.offset = nn.Parameter(torch.zeros(num_out))
        self.num_out = num_out

    def forward(self, basis: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(basis)) + self.offset
