"""Free energies of adsorbates and gas references, and reaction schemes on the computational hydrogen
electrode (CHE): step free energies, limiting potentials, volcano plots and free-energy diagrams.

Free energies (the vibrations come from :mod:`~equiformer_calc.workflows.vibrations`, batched):

* adsorbates: harmonic (ASE's ``HarmonicThermo``): ``G - E = ZPE + int Cv dT - T S_vib``; imaginary
  modes are dropped and counted, real modes below ``soft_floor`` cm^-1 are raised to it (a soft
  frustrated translation would otherwise dominate the entropy) and counted;
* gas molecules: ideal gas (ASE's ``IdealGasThermo``) with the geometry, rotational symmetry number
  and spin of :func:`load_data` (``gases``) at the temperature and pressure asked for (water at its
  vapour pressure, 0.035 bar, by default, as in the CHE);
* adsorption free energies against the same references as the electronic ones (OC20's: mu_H =
  G(H2)/2, mu_O = G(H2O) - G(H2), mu_C = G(CO) - mu_O, mu_N = G(N2)/2):
  ``g_ads = e_ads + (G - E)_ads - sum_X n_X (G - E)_mu_X``.

Schemes are data (``schemes`` of ``data/catalysis.yaml``; add your own file): a list of states, each
a set of species (``X*`` adsorbates, gas molecules, ``H+e-`` proton-electron pairs). Because every
state holds the same elements, the chemical potentials of the references cancel in each step, and a
step's free energy needs only the adsorption free energies and the formation free energies of gases
other than the references (O2 and CO2: from experiment, stated in the data). On the CHE a pair costs
``G(H2)/2 - eU``, so an electrochemical step's free energy moves by ``-/+ eU``; the limiting potential
is the one at which every electrochemical step is downhill.

All numbers depend on the accuracy of the model that made the energies and Hessians (the shipped
default is 0.6-0.9 eV off its own teacher on adsorption energies today).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms
from ase.formula import Formula
from ase.thermochemistry import HarmonicThermo, IdealGasThermo
from ase.units import invcm

from ..surfaces import reference_potentials
from ._common import new_figure, save_figure, write_csv
from .vibrations import SOFT_THRESHOLD_CM, VibrationJournal, VibrationResult, vibrate_many

__all__ = [
    "load_data", "Scheme", "load_schemes", "AdsorbateFreeEnergy", "GasFreeEnergy", "adsorbate_free_energies",
    "gas_free_energies", "reference_corrections", "SchemeResult", "che_analysis", "che_table", "plot_volcano",
    "plot_free_energy_diagram", "write_che_outputs", "volcano_line", "PAIR", "STANDARD_PRESSURE", "FREE_ENERGY_COLUMNS",
    "screen_free_energies", "g_ads_by_surface", "write_summary_csv", "read_summary_csv", "adsorption_free_energy",
]

log = logging.getLogger(__name__)

#: the proton-electron pair of the CHE in scheme states
PAIR = "H+e-"
STANDARD_PRESSURE = 101325.0


# ----------------------------------------------------------------------------------------------- data
def load_data(*paths: str | os.PathLike) -> dict[str, Any]:
    """The package's ``data/catalysis.yaml`` (gases, formation free energies, schemes), updated by the
    entries of each file in ``paths`` (same form; an entry of the same name replaces the package's)."""
    text = resources.files(__package__).joinpath("data/catalysis.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    for path in paths:
        try:
            extra = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(extra, dict) or set(extra) - set(data):
            raise ValueError(f"{path}: expected a mapping with some of {sorted(data)}, got "
                             f"{sorted(extra) if isinstance(extra, dict) else type(extra).__name__}")
        for section, entries in extra.items():
            if not isinstance(entries, dict):
                raise ValueError(f"{path}: section {section!r} must be a mapping of names to entries")
            data[section] = {**data.get(section, {}), **entries}
    return data


def _elements(species: str) -> dict[str, int]:
    """Element counts of a species: ``X*`` (adsorbate X), a gas formula, ``H+e-`` (one H), ``*`` (none)."""
    if species == PAIR:
        return {"H": 1}
    if species == "*":
        return {}
    try:
        return dict(Formula(species.rstrip("*")).count())
    except ValueError as exc:
        raise ValueError(f"species {species!r} is not a formula, an adsorbate 'X*' or {PAIR!r}: {exc}") from None


@dataclass
class Scheme:
    """A reaction scheme on the CHE (see the module docstring): ``states`` (species -> count),
    ``direction`` (reduction | oxidation), ``equilibrium_potential`` (V vs RHE), ``descriptor``
    (the adsorbate on the volcano's x axis)."""

    name: str
    states: list[dict[str, float]]
    direction: str
    equilibrium_potential: float
    descriptor: str
    description: str = ""

    @property
    def adsorbates(self) -> list[str]:
        """The adsorbates (without ``*``) the scheme needs."""
        return list(dict.fromkeys(s[:-1] for st in self.states for s in st if s.endswith("*") and s != "*"))

    @property
    def gases(self) -> list[str]:
        return list(dict.fromkeys(s for st in self.states for s in st if not s.endswith("*") and s != PAIR))

    def label(self, k: int) -> str:
        """A short name of state ``k`` (its adsorbate, or its gas molecules)."""
        st = self.states[k]
        ads = [s for s in st if s.endswith("*")]
        if ads:
            return " + ".join(ads)
        return " + ".join(f"{int(n) if n != 1 else ''}{s}" for s, n in st.items() if s != PAIR) or "*"

    def pairs(self, k: int) -> float:
        return float(self.states[k].get(PAIR, 0))

    def validate(self) -> None:
        """Refuse a scheme whose states do not hold the same elements, whose steps move more than one
        proton-electron pair, or whose direction disagrees with its steps."""
        if self.direction not in ("reduction", "oxidation"):
            raise ValueError(f"scheme {self.name}: direction must be reduction or oxidation, got {self.direction!r}")
        if len(self.states) < 2:
            raise ValueError(f"scheme {self.name}: needs at least two states")
        totals = []
        for k, st in enumerate(self.states):
            count: dict[str, float] = {}
            for species, n in st.items():
                for el, m in _elements(species).items():
                    count[el] = count.get(el, 0) + n * m
            totals.append({el: v for el, v in count.items() if v})
        if all(self.pairs(k) == self.pairs(0) for k in range(len(self.states))):
            raise ValueError(f"scheme {self.name}: no step moves a proton-electron pair ({PAIR}): nothing to put on "
                             "the hydrogen electrode")
        for k in range(1, len(totals)):
            if totals[k] != totals[0]:
                raise ValueError(f"scheme {self.name}: state {k} ({self.states[k]}) holds {totals[k]}, state 0 "
                                 f"{totals[0]}: every state must hold the same elements (H+e- counts as H)")
            dn = self.pairs(k) - self.pairs(k - 1)
            if dn not in (-1, 0, 1):
                raise ValueError(f"scheme {self.name}: step {k} moves {abs(dn)} proton-electron pairs; one step "
                                 "moves at most one")
            if dn == (1 if self.direction == "reduction" else -1):
                raise ValueError(f"scheme {self.name}: step {k} {'releases' if dn > 0 else 'consumes'} a pair, "
                                 f"against the scheme's direction ({self.direction})")


def load_schemes(*paths: str | os.PathLike, data: Mapping[str, Any] | None = None) -> dict[str, Scheme]:
    """The schemes of :func:`load_data` (package schemes plus those of ``paths``), validated."""
    data = load_data(*paths) if data is None else data
    out = {}
    for name, entry in data.get("schemes", {}).items():
        try:
            scheme = Scheme(name, [dict(s) for s in entry["states"]], entry["direction"],
                            float(entry["equilibrium_potential"]), str(entry["descriptor"]),
                            entry.get("description", ""))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"scheme {name}: needs states, direction, equilibrium_potential and descriptor "
                             f"({exc})") from None
        scheme.validate()
        out[name] = scheme
    return out


# ------------------------------------------------------------------------------------- free energies
@dataclass
class AdsorbateFreeEnergy:
    """Harmonic free-energy correction of one adsorbate at ``temperature`` (K): ``zpe``,
    ``thermal`` (int Cv dT), ``ts`` (T S_vib) and ``correction`` = zpe + thermal - ts (eV);
    ``n_imaginary`` modes dropped, ``n_soft`` raised to ``soft_floor`` cm^-1."""

    zpe: float
    thermal: float
    ts: float
    correction: float
    temperature: float
    n_imaginary: int
    n_soft: int
    soft_floor: float
    vibrations: VibrationResult | None = None


def _harmonic(vib: VibrationResult, temperature: float, soft_floor: float) -> AdsorbateFreeEnergy:
    real = vib.real_energies
    floor = soft_floor * invcm
    n_soft = int((real < floor).sum())
    energies = np.maximum(real, floor) if soft_floor > 0 else real[real > 0]
    thermo = HarmonicThermo(list(energies), potentialenergy=0.0)
    zpe = float(thermo.get_ZPE_correction())
    u = float(thermo.get_internal_energy(temperature, verbose=False))
    s = float(thermo.get_entropy(temperature, verbose=False))
    return AdsorbateFreeEnergy(zpe, u - zpe, temperature * s, u - temperature * s, temperature,
                               len(vib.imaginary), n_soft, soft_floor, vib)


def adsorbate_free_energies(
    structures: Sequence[Atoms], calculator: Any, temperature: float = 298.15,
    indices: Sequence[Sequence[int] | None] | None = None, soft_floor: float = SOFT_THRESHOLD_CM,
    progress: bool = True, **vib_kwargs: Any,
) -> list[AdsorbateFreeEnergy]:
    """Harmonic free-energy corrections of relaxed adsorbate systems, their vibrations (adsorbate
    atoms by default, slab fixed) evaluated together in batched model calls."""
    _check_conditions(temperature)
    vibs = vibrate_many(structures, indices, calculator=calculator, soft_threshold=soft_floor, progress=progress,
                        **vib_kwargs)
    return [_harmonic(v, temperature, soft_floor) for v in vibs]


@dataclass
class GasFreeEnergy:
    """Ideal-gas free energy of a molecule: ``energy`` (electronic, eV), ``zpe``, ``correction`` =
    G - E at ``temperature`` (K) and ``pressure`` (Pa), and the data used (``geometry``, ``symmetry``,
    ``spin``)."""

    name: str
    energy: float
    zpe: float
    correction: float
    temperature: float
    pressure: float
    geometry: str
    symmetry: int
    spin: float
    n_imaginary: int = 0
    vibrations: VibrationResult | None = None

    @property
    def free_energy(self) -> float:
        return self.energy + self.correction


def _check_conditions(temperature: float, pressure: float = STANDARD_PRESSURE) -> None:
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number of kelvin, got {temperature}")
    if not np.isfinite(pressure) or pressure <= 0:
        raise ValueError(f"pressure must be a positive number of pascal, got {pressure}")


def gas_free_energies(
    molecules: Mapping[str, Atoms], calculator: Any, temperature: float = 298.15, pressure: float = STANDARD_PRESSURE,
    data: Mapping[str, Any] | None = None, progress: bool = True, **vib_kwargs: Any,
) -> dict[str, GasFreeEnergy]:
    """Ideal-gas free energies of relaxed gas ``molecules`` (name -> Atoms; names as in the data's
    ``gases``), all atoms displaced, all molecules in shared batched calls. A molecule's own
    ``pressure`` in the data (water: 0.035 bar) replaces ``pressure``."""
    _check_conditions(temperature, pressure)
    gases = (load_data() if data is None else data)["gases"]
    unknown = [n for n in molecules if n not in gases]
    if unknown:
        raise ValueError(f"no ideal-gas data (geometry, symmetry number, spin) for {unknown}; known: {sorted(gases)} "
                         "(add them in a data file)")
    names = list(molecules)
    vibs = vibrate_many([molecules[n] for n in names], [list(range(len(molecules[n]))) for n in names],
                        calculator=calculator, progress=progress, warn=False, **vib_kwargs)
    out = {}
    for name, vib in zip(names, vibs):
        g = gases[name]
        p = float(g.get("pressure", pressure))
        atoms = molecules[name]
        thermo = IdealGasThermo(list(vib.energies), geometry=g["geometry"], potentialenergy=vib.energy, atoms=atoms,
                                symmetrynumber=int(g["symmetry"]), spin=float(g["spin"]), ignore_imag_modes=True)
        corr = float(thermo.get_gibbs_energy(temperature, p, verbose=False)) - vib.energy
        n_imag = int(getattr(thermo, "n_imag", 0))
        if n_imag:
            log.warning("%s: %d imaginary vibration(s) besides translations and rotations dropped (is the molecule "
                        "relaxed?)", name, n_imag)
        out[name] = GasFreeEnergy(name, vib.energy, float(thermo.get_ZPE_correction()), corr, temperature, p,
                                  g["geometry"], int(g["symmetry"]), float(g["spin"]), n_imag, vib)
    return out


def reference_corrections(gas: Mapping[str, GasFreeEnergy]) -> dict[str, float]:
    """G - E of the element references mu_H, mu_O, mu_C, mu_N (the OC20 scheme applied to the gas
    corrections of H2, H2O, CO, N2)."""
    return reference_potentials({n: g.correction for n, g in gas.items()})


def adsorption_free_energy(e_ads: float, adsorbate_correction: float, symbols: Sequence[str],
                           mu_corrections: Mapping[str, float]) -> float:
    """``e_ads + (G - E)_ads - sum_X n_X (G - E)_mu_X``: the adsorption free energy against the same
    (now free-energy) references as the electronic ``e_ads``."""
    return float(e_ads + adsorbate_correction - sum(mu_corrections[s] for s in symbols))


# ----------------------------------------------------------------------------------------------- CHE
@dataclass
class SchemeResult:
    """One scheme on one surface: ``state_free_energies`` at U = 0 (eV, the first state at 0),
    ``steps`` (dG at U = 0 of each step), ``electrochemical`` (per step), ``limiting_potential``
    (V vs RHE), ``limiting_step`` (1-based), ``overpotential`` (V), ``descriptor_value`` (eV)."""

    surface: str
    scheme: Scheme
    state_free_energies: np.ndarray
    steps: np.ndarray
    electrochemical: list[bool]
    limiting_potential: float
    limiting_step: int
    overpotential: float
    descriptor_value: float
    notes: list[str] = field(default_factory=list)
    #: the adsorption free energies used (eV; scaling-relation values included)
    g_ads: dict[str, float] = field(default_factory=dict)

    def free_energies_at(self, potential: float) -> np.ndarray:
        """State free energies (eV) at electrode potential ``potential`` (V vs RHE)."""
        pairs = np.array([self.scheme.pairs(k) for k in range(len(self.scheme.states))])
        return self.state_free_energies - (pairs - pairs[0]) * potential


def _species_free_energy(species: str, g_ads: Mapping[str, float], formation: Mapping[str, float]) -> float:
    if species in (PAIR, "*"):
        return 0.0
    if species.endswith("*"):
        return float(g_ads[species[:-1]])
    return float(formation.get(species, 0.0))


def che_analysis(surface: str, g_ads: Mapping[str, float], scheme: Scheme,
                 data: Mapping[str, Any] | None = None, scaling: bool = True) -> SchemeResult:
    """The scheme's free-energy diagram, limiting step and potential on one surface from adsorption
    free energies ``g_ads`` (adsorbate name -> eV against the OC20 references). Gases other than H2,
    H2O, CO, N2 take their formation free energies from the data. With ``scaling``, an adsorbate
    without a value comes from the data's ``scaling_relations`` (noted in ``notes``). Raises
    ``KeyError`` naming a missing adsorbate."""
    data = load_data() if data is None else data
    formation = {k: float(v["value"]) for k, v in data.get("formation_free_energies", {}).items()}
    reference = {"H2", "H2O", "CO", "N2"}
    for gas in scheme.gases:
        if gas not in reference and gas not in formation:
            raise ValueError(f"scheme {scheme.name}: gas {gas} needs a formation free energy in the data "
                             "(formation_free_energies)")
    g_ads = dict(g_ads)
    notes = []
    for a in scheme.adsorbates:
        rel = data.get("scaling_relations", {}).get(a)
        if (a not in g_ads or not np.isfinite(g_ads[a])) and scaling and rel and np.isfinite(g_ads.get(rel["from"], np.nan)):
            g_ads[a] = float(rel.get("slope", 1.0)) * g_ads[rel["from"]] + float(rel["offset"])
            notes.append(f"dG({a}*) from the scaling relation on {rel['from']}*")
    missing = [a for a in scheme.adsorbates if a not in g_ads or not np.isfinite(g_ads[a])]
    if missing:
        raise KeyError(f"{surface}: scheme {scheme.name} needs the adsorption free energies of {missing}")
    g = np.array([sum(n * _species_free_energy(s, g_ads, formation) for s, n in st.items()) for st in scheme.states])
    g = g - g[0]
    steps = np.diff(g)
    dn = np.diff([scheme.pairs(k) for k in range(len(scheme.states))])
    echem = [bool(d != 0) for d in dn]
    # an electrochemical step is downhill when dG(0) - dn U <= 0: a reduction step (dn = -1) for
    # U <= -dG(0), an oxidation step (dn = +1) for U >= dG(0)
    idx = [i for i in range(len(steps)) if echem[i]]
    if not idx:
        raise ValueError(f"scheme {scheme.name}: no electrochemical step (no step moves a proton-electron pair)")
    sign = -1.0 if scheme.direction == "reduction" else 1.0
    bounds = np.array([sign * steps[i] for i in idx])
    k = int(np.argmin(bounds) if sign < 0 else np.argmax(bounds))
    u_l = float(bounds[k])
    eta = sign * (u_l - scheme.equilibrium_potential)
    res = SchemeResult(surface, scheme, g, steps, echem, u_l, idx[k] + 1, float(eta),
                       float(g_ads.get(scheme.descriptor, np.nan)), notes,
                       {a: float(g_ads[a]) for a in scheme.adsorbates})
    for i, e in enumerate(echem):
        if not e and steps[i] > 0:
            res.notes.append(f"chemical step {i + 1} is uphill by {steps[i]:.2f} eV at any potential")
    return res


def che_table(g_ads_by_surface: Mapping[str, Mapping[str, float]], schemes: Mapping[str, Scheme],
              data: Mapping[str, Any] | None = None, scaling: bool = True) -> tuple[list[SchemeResult], list[str]]:
    """:func:`che_analysis` of every scheme on every surface that has its adsorbates; returns the
    results and one note per (surface, scheme) skipped."""
    data = load_data() if data is None else data
    results, skipped = [], []
    for surface, g in g_ads_by_surface.items():
        for scheme in schemes.values():
            try:
                results.append(che_analysis(surface, g, scheme, data, scaling))
            except KeyError as exc:
                skipped.append(str(exc.args[0]))
    return results, skipped


def volcano_line(results: Sequence[SchemeResult], points: int = 200,
                 data: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The volcano of one scheme: its limiting potential as a function of the descriptor when every
    other adsorbate follows a straight line fitted to ``results``' surfaces (least squares against
    the descriptor). None with fewer than two distinct descriptor values."""
    if not results:
        return None
    scheme = results[0].scheme
    x = np.array([r.descriptor_value for r in results])
    if len(np.unique(np.round(x, 6))) < 2:
        return None
    fits = {a: np.polyfit(x, [r.g_ads[a] for r in results], 1) for a in scheme.adsorbates if a != scheme.descriptor}
    span = x.max() - x.min()
    grid = np.linspace(x.min() - 0.25 * span, x.max() + 0.25 * span, points)
    data = load_data() if data is None else data
    u = [che_analysis("line", {scheme.descriptor: xi, **{a: float(np.polyval(f, xi)) for a, f in fits.items()}},
                      scheme, data, scaling=False).limiting_potential for xi in grid]
    return grid, np.asarray(u)


def plot_volcano(results: Sequence[SchemeResult], path: str | os.PathLike, title: str = "") -> Path:
    """Limiting potential against each scheme's descriptor, one panel per scheme, one labelled point
    per surface (the top of each panel is the most active: an oxidation's axis is inverted). Open red
    circles: surfaces where a chemical step (e.g. CO desorption) is uphill, which no potential fixes."""
    names = list(dict.fromkeys(r.scheme.name for r in results))
    if not names:
        raise ValueError("no scheme results to plot (no surface had the adsorbates a scheme needs)")
    fig = new_figure((4.2 * len(names), 3.8))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        rs = [r for r in results if r.scheme.name == name]
        scheme = rs[0].scheme
        x = np.array([r.descriptor_value for r in rs])
        y = np.array([r.limiting_potential for r in rs])
        blocked = np.array([any(n.startswith("chemical step") for n in r.notes) for r in rs], dtype=bool)
        ax.scatter(x[~blocked], y[~blocked], color="C0", zorder=3)
        if blocked.any():  # an uphill chemical step (e.g. CO desorption) limits these, at any potential
            ax.scatter(x[blocked], y[blocked], facecolors="none", edgecolors="C3", zorder=3,
                       label="uphill chemical step")
        for r, xi, yi in zip(rs, x, y):
            ax.annotate(r.surface, (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize="x-small")
        line = volcano_line(rs)
        if line is not None:
            ax.plot(*line, color="C0", lw=1, alpha=0.6, label="scaling lines fitted to these surfaces")
        ax.axhline(scheme.equilibrium_potential, ls="--", color="grey", lw=1,
                   label=f"equilibrium {scheme.equilibrium_potential:.2f} V")
        ax.set_xlabel(f"$\\Delta G$({scheme.descriptor}*) (eV)")
        ax.set_ylabel("limiting potential $U_L$ (V vs RHE)")
        if scheme.direction == "oxidation":
            ax.invert_yaxis()
        ax.set_title(f"{name} ({scheme.direction})", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_free_energy_diagram(results: Sequence[SchemeResult], path: str | os.PathLike, title: str = "") -> Path:
    """One surface's free-energy diagrams, one panel per scheme: the states at U = 0, at the limiting
    potential and at the equilibrium potential (horizontal bars joined by thin lines)."""
    fig = new_figure((4.4 * len(results), 3.8))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, r in zip(axes, results):
        n = len(r.scheme.states)
        for u, color, label in ((0.0, "C0", "U = 0 V"), (r.limiting_potential, "C3", f"U = U_L = {r.limiting_potential:.2f} V"),
                                (r.scheme.equilibrium_potential, "C2", f"U = {r.scheme.equilibrium_potential:.2f} V")):
            g = r.free_energies_at(u)
            for k in range(n):
                ax.plot([k + 0.1, k + 0.9], [g[k], g[k]], color=color, lw=2.2, label=label if k == 0 else None)
                if k + 1 < n:
                    ax.plot([k + 0.9, k + 1.1], [g[k], g[k + 1]], color=color, lw=0.7, ls=":")
        ax.set_xticks([k + 0.5 for k in range(n)], [r.scheme.label(k) for k in range(n)], rotation=30, ha="right",
                      fontsize="x-small")
        ax.set_ylabel("G (eV)")
        ax.set_title(f"{r.scheme.name}: limiting step {r.limiting_step}", fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)


def write_che_outputs(results: Sequence[SchemeResult], out_dir: str | os.PathLike, prefix: str = "che",
                      diagrams: bool = True) -> dict[str, Path]:
    """``<prefix>_steps.csv`` (every step), ``<prefix>_summary.csv`` (limiting step and potential per
    surface and scheme), ``<prefix>_volcano.png`` and ``<prefix>_diagram_<surface>.png``."""
    out = Path(out_dir)
    steps, summary = [], []
    for r in results:
        s = r.scheme
        for i, dg in enumerate(r.steps):
            steps.append([r.surface, s.name, i + 1, s.label(i), s.label(i + 1),
                          "electrochemical" if r.electrochemical[i] else "chemical", dg, i + 1 == r.limiting_step])
        summary.append([r.surface, s.name, s.direction, s.descriptor, r.descriptor_value, r.limiting_potential,
                        r.limiting_step, f"{s.label(r.limiting_step - 1)} -> {s.label(r.limiting_step)}",
                        s.equilibrium_potential, r.overpotential, "; ".join(r.notes)])
    files = {
        "steps": write_csv(out / f"{prefix}_steps.csv", ["surface", "scheme", "step", "from", "to", "kind",
                                                          "dG_eV_at_0V", "limiting"], steps),
        "summary": write_csv(out / f"{prefix}_summary.csv", [
            "surface", "scheme", "direction", "descriptor", "descriptor_dG_eV", "limiting_potential_V",
            "limiting_step", "limiting_step_states", "equilibrium_potential_V", "overpotential_V", "notes"], summary),
    }
    if results:
        files["volcano"] = plot_volcano(results, out / f"{prefix}_volcano.png")
    if diagrams:
        for surface in dict.fromkeys(r.surface for r in results):
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in surface)
            files[f"diagram:{surface}"] = plot_free_energy_diagram(
                [r for r in results if r.surface == surface], out / f"{prefix}_diagram_{safe}.png", title=surface)
    return files


# -------------------------------------------------------------------------------- screening results
#: the columns :func:`screen_free_energies` adds to a screening summary row
FREE_ENERGY_COLUMNS: tuple[str, ...] = (
    "zpe", "thermal", "ts", "g_corr", "g_ads", "free_energy", "n_imaginary", "n_soft", "temperature", "pressure",
)


def read_summary_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    need = {"surface", "adsorbate"}
    if not need <= set(rows[0]):
        raise ValueError(f"{path}: not a screening summary (needs columns {sorted(need)}, has {sorted(rows[0])})")
    for r in rows:
        for k, v in list(r.items()):
            if k in ("e_ads_min", *FREE_ENERGY_COLUMNS):
                r[k] = float(v) if v not in ("", None) else float("nan")
    return rows


def screen_free_energies(
    summary: Sequence[dict[str, Any]], db: str | os.PathLike, calculator: Any, temperature: float = 298.15,
    pressure: float = STANDARD_PRESSURE, data: Mapping[str, Any] | None = None, soft_floor: float = SOFT_THRESHOLD_CM,
    progress: bool = True, journal: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Each summary row of a screen (one per surface x adsorbate, its best site ``row_id`` in ``db``)
    with :data:`FREE_ENERGY_COLUMNS` added: the harmonic correction of the adsorbate (its atoms
    displaced, slab fixed), the ideal-gas corrections of the reference molecules relaxed in the same
    database, and ``g_ads``. The adsorbate atoms are those after the clean slab's (the screen's
    placement). Rows without a valid site get NaN. The calculator must be the model of
    the database (checked against its recorded fingerprint). journal: a
    :class:`~equiformer_calc.workflows.vibrations.VibrationJournal` file; a rerun after an
    interruption recomputes only the analyses it lacks."""
    import ase.db

    from ..calculators.base import model_fingerprint

    _check_conditions(temperature, pressure)
    data = load_data() if data is None else data
    if "://" not in str(db) and not Path(db).exists():
        raise ValueError(f"screening database {db} does not exist")
    database = ase.db.connect(str(db))
    meta = dict(database.metadata or {})
    fp = model_fingerprint(calculator)
    if meta.get("model_hash") and meta["model_hash"] != fp["model_hash"]:
        raise ValueError(f"{db} was screened with {meta.get('model')} ({meta['model_hash']}); the vibrations would use "
                         f"{fp['model']} ({fp['model_hash']}): pass the same checkpoint and dtype")
    gas: dict[str, Atoms] = {}
    for name in ("H2", "H2O", "CO", "N2"):
        rows = [r for r in database.select(task_key=f"gas/{name}") if r.get("status") == "done"]
        if not rows:
            raise ValueError(f"{db} has no relaxed gas reference {name}: was it made by equiformer-calc screen?")
        gas[name] = rows[-1].toatoms()
    systems, keep, indices = [], [], []
    for k, row in enumerate(summary):
        rid = row.get("row_id")
        if rid in ("", None) or not np.isfinite(float(row.get("e_ads_min", np.nan))):
            continue
        atoms = database.get(id=int(rid)).toatoms()
        slabs = list(database.select(task_key=f"slab/{row['surface']}"))
        if not slabs:
            raise ValueError(f"{db} has no clean slab row for surface {row['surface']!r}")
        systems.append(atoms)
        keep.append(k)
        indices.append(list(range(slabs[0].natoms, len(atoms))))  # the adsorbate: the atoms after the slab's
    log.info("free energies: vibrations of %d adsorbate systems and %d gas references", len(systems), len(gas))
    book = {} if journal is None else {"journal": VibrationJournal(journal)}
    ads_keys = [f"{fp['model_hash']}/row{summary[k]['row_id']}" for k in keep]
    gas_keys = [f"{fp['model_hash']}/gas/{name}" for name in gas]
    ads = adsorbate_free_energies(systems, calculator, temperature, indices, soft_floor, progress=progress,
                                  **({**book, "keys": ads_keys} if book else {}))
    gas_g = gas_free_energies(gas, calculator, temperature, pressure, data, progress=progress,
                              **({**book, "keys": gas_keys} if book else {}))
    dmu = reference_corrections(gas_g)
    out = [dict(r) for r in summary]
    for r in out:
        r.update({c: float("nan") for c in FREE_ENERGY_COLUMNS})
        r.update({"n_imaginary": "", "n_soft": "", "temperature": temperature, "pressure": pressure})
    for k, atoms, a, ix in zip(keep, systems, ads, indices):
        r = out[k]
        symbols = [atoms[i].symbol for i in ix]
        r.update({
            "zpe": a.zpe, "thermal": a.thermal, "ts": a.ts, "g_corr": a.correction,
            "g_ads": adsorption_free_energy(float(r["e_ads_min"]), a.correction, symbols, dmu),
            "free_energy": float(a.vibrations.energy) + a.correction,  # type: ignore[union-attr]
            "n_imaginary": a.n_imaginary, "n_soft": a.n_soft,
        })
        if a.n_imaginary:
            log.warning("%s %s: %d imaginary mode(s) at the relaxed site (dropped from the free energy)",
                        r["surface"], r["adsorbate"], a.n_imaginary)
    return out


def g_ads_by_surface(rows: Sequence[Mapping[str, Any]], column: str = "g_ads") -> dict[str, dict[str, float]]:
    """surface -> adsorbate -> ``column`` of summary rows (non-finite values left out)."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        v = float(r.get(column, np.nan))
        if np.isfinite(v):
            out.setdefault(str(r["surface"]), {})[str(r["adsorbate"])] = v
    return out


def write_summary_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """A summary table with every column its rows have (first row's order)."""
    columns = list(rows[0])
    return write_csv(path, columns, [[r.get(c, "") for c in columns] for r in rows])
