"""Radial basis functions, the smooth cutoff envelope and the radial MLP ("radial profile").

Every per-edge weight in the network is ``RadialMLP(basis(r)) * envelope(r)``, so each edge's
contribution and its first two derivatives go to zero continuously at the cutoff.

The bases named ``*-reference`` are the ones of the reference Equiformer code, kept numerically
identical so that its checkpoints can be converted (see ``equiformer_calc/reference.py``):
``gaussian-reference`` (Graphormer's Gaussians on an affine map of r / r_c, no cutoff at all),
``exp-reference`` (TorchMD-Net's exponential-normal basis times a cosine cutoff) and
``bessel-reference`` (GemNet's spherical Bessel functions times the polynomial envelope).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "PolynomialEnvelope", "BesselBasis", "GaussianBasis", "ReferenceGaussianBasis", "ExpNormalBasis", "RadialMLP",
    "cosine_cutoff", "make_radial_basis", "RADIAL_BASES",
]


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


def cosine_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi r / r_c) + 1) for r < r_c, else 0 (TorchMD-Net's cutoff; its slope does not
    vanish at r_c). (E,) -> (E,)."""
    return 0.5 * (torch.cos(r * math.pi / cutoff) + 1.0) * (r < cutoff).to(r.dtype)


class BesselBasis(nn.Module):
    """sqrt(2/r_c) sin(n pi r / r_c) / r, n = 1..num_basis, with trainable frequencies. (E,) -> (E, B).

    With ``envelope_p`` the basis is multiplied by :class:`PolynomialEnvelope` (GemNet's radial
    basis, which the reference Equiformer uses for its Bessel variants).
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = True, envelope_p: int | None = None) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        freqs = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / self.cutoff
        self.freqs = nn.Parameter(freqs, requires_grad=trainable)
        self.prefactor = math.sqrt(2.0 / self.cutoff)
        self.envelope = None if envelope_p is None else PolynomialEnvelope(cutoff, envelope_p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if self.envelope is not None:
            return self.envelope(r).unsqueeze(-1) * self._bessel(r)
        return self._bessel(r)

    def _bessel(self, r: torch.Tensor) -> torch.Tensor:
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


class ReferenceGaussianBasis(nn.Module):
    """The reference Equiformer's Gaussian basis (Graphormer's): x = w r / r_c + b, then
    exp(-((x - mean_k) / s_k)^2 / 2) / (sqrt(2 pi) s_k) with s_k = |std_k| + 1e-5 and pi taken as
    3.14159, as the reference does. Learnable ``mean``, ``std`` (1, B), ``weight``, ``bias`` (1, 1).
    It has no cutoff: edges just inside the cutoff still carry full weight. (E,) -> (E, B)."""

    _PI = 3.14159  # the reference's value, kept for identical numbers

    def __init__(self, cutoff: float, num_basis: int = 128) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.mean = nn.Parameter(torch.linspace(0.0, 1.0, num_basis).unsqueeze(0))
        self.std = nn.Parameter(torch.full((1, num_basis), 1.0 / num_basis**0.5))
        self.weight = nn.Parameter(torch.ones(1, 1))
        self.bias = nn.Parameter(torch.zeros(1, 1))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = self.weight * (r / self.cutoff).unsqueeze(-1) + self.bias
        std = self.std.abs() + 1e-5
        return torch.exp(-0.5 * ((x - self.mean) / std) ** 2) / ((2 * self._PI) ** 0.5 * std)


class ExpNormalBasis(nn.Module):
    """TorchMD-Net's exponential-normal basis exp(-beta (exp(-alpha r) - mu)^2). (E,) -> (E, B).

    ``cosine`` multiplies it by :func:`cosine_cutoff`, as TorchMD-Net and the reference Equiformer do.
    """

    def __init__(self, cutoff: float, num_basis: int = 32, cosine: bool = False) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.alpha = 5.0 / self.cutoff
        self.cosine = bool(cosine)
        start = math.exp(-self.cutoff)
        self.means = nn.Parameter(torch.linspace(start, 1.0, num_basis))
        self.betas = nn.Parameter(torch.full((num_basis,), (2.0 / num_basis * (1.0 - start)) ** -2))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        out = torch.exp(-self.betas * (torch.exp(-self.alpha * r.unsqueeze(-1)) - self.means).pow(2))
        if self.cosine:
            out = cosine_cutoff(r, self.cutoff).unsqueeze(-1) * out
        return out


#: radial basis names accepted by :func:`make_radial_basis` (and ``EquiformerConfig.radial_basis``)
RADIAL_BASES = ("bessel", "gaussian", "exp", "bessel-reference", "gaussian-reference", "exp-reference")


def make_radial_basis(kind: str, cutoff: float, num_basis: int, envelope_p: int = 5) -> nn.Module:
    """Factory for the basis named ``kind`` (one of :data:`RADIAL_BASES`); ``envelope_p`` is the
    exponent of the envelope that ``bessel-reference`` includes."""
    if kind == "bessel":
        return BesselBasis(cutoff, num_basis)
    if kind == "gaussian":
        return GaussianBasis(cutoff, num_basis)
    if kind == "exp":
        return ExpNormalBasis(cutoff, num_basis)
    if kind == "bessel-reference":
        return BesselBasis(cutoff, num_basis, envelope_p=envelope_p)
    if kind == "gaussian-reference":
        return ReferenceGaussianBasis(cutoff, num_basis)
    if kind == "exp-reference":
        return ExpNormalBasis(cutoff, num_basis, cosine=True)
    raise ValueError(f"unknown radial basis {kind!r}; choose one of {list(RADIAL_BASES)}")


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
