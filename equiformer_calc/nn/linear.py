"""Equivariant linear layers over irreps (e3nn's ``o3.Linear``, biases on 0e scalars)."""

from __future__ import annotations

from e3nn import o3

__all__ = ["IrrepsLinear"]


class IrrepsLinear(o3.Linear):
    """Mixes channels within each irrep type; ``bias=True`` adds a bias to 0e outputs only.
    (N, irreps_in.dim) -> (N, irreps_out.dim). Weights are normalised by the fan-in (e3nn)."""

    def __init__(self, irreps_in: str | o3.Irreps, irreps_out: str | o3.Irreps, bias: bool = True) -> None:
        irreps_out = o3.Irreps(irreps_out)
        biases = [bias and ir.l == 0 and ir.p == 1 for _, ir in irreps_out] if bias else False
        super().__init__(o3.Irreps(irreps_in), irreps_out, biases=biases)
