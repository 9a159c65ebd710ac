"""Small helpers on e3nn irreps: parity labelling."""

from __future__ import annotations

from e3nn import o3

__all__ = ["with_parity", "sh_irreps"]


def with_parity(irreps: str | o3.Irreps, e3: bool) -> o3.Irreps:
    """Relabel parities: E(3) (``e3=True``) gives l even -> 'e', l odd -> 'o' (the parity of
    spherical harmonics, so features of a mirror-invariant model); SE(3) labels every irrep 'e'."""
    irreps = o3.Irreps(irreps)
    return o3.Irreps([(mul, (ir.l, (-1) ** ir.l if e3 else 1)) for mul, ir in irreps])


def sh_irreps(lmax: int, e3: bool) -> o3.Irreps:
    """Irreps of the spherical harmonics 0..lmax, parity-labelled as in :func:`with_parity`."""
    return with_parity(o3.Irreps.spherical_harmonics(lmax), e3)
