"""A small random point cloud as the inputs of the attention and the block: node features, spherical
harmonics, radial basis and envelope of every pair within the cutoff (float64)."""

from __future__ import annotations

import torch
from e3nn import o3

from equiformer_calc.nn import PolynomialEnvelope, make_radial_basis, sh_irreps, with_parity

CUTOFF = 3.0
IRREPS_NODE = with_parity("8x0e+4x1e+2x2e", True)
IRREPS_SH = sh_irreps(2, True)
IRREPS_HEAD = with_parity("4x0e+2x1e", True)
NUM_BASIS = 8


def cloud(n: int = 9, seed: int = 0) -> dict[str, torch.Tensor]:
    """``pos`` (n, 3) in a 3 A box, ``x`` (n, dim) random node features, the edges of all pairs closer
    than :data:`CUTOFF` (``edge_index`` rows [src, dst]) and their ``vec``, ``sh``, ``basis``, ``envelope``."""
    g = torch.Generator().manual_seed(seed)
    pos = 3.0 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    x = torch.randn(n, IRREPS_NODE.dim, generator=g, dtype=torch.float64)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (i != j) & ((pos[j] - pos[i]).norm(dim=-1) < CUTOFF)
    edge_index = torch.stack([j[keep], i[keep]])  # [src j, dst i]
    return dict(pos=pos, x=x, edge_index=edge_index, **edge_features(pos, edge_index))


def edge_features(pos: torch.Tensor, edge_index: torch.Tensor) -> dict[str, torch.Tensor]:
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    r = vec.norm(dim=-1)
    basis = make_radial_basis("gaussian", CUTOFF, NUM_BASIS, 5).double()(r)
    return dict(vec=vec, sh=o3.spherical_harmonics(IRREPS_SH, vec, True, "component"), basis=basis,
                envelope=PolynomialEnvelope(CUTOFF, 5)(r))
