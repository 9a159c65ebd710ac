"""DFT-D3 dispersion added to the model's energy, forces and stress (simple-dftd3's library).

The model is trained on (or distilled from) plain DFT or EMT labels without a dispersion term;
adsorption energies are usually quoted with one. :class:`D3` evaluates Grimme's D3 correction
for a damping function and the functional the labels came from (``xc``), and
:class:`DispersionPredictor` adds it to every result of a
:class:`~equiformer_calc.predictor.Predictor`. ``EquiformerCalculator(dispersion="d3bj",
xc="pbe")`` and ``equiformer-calc relax/md/screen/serve/ipi/lammps --dispersion d3bj`` use these.

Why simple-dftd3 (``pip install dftd3``) and not torch-dftd: it is the reference implementation,
agrees with torch-dftd's two-body term to 1e-5 eV and 1e-8 eV/A, was 60-180x faster on CPU here
(a 108-atom Cu bulk: 40 ms against 2.5 s), and its three-body forces match finite differences
where torch-dftd's are off by 0.1 eV/A (``benchmarks/d3_choice.py``, ``benchmarks/RESULTS.md``).

Per-atom energies (``energies``) stay model-only: D3 is a pair (and optionally three-body) sum
with no unique split between atoms, so ``sum(energies) != energy`` when dispersion is on.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np
from ase.stress import full_3x3_to_voigt_6_stress

from ..graph import Structure, structure_from_atoms
from ..protocols import PredictorLike

__all__ = ["D3", "DispersionPredictor", "DAMPINGS", "D3_MAX_Z", "D3ElementError", "check_d3_elements", "parse_dispersion"]

log = logging.getLogger(__name__)

#: accepted ``dispersion`` names -> simple-dftd3 damping parameter class names; add ``-atm`` for
#: the three-body Axilrod-Teller-Muto term (off by default, as in VASP's IVDW=11/12)
DAMPINGS = {
    "d3bj": "RationalDampingParam",
    "d3zero": "ZeroDampingParam",
    "d3bjm": "ModifiedRationalDampingParam",
    "d3zerom": "ModifiedZeroDampingParam",
}

#: simple-dftd3 has D3 reference data for H to Lr (Z 1-103). Probed on dftd3 1.7.0 with a dimer of
#: each element at 3 A: Z 1-103 give finite non-zero energies; Rf-Nh (104-113) and Ts (117) give
#: 0.0 or garbage (Db ~1e-117; Sg NaN in one process, -1.7e-10 in another), and Fl, Mc, Lv and Og
#: (114-116, 118) crash or hang the library.
D3_MAX_Z = 103


class D3ElementError(ValueError):
    """A structure has elements outside D3's parameter table (see :data:`D3_MAX_Z`)."""


def check_d3_elements(numbers: Any) -> None:
    """Raise :class:`D3ElementError` naming the elements D3 has no parameters for (before the
    library is called: it crashes on some of them and silently returns 0 for others)."""
    from ase.data import chemical_symbols

    z = np.unique(np.asarray(numbers, dtype=np.int64))
    bad = z[(z < 1) | (z > D3_MAX_Z)]
    if bad.size:
        names = ", ".join(chemical_symbols[int(b)] if 0 < b < len(chemical_symbols) else f"Z={int(b)}" for b in bad)
        raise D3ElementError(f"D3 dispersion has no parameters for {names}: simple-dftd3 covers H to Lr "
                             f"(Z 1-{D3_MAX_Z})")


_INSTALL_HINT = "D3 dispersion needs simple-dftd3's Python package: pip install 'equiformer-calc[d3]' (or pip install dftd3)"


def parse_dispersion(name: str | None) -> tuple[str, bool] | None:
    """``None`` / ``"none"`` -> None; ``"d3bj"`` -> ("d3bj", False); ``"d3bj-atm"`` -> ("d3bj", True).

    Raises ``ValueError`` naming the accepted values for anything else."""
    if name is None or str(name).lower() in ("", "none", "off"):
        return None
    key = str(name).lower()
    atm = key.endswith("-atm")
    if atm:
        key = key[: -len("-atm")]
    if key not in DAMPINGS:
        choices = ", ".join(sorted(DAMPINGS) + [k + "-atm" for k in sorted(DAMPINGS)])
        raise ValueError(f"unknown dispersion {name!r}; choose one of: none, {choices}")
    return key, atm


