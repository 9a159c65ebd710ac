"""Short-range nuclear repulsion: the ZBL screened-Coulomb pair potential, smoothly switched off.

A learned potential has no data where atoms nearly overlap and can predict anything there
(typically a mild attraction); a physical pair term that dominates at short range keeps MD and
relaxations from collapsing atoms. The universal ZBL potential (Ziegler, Biersack and Littmark,
*The Stopping and Range of Ions in Solids*, 1985) is the usual choice (MACE and NequIP ship it):

    E(r) = k_e Z_i Z_j / r * phi(r / a),   a = 0.8854 a_0 / (Z_i^0.23 + Z_j^0.23),
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x) + 0.02817 e^(-0.20162 x),

multiplied here by the polynomial envelope u(r / r_s) (1 at r = 0, 0 with vanishing first and
second derivatives at r_s), r_s = ``cutoff_ratio`` * (r_cov_i + r_cov_j). Both factors decrease
monotonically, so the switched term is repulsive (dE/dr <= 0) at every distance and exactly zero
beyond r_s: near-equilibrium bonds (>= ~0.8 of the covalent-radii sum) are left to the network.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .radial import PolynomialEnvelope

__all__ = ["ZBLRepulsion"]

#: e^2 / (4 pi eps_0) in eV Angstrom
COULOMB_EV_A = 14.399645478425668
#: Bohr radius in Angstrom
BOHR_A = 0.529177210903
_PHI_C = (0.18175, 0.50986, 0.28022, 0.02817)
_PHI_D = (3.19980, 0.94229, 0.40290, 0.20162)


class ZBLRepulsion(nn.Module):
    """Switched ZBL pair energies of directed edges.

    ``atomic_numbers`` and ``covalent_radii`` (Angstrom) are given per species (the model's
    element order). ``forward(species_i, species_j, r)`` takes (E,) species indices of both ends and
    (E,) distances (float64 recommended) and returns the (E,) energy of each *pair*; with a full
    (both directions) edge list, give each directed edge half of it. The module has no trainable
    parameters and nothing in its state dict.
    """

    def __init__(self, atomic_numbers: Sequence[int], covalent_radii: Sequence[float], cutoff_ratio: float = 0.75, p: int = 6) -> None:
        super().__init__()
        if not cutoff_ratio > 0:
            raise ValueError(f"cutoff_ratio must be positive, got {cutoff_ratio}")
        z = torch.as_tensor(list(atomic_numbers), dtype=torch.float64)
        radii = torch.as_tensor(list(covalent_radii), dtype=torch.float64)
        if z.shape != radii.shape or z.ndim != 1:
            raise ValueError("atomic_numbers and covalent_radii must be 1-D and of equal length")
        self.cutoff_ratio = float(cutoff_ratio)
        self.register_buffer("z", z, persistent=False)
        self.register_buffer("z_pow", z.pow(0.23), persistent=False)
        self.register_buffer("radii", radii, persistent=False)
        self.envelope = PolynomialEnvelope(1.0, p)

    def _apply(self, fn, *args, **kwargs):  # type: ignore[override]
        # the constants stay float64 whatever dtype the model is cast to (pair energies are float64)
        super()._apply(fn, *args, **kwargs)
        for name in ("z", "z_pow", "radii"):
            self._buffers[name] = self._buffers[name].to(dtype=torch.float64)
        return self

    @property
    def max_cutoff(self) -> float:
        """The largest switch-off distance over all element pairs (Angstrom)."""
        return float(2.0 * self.cutoff_ratio * self.radii.max()) if self.radii.numel() else 0.0

    def switch_distance(self, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """r_s of each pair (Angstrom)."""
        return self.cutoff_ratio * (self.radii[species_i] + self.radii[species_j])

    def forward(self, species_i: torch.Tensor, species_j: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        zi, zj = self.z[species_i].to(r.dtype), self.z[species_j].to(r.dtype)
        a = 0.8854 * BOHR_A / (self.z_pow[species_i] + self.z_pow[species_j]).to(r.dtype)
        x = r / a
        phi = sum(c * torch.exp(-d * x) for c, d in zip(_PHI_C, _PHI_D))
        energy = COULOMB_EV_A * zi * zj / r * phi
        return energy * self.envelope(r / self.switch_distance(species_i, species_j).to(r.dtype))

    def extra_repr(self) -> str:
        return f"cutoff_ratio={self.cutoff_ratio}, max_cutoff={self.max_cutoff:.3f} A"