class D3:
    """Grimme's DFT-D3 correction for one damping function and functional.

    ``D3("d3bj", xc="pbe")`` uses the published PBE-D3(BJ) parameters; ``xc`` is any functional
    simple-dftd3 has parameters for (pbe, rpbe, revpbe, b3lyp, pbe0, tpss, scan, ...).
    :meth:`compute` returns energy (eV), forces (eV/A) and, for 3D-periodic structures, stress
    (eV/A^3, Voigt, ASE sign). Real-space cutoffs are the library's defaults (pairs 60 bohr,
    coordination numbers and three-body 40 bohr), so the numbers are everyone else's D3. Those
    cutoffs are sharp: the energy jumps by ~1e-7 eV whenever a pair crosses 60 bohr, which shows
    in finite differences of the stress (not in MD). ``smooth_width`` (Angstrom, > 0) switches the
    pair and three-body terms off smoothly over that width instead (the library's ``width2`` /
    ``width3``; 2 A changes a Cu bulk energy by ~0.06 meV/atom). Not thread-safe: one instance
    per thread.
    """

    def __init__(self, dispersion: str = "d3bj", xc: str = "pbe", smooth_width: float = 0.0) -> None:
        parsed = parse_dispersion(dispersion)
        if parsed is None:
            raise ValueError("D3 needs a damping name such as 'd3bj'")
        self.damping, self.three_body = parsed
        self.xc = str(xc).lower()
        if not smooth_width >= 0:
            raise ValueError(f"smooth_width must be >= 0 Angstrom, got {smooth_width}")
        self.smooth_width = float(smooth_width)
        try:
            from dftd3 import interface
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(_INSTALL_HINT) from exc
        self._interface = interface
        param_class = getattr(interface, DAMPINGS[self.damping])
        try:
            self._param = param_class(method=self.xc, atm=self.three_body)
        except RuntimeError as exc:
            raise ValueError(f"simple-dftd3 has no {self.damping} parameters for xc={xc!r}: {exc}") from None
        self._model: Any = None
        self._key: tuple | None = None

    @property
    def name(self) -> str:
        return self.damping + ("-atm" if self.three_body else "")

    def __repr__(self) -> str:
        smooth = f", smooth_width={self.smooth_width}" if self.smooth_width else ""
        return f"D3({self.name!r}, xc={self.xc!r}{smooth})"

    def _dispersion_model(self, s: Structure) -> Any:
        from ase.units import Bohr

        key = (s.numbers.tobytes(), tuple(bool(p) for p in s.pbc))
        positions = s.positions / Bohr
        cell = s.cell / Bohr
        if self._model is not None and key == self._key:
            try:
                self._model.update(positions, cell)
                return self._model
            except RuntimeError:
                self._model = None
        try:
            self._model = self._interface.DispersionModel(s.numbers, positions, cell, np.asarray(s.pbc, dtype=bool))
            if self.smooth_width > 0:
                w = self.smooth_width / Bohr
                self._model.set_realspace_cutoff(disp2=60.0, disp3=40.0, cn=40.0, width2=w, width3=w)
        except RuntimeError as exc:
            raise ValueError(f"simple-dftd3 cannot set up this structure: {exc}") from None
        self._key = key
        return self._model

    def compute(self, structure: Structure | Any, stress: bool | None = None) -> dict[str, Any]:
        """D3 ``energy`` (float), ``forces`` (N, 3) and, when ``stress`` (default: the structure is
        periodic in 3D), ``stress`` (6,) for one structure (``ase.Atoms`` or a validated
        :class:`~equiformer_calc.graph.Structure`)."""
        from ase.units import Bohr, Hartree

        s = structure if isinstance(structure, Structure) else structure_from_atoms(structure)
        check_d3_elements(s.numbers)
        periodic = bool(np.all(s.pbc))
        want_stress = periodic if stress is None else bool(stress)
        if want_stress and not periodic:
            raise ValueError("D3 stress needs a structure periodic in all three directions")
        try:
            res = self._dispersion_model(s).get_dispersion(param=self._param, grad=True)
        except RuntimeError as exc:
            raise ValueError(f"simple-dftd3 could not evaluate the structure: {exc}") from None
        out: dict[str, Any] = {
            "energy": float(res["energy"]) * Hartree,
            "forces": -np.asarray(res["gradient"], dtype=np.float64) * (Hartree / Bohr),
        }
        if want_stress:
            volume = abs(float(np.linalg.det(s.cell)))
            sigma = np.asarray(res["virial"], dtype=np.float64) * (Hartree / volume)
            out["stress"] = full_3x3_to_voigt_6_stress(sigma)
        return out

    def add_to(self, result: dict[str, Any], structure: Structure | Any) -> dict[str, Any]:
        """Add the D3 term to one model result in place (energy, free_energy, forces, stress where
        present; ``energies`` untouched) and return it."""
        d3 = self.compute(structure, stress="stress" in result)
        for key in ("energy", "free_energy"):
            if key in result:
                result[key] = float(result[key]) + d3["energy"]
        if "forces" in result:
            result["forces"] = np.asarray(result["forces"]) + d3["forces"]
        if "stress" in result:
            result["stress"] = np.asarray(result["stress"]) + d3["stress"]
        return result


class DispersionPredictor:
    """A :class:`~equiformer_calc.predictor.Predictor` whose results include a D3 term.

    Everything else (``to_structure``, ``graph``, ``model``, ``elements``, ``cutoff``, ``dtype``,
    ``device``, ``max_atoms_per_batch``) is the wrapped predictor's, so the HTTP service and
    batched workflows take it in place of a plain predictor.
    """

    def __init__(self, predictor: PredictorLike, d3: D3) -> None:
        self.predictor = predictor
        self.d3 = d3

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def predict(
        self, structures: Sequence[Any] | Iterable[Any], properties: Sequence[str] = ("energy", "forces"), **kwargs: Any
    ) -> list[dict[str, Any]]:
        items = list(structures)
        results = self.predictor.predict(items, properties=properties, **kwargs)
        return [self.d3.add_to(r, s) for r, s in zip(results, items)]
