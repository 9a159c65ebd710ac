"""OC20-S2EF-style dataset generator labelled with ASE's EMT calculator.

The dataset covers seven fcc metals (Cu, Ag, Au, Ni, Pd, Pt, Al) as

* **bulk** cells (primitive / conventional cells and small supercells; randomly strained and
  rattled; fully periodic; energy, forces *and* stress labels),
* **clean slabs** of the (111), (100), (110) and stepped (211) facets, and
* **adsorbate + slab** systems with 13 small H/C/N/O adsorbates placed on every site kind of
  every facet and at random positions above the surface.

Every system contributes frames of three kinds, as in OC20 S2EF: frames sampled along a BFGS
relaxation (``relax``), Gaussian-rattled frames (``rattle``) and short Langevin-MD frames
(``md``), so the model also sees forces far from minima. Slab atoms in the bottom half are
held by :class:`~ase.constraints.FixAtoms` (stored in the frames and as a per-atom ``fixed``
array), but **labels are raw forces** (``get_forces(apply_constraint=False)``): ASE would
otherwise report zero forces on fixed atoms, which is wrong physics to learn from.

Splits (one extxyz file each): ``train``; ``val`` (random frames held out from training
systems); ``test_id`` (held-out (metal, facet, adsorbate, site) groups, bulk and slab systems of
seen combinations); ``test_ood`` (every system of a few (metal, adsorbate) combinations never
seen in training). ``relax_initial.extxyz`` / ``relax_relaxed.extxyz`` / ``relax_tasks.json``
hold initial structures and EMT-relaxed references for held-out relaxation benchmarks.

Everything is a pure function of ``(seed, size)``: each system draws its random numbers from
its own seed derived from the global seed and the system id, so the output files are
byte-identical whatever the number of worker processes. Work is checkpointed per system
under ``OUT/.datagen-work`` so an interrupted run resumes where it stopped; final files are
written to temporary names and renamed, and ``summary.json`` (written last) marks a complete
dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing as mp
import os
import pickle
import platform
import shutil
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.build import bulk as build_bulk
from ase.build import fcc100, fcc110, fcc111, fcc211
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.geometry import find_mic
from ase.io import write as ase_write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.neighborlist import neighbor_list
from ase.optimize import BFGS

from ..fileio import write_text_atomic

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ase < 3.29
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms: Atoms, temperature_K: float, *, rng: Any = None) -> None:  # noqa: N803
        """Maxwell-Boltzmann momenta (``thermalize_momenta`` of ase >= 3.29)."""
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


__all__ = [
    "ADSORBATES",
    "EMT_LATTICE_CONSTANTS",
    "FACETS",
    "FACET_SITES",
    "GENERATOR_VERSION",
    "HELP",
    "METALS",
    "SIZES",
    "SPLITS",
    "DatasetSize",
    "FrameRecipe",
    "add_arguments",
    "build_adsorbate",
    "build_bulk_cell",
    "build_slab",
    "choose_ood_combos",
    "generate_dataset",
    "place_adsorbate",
    "plan_tasks",
    "resolve_size",
    "run",
    "site_positions",
]

logger = logging.getLogger(__name__)

#: Bump whenever a change alters the generated data (it is part of the completeness check).
GENERATOR_VERSION = "1.0.0"

HELP = "generate an EMT-labelled dataset of adsorbates on metal surfaces (extxyz)"

METALS: tuple[str, ...] = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")

#: fcc lattice constants (Å) that minimise the EMT energy of each bulk metal (fitted with
#: ``ase.calculators.emt.EMT``; ASE's experimental defaults are up to 1.5 % off for EMT).
EMT_LATTICE_CONSTANTS: dict[str, float] = {
    "Cu": 3.5898,
    "Ag": 4.0636,
    "Au": 4.0562,
    "Ni": 3.4871,
    "Pd": 3.8787,
    "Pt": 3.9218,
    "Al": 3.9943,
}

FACETS: tuple[str, ...] = ("fcc111", "fcc100", "fcc110", "fcc211")

#: Named adsorption-site kinds per facet. (111)/(100)/(110) use ASE's site definitions; the
#: stepped (211) sites are located geometrically by :func:`site_positions`.
FACET_SITES: dict[str, tuple[str, ...]] = {
    "fcc111": ("ontop", "bridge", "fcc", "hcp"),
    "fcc100": ("ontop", "bridge", "hollow"),
    "fcc110": ("ontop", "longbridge", "shortbridge", "hollow"),
    "fcc211": ("ontop_step", "ontop_terrace", "bridge_step", "bridge_terrace", "hollow_terrace", "fourfold_step"),
}

#: Site label for adsorbates dropped at a uniformly random lateral position.
RANDOM_SITE = "random"

#: Slab supercells ``(nx, ny, layers)`` per facet (16-36 metal atoms); drawn per system.
SLAB_CELLS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "fcc111": ((2, 2, 4), (3, 3, 3), (3, 3, 4)),
    "fcc100": ((2, 2, 4), (3, 3, 3), (3, 3, 4)),
    "fcc110": ((2, 2, 4), (3, 2, 4), (2, 3, 4)),
    "fcc211": ((3, 2, 3), (3, 2, 4), (3, 3, 4)),
}
_SLAB_CELL_WEIGHTS = (0.4, 0.3, 0.3)
_SLAB_BUILDERS: dict[str, Callable[..., Atoms]] = {
    "fcc111": fcc111,
    "fcc100": fcc100,
    "fcc110": fcc110,
    "fcc211": fcc211,
}
#: Vacuum (Å) added on each side of a slab.
SLAB_VACUUM = 6.5

#: Bulk cell kinds: name -> (conventional cubic cell?, supercell repetition).
BULK_CELLS: dict[str, tuple[bool, tuple[int, int, int]]] = {
    "prim": (False, (1, 1, 1)),
    "conv": (True, (1, 1, 1)),
    "prim222": (False, (2, 2, 2)),
    "prim333": (False, (3, 3, 3)),
    "conv222": (True, (2, 2, 2)),
}

#: Adsorbate templates: symbols and positions (Å) with the binding atom (index 0) at the origin
#: and the rest of the molecule pointing up (+z, away from the surface).
ADSORBATES: dict[str, tuple[tuple[str, ...], tuple[tuple[float, float, float], ...]]] = {
    "H": (("H",), ((0.0, 0.0, 0.0),)),
    "O": (("O",), ((0.0, 0.0, 0.0),)),
    "N": (("N",), ((0.0, 0.0, 0.0),)),
    "C": (("C",), ((0.0, 0.0, 0.0),)),
    "OH": (("O", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 0.97))),
    "CO": (("C", "O"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.15))),
    "NO": (("N", "O"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.17))),
    "CH": (("C", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.09))),
    "CH2": (("C", "H", "H"), ((0.0, 0.0, 0.0), (0.89, 0.0, 0.63), (-0.89, 0.0, 0.63))),
    "CH3": (
        ("C", "H", "H", "H"),
        ((0.0, 0.0, 0.0), (1.028, 0.0, 0.363), (-0.514, 0.890, 0.363), (-0.514, -0.890, 0.363)),
    ),
    "NH": (("N", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.02))),
    "NH2": (("N", "H", "H"), ((0.0, 0.0, 0.0), (0.82, 0.0, 0.59), (-0.82, 0.0, 0.59))),
    "H2O": (("O", "H", "H"), ((0.0, 0.0, 0.0), (0.76, 0.0, 0.59), (-0.76, 0.0, 0.59))),
}

#: Target distance (Å) from the binding atom to its nearest metal atom on placement.
_BINDING_DISTANCE: dict[str, float] = {"H": 1.75, "C": 1.9, "N": 1.9, "O": 1.95}
#: Minimum distance (Å) from non-binding adsorbate atoms to any metal atom on placement.
_OTHER_ATOM_CLEARANCE = 1.8

SPLITS: tuple[str, ...] = ("train", "val", "test_id", "test_ood")

#: Pathological-frame filters.
MAX_FORCE = 20.0  # eV/Å
MIN_DISTANCE = 0.5  # Å

#: Relaxation settings (S2EF trajectories and relaxation references).
RELAX_FMAX = 0.05  # eV/Å
RELAX_TASK_MAX_STEPS = 500

_WORK_DIR = ".datagen-work"
_SUMMARY = "summary.json"


# --------------------------------------------------------------------------------------
# Size specification
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameRecipe:
    """How many frames of each kind one system contributes.

    Attributes:
        relax: frames sampled along the BFGS relaxation (first and last always included).
        rattle: Gaussian-rattled frames (sigma uniform in 0.02-0.15 Å).
        md: Langevin-MD frames (300-1000 K, 1-2 fs), one every ``md_stride`` steps.
        md_stride: MD steps between recorded frames.
    """

    relax: int = 6
    rattle: int = 4
    md: int = 3
    md_stride: int = 8


@dataclass(frozen=True)
class DatasetSize:
    """Explicit dataset size; the presets are in :data:`SIZES`.

    ``None`` counts mean "every enumerated system". Enumeration: adsorbate systems are every
    (metal, facet, adsorbate, site kind) ``adsorbate_replicas`` times (site kinds include
    ``random``); slab systems are metal x facet x supercell; bulk systems are metal x cell kind
    ``bulk_replicas`` times. Smaller explicit counts subsample the enumeration, stratified so
    that every split keeps at least one system. ``relax_tasks`` counts relaxation references
    drawn from the held-out named-site groups (``None``: all of them).
    """

    adsorbate_systems: int | None = None
    slab_systems: int | None = None
    bulk_systems: int | None = None
    adsorbate_replicas: int = 1
    bulk_replicas: int = 2
    adsorbate_frames: FrameRecipe = field(default_factory=FrameRecipe)
    slab_frames: FrameRecipe = field(default_factory=lambda: FrameRecipe(relax=6, rattle=8, md=6, md_stride=10))
    bulk_frames: FrameRecipe = field(default_factory=lambda: FrameRecipe(relax=5, rattle=12, md=6, md_stride=10))
    max_relax_steps: int = 200
    relax_tasks: int | None = 100
    ood_combos: int = 6
    test_id_fraction: float = 0.1
    val_fraction: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (used in ``summary.json`` and the completeness check)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DatasetSize:
        """Build from a (possibly partial) mapping; nested recipes may be mappings too."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown DatasetSize fields: {sorted(unknown)}")
        kwargs = dict(values)
        for key in ("adsorbate_frames", "slab_frames", "bulk_frames"):
            if isinstance(kwargs.get(key), Mapping):
                kwargs[key] = FrameRecipe(**kwargs[key])
        return cls(**kwargs)


SIZES: dict[str, DatasetSize] = {
    # a few hundred frames in well under a minute: tests and CI
    "small": DatasetSize(
        adsorbate_systems=24,
        slab_systems=4,
        bulk_systems=5,
        adsorbate_frames=FrameRecipe(relax=4, rattle=2, md=2, md_stride=5),
        slab_frames=FrameRecipe(relax=4, rattle=4, md=3, md_stride=5),
        bulk_frames=FrameRecipe(relax=3, rattle=6, md=3, md_stride=5),
        max_relax_steps=100,
        relax_tasks=4,
    ),
    # every system once: ~30k frames
    "medium": DatasetSize(),
    # three placements/supercells per adsorbate site, more bulk: ~3x medium
    "large": DatasetSize(adsorbate_replicas=3, bulk_replicas=6, relax_tasks=None),
}


def resolve_size(size: str | DatasetSize | Mapping[str, Any]) -> tuple[str, DatasetSize]:
    """Turn a preset name, :class:`DatasetSize` or mapping of counts into ``(name, spec)``."""
    if isinstance(size, DatasetSize):
        return "custom", size
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
        return size, SIZES[size]
    if isinstance(size, Mapping):
        return "custom", DatasetSize.from_mapping(size)
    raise TypeError(f"size must be a preset name, DatasetSize or mapping, not {type(size).__name__}")


# --------------------------------------------------------------------------------------
# Structures
# --------------------------------------------------------------------------------------


def build_slab(metal: str, facet: str, cell: tuple[int, int, int]) -> Atoms:
    """Bulk-terminated slab at the EMT lattice constant, bottom half fixed, OC20 tags.

    Tags follow OC20: 0 = fixed sub-surface atoms, 1 = free (surface) atoms, 2 = adsorbate.
    """
    slab = _SLAB_BUILDERS[facet](metal, size=cell, a=EMT_LATTICE_CONSTANTS[metal], vacuum=SLAB_VACUUM)
    slab.pbc = (True, True, False)
    z = slab.positions[:, 2]
    fixed = z < 0.5 * (z.min() + z.max()) - 0.1
    slab.set_constraint(FixAtoms(mask=fixed))
    slab.set_tags(np.where(fixed, 0, 1))
    return slab


def build_adsorbate(name: str) -> Atoms:
    """The adsorbate template: binding atom (index 0) at the origin, molecule along +z."""
    symbols, positions = ADSORBATES[name]
    return Atoms(symbols=list(symbols), positions=np.array(positions, dtype=float))


def _coordination(atoms: Atoms, metal: str) -> np.ndarray:
    nn = EMT_LATTICE_CONSTANTS[metal] / np.sqrt(2.0)
    i = neighbor_list("i", atoms, 1.2 * nn)
    return np.bincount(i, minlength=len(atoms))


def _mic_vectors(atoms: Atoms, origin: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    vectors, _ = find_mic(atoms.positions[list(indices)] - origin, atoms.cell, atoms.pbc)
    return vectors


def _nearest(atoms: Atoms, i: int, candidates: Sequence[int], k: int) -> list[int]:
    """The ``k`` atoms of ``candidates`` (excluding ``i``) nearest to atom ``i`` (MIC), stable order."""
    candidates = [c for c in candidates if c != i]
    d = np.linalg.norm(_mic_vectors(atoms, atoms.positions[i], candidates), axis=1)
    order = np.lexsort((np.array(candidates), np.round(d, 4)))
    return [candidates[j] for j in order[:k]]


def _centroid_xy(atoms: Atoms, indices: Sequence[int]) -> np.ndarray:
    """Lateral centroid of atoms taken as minimum images around the first one."""
    origin = atoms.positions[indices[0]]
    vectors = _mic_vectors(atoms, origin, indices)
    return (origin + vectors.mean(axis=0))[:2]


def site_positions(slab: Atoms, metal: str, facet: str, site: str) -> list[np.ndarray]:
    """Lateral (x, y) positions of every instance of a named site kind on a clean slab.

    (111)/(100)/(110) sites follow ASE's ``adsorbate_info`` definitions, replicated over the
    top-layer atoms. (211) sites are built from surface atoms (upper half, coordination < 12)
    ranked by height into step-edge, terrace and corner rows.
    """
    z = slab.positions[:, 2]
    if facet != "fcc211":
        info = slab.info["adsorbate_info"]
        offset = np.asarray(info["sites"][site], dtype=float) @ np.asarray(info["cell"], dtype=float)
        top = np.flatnonzero(z > z.max() - 0.1)
        return [slab.positions[i, :2] + offset for i in sorted(top)]

    cn = _coordination(slab, metal)
    surface = np.flatnonzero((cn < 12) & (z > 0.5 * (z.min() + z.max())))
    heights = np.unique(np.round(z[surface], 2))[::-1]
    rows = [sorted(int(i) for i in surface if abs(z[i] - h) < 0.05) for h in heights[:3]]
    step, terrace, corner = rows
    sites: list[np.ndarray] = []
    if site == "ontop_step":
        sites = [slab.positions[i, :2] for i in step]
    elif site == "ontop_terrace":
        sites = [slab.positions[i, :2] for i in terrace]
    elif site == "bridge_step":
        sites = [_centroid_xy(slab, [i, *_nearest(slab, i, step, 1)]) for i in step]
    elif site == "bridge_terrace":
        sites = [_centroid_xy(slab, [i, *_nearest(slab, i, terrace, 1)]) for i in step]
    elif site == "hollow_terrace":
        sites = [_centroid_xy(slab, [i, *_nearest(slab, i, terrace, 2)]) for i in step]
    elif site == "fourfold_step":
        for i in step:
            j = _nearest(slab, i, step, 1)[0]
            ci = _nearest(slab, i, corner, 1)[0]
            cj = _nearest(slab, j, corner, 1)[0]
            sites.append(_centroid_xy(slab, [i, j, ci, cj]))
    else:
        raise ValueError(f"unknown (211) site {site!r}")
    return sites


def _placement_height(slab: Atoms, ads: Atoms, xy: np.ndarray, binding_distance: float) -> float:
    """Lowest z for the binding atom at lateral ``xy`` keeping all adsorbate atoms clear of the slab."""
    z_top = float(slab.positions[:, 2].max())
    required: list[float] = []
    for k, atom_pos in enumerate(ads.positions):
        need = binding_distance if k == 0 else _OTHER_ATOM_CLEARANCE
        probe = np.array([xy[0] + atom_pos[0], xy[1] + atom_pos[1], 0.0])
        vectors = _mic_vectors(slab, probe, range(len(slab)))
        lateral = np.hypot(vectors[:, 0], vectors[:, 1])
        close = lateral < need
        if np.any(close):
            # height at which this atom is exactly `need` away from its closest metal atom
            z_atom = np.max(slab.positions[close, 2] + np.sqrt(need**2 - lateral[close] ** 2))
            required.append(float(z_atom) - atom_pos[2])
        elif k == 0:
            required.append(z_top + binding_distance)  # nothing below within reach: sit above the top layer
    return max(required) if required else z_top + binding_distance


def place_adsorbate(
    slab: Atoms,
    adsorbate: str,
    xy: np.ndarray,
    rng: np.random.Generator,
    max_tilt_deg: float = 15.0,
    height_jitter: tuple[float, float] = (-0.05, 0.25),
) -> Atoms:
    """Put ``adsorbate`` (binding atom down) above lateral position ``xy`` of ``slab``.

    The molecule gets a uniformly random rotation about the surface normal and a small random
    tilt; it is lowered until its binding atom sits at a species-dependent distance (plus a
    random jitter) from the nearest metal atom, with other atoms kept clear of the surface.
    Returns a new Atoms with tags 2 and ``fixed`` False for the adsorbate atoms.
    """
    ads = build_adsorbate(adsorbate)
    if len(ads) > 1:
        tilt = rng.uniform(0.0, max_tilt_deg)
        tilt_axis = rng.uniform(0.0, 360.0)
        ads.rotate(tilt, (np.cos(np.radians(tilt_axis)), np.sin(np.radians(tilt_axis)), 0.0), center=(0, 0, 0))
        ads.rotate(rng.uniform(0.0, 360.0), "z", center=(0, 0, 0))
    binding = _BINDING_DISTANCE[ads[0].symbol] + rng.uniform(*height_jitter)
    z = _placement_height(slab, ads, xy, binding)
    ads.translate((xy[0], xy[1], z))
    system = slab.copy()
    n_slab = len(slab)
    tags = np.concatenate([slab.get_tags(), np.full(len(ads), 2)])
    system.extend(ads)
    system.set_tags(tags)
    fixed = np.zeros(len(system), dtype=bool)
    fixed[:n_slab] = _fixed_mask(slab)
    system.set_constraint(FixAtoms(mask=fixed))
    return system


def _fixed_mask(atoms: Atoms) -> np.ndarray:
    mask = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            mask[constraint.index] = True
    return mask


def _random_strain(rng: np.random.Generator, max_strain: float = 0.05) -> np.ndarray:
    eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
    return np.eye(3) + 0.5 * (eps + eps.T)


def build_bulk_cell(metal: str, kind: str) -> Atoms:
    """Unstrained fcc bulk cell of the given kind (see :data:`BULK_CELLS`)."""
    cubic, reps = BULK_CELLS[kind]
    atoms = build_bulk(metal, "fcc", a=EMT_LATTICE_CONSTANTS[metal], cubic=cubic)
    atoms = atoms.repeat(reps)
    atoms.pbc = True
    atoms.set_tags(np.zeros(len(atoms), dtype=int))
    return atoms


# --------------------------------------------------------------------------------------
# Labelling
# --------------------------------------------------------------------------------------


@dataclass
class _Stats:
    """EMT bookkeeping for one task."""

    emt_calls: int = 0
    emt_seconds: float = 0.0
    discarded: Counter = field(default_factory=Counter)


class _TimedEMT(EMT):
    """EMT that accumulates its call count and wall time into a :class:`_Stats`."""

    def __init__(self, stats: _Stats) -> None:
        super().__init__()
        self._stats = stats

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):  # type: ignore[override]
        start = time.perf_counter()
        super().calculate(atoms, list(properties), all_changes if system_changes is None else system_changes)
        self._stats.emt_seconds += time.perf_counter() - start
        self._stats.emt_calls += 1


def _snapshot(atoms: Atoms, with_stress: bool) -> Atoms:
    """Copy of ``atoms`` carrying its current EMT labels (raw forces) in a SinglePointCalculator."""
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(apply_constraint=False))
    stress = np.array(atoms.get_stress(apply_constraint=False)) if with_stress else None
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces, stress=stress)
    return frame


def _label(atoms: Atoms, stats: _Stats, with_stress: bool) -> Atoms:
    work = atoms.copy()
    work.calc = _TimedEMT(stats)
    return _snapshot(work, with_stress)


def _pathology(frame: Atoms) -> str | None:
    """Why a frame should be discarded (``None`` if it is fine)."""
    forces = frame.calc.results["forces"]
    if not np.all(np.isfinite(forces)) or not np.isfinite(frame.calc.results["energy"]):
        return "non_finite"
    if np.linalg.norm(forces, axis=1).max() > MAX_FORCE:
        return "large_force"
    if len(frame) > 1 or frame.pbc.any():
        if len(neighbor_list("i", frame, MIN_DISTANCE)) > 0:
            return "close_atoms"
    return None


def _relax_trajectory(
    atoms: Atoms, stats: _Stats, max_steps: int, with_stress: bool, cell_filter: bool = False
) -> tuple[list[Atoms], bool]:
    """BFGS-relax ``atoms`` with EMT; returns every visited frame and whether it converged."""
    work = atoms.copy()
    work.calc = _TimedEMT(stats)
    frames: list[Atoms] = []
    target = FrechetCellFilter(work) if cell_filter else work
    opt = BFGS(target, logfile=None)
    opt.attach(lambda: frames.append(_snapshot(work, with_stress)), interval=1)
    converged = bool(opt.run(fmax=RELAX_FMAX, steps=max_steps))
    return frames, converged


def _md_frames(
    atoms: Atoms, stats: _Stats, rng: np.random.Generator, recipe: FrameRecipe, with_stress: bool
) -> list[Atoms]:
    """Short Langevin run (300-1000 K, 1-2 fs) recording every ``md_stride`` steps."""
    if recipe.md <= 0:
        return []
    work = atoms.copy()
    work.calc = _TimedEMT(stats)
    temperature = float(rng.uniform(300.0, 1000.0))
    timestep = float(rng.uniform(1.0, 2.0))
    thermalize_momenta(work, temperature, rng=rng)
    if not work.constraints:
        Stationary(work)  # no centre-of-mass drift for free (bulk) cells
    dyn = Langevin(
        work, timestep=timestep * units.fs, temperature_K=temperature, friction=0.01 / units.fs, fixcm=False, rng=rng
    )
    frames: list[Atoms] = []
    for _ in range(recipe.md):
        dyn.run(recipe.md_stride)
        frame = _snapshot(work, with_stress)
        frame.info["temperature_K"] = round(temperature, 1)
        frames.append(frame)
    return frames


def _rattle(atoms: Atoms, rng: np.random.Generator, free_only: bool) -> Atoms:
    sigma = rng.uniform(0.02, 0.15)
    out = atoms.copy()
    out.calc = None
    delta = rng.normal(0.0, sigma, size=(len(out), 3))
    if free_only:
        delta[_fixed_mask(out)] = 0.0
    out.positions = out.positions + delta
    return out


def _sample_relax(frames: list[Atoms], n: int, rng: np.random.Generator) -> list[tuple[int, Atoms]]:
    """``n`` frames of a trajectory (first and last always included), in trajectory order."""
    if n <= 0 or not frames:
        return []
    indices = list(range(len(frames)))
    if len(frames) > n:
        chosen = {0, len(frames) - 1} if n >= 2 else {len(frames) - 1}
        middle = indices[1:-1]
        extra = rng.choice(middle, size=max(0, n - len(chosen)), replace=False) if middle else []
        chosen.update(int(i) for i in extra)
        indices = sorted(chosen)
    return [(i, frames[i]) for i in indices]


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """One unit of work: one system (or one relaxation reference)."""

    task_id: int
    kind: str  # bulk | slab | adsorbate | relax_task
    system_id: str
    split: str  # train | test_id | test_ood (train frames are further split into train/val)
    metal: str
    facet: str = "bulk"
    adsorbate: str = "none"
    site: str = "none"
    cell: str = ""


def _system_seed(seed: int, key: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(key.encode())])


def choose_ood_combos(seed: int, n: int) -> list[tuple[str, str]]:
    """``n`` (metal, adsorbate) pairs held out entirely; distinct metals/adsorbates while possible."""
    rng = np.random.default_rng(_system_seed(seed, "ood-combos"))
    adsorbates = list(ADSORBATES)
    combos: list[tuple[str, str]] = []
    while len(combos) < n:
        metals = [METALS[i] for i in rng.permutation(len(METALS))]
        ads = [adsorbates[i] for i in rng.permutation(len(adsorbates))]
        for m, a in zip(metals, ads, strict=False):
            if len(combos) < n and (m, a) not in combos:
                combos.append((m, a))
        if len(combos) >= len(METALS) * len(adsorbates):
            break
    return sorted(combos)


def _allocate(sizes: Mapping[str, int], n: int) -> dict[str, int]:
    """Split ``n`` picks over groups proportionally (largest remainder), capped at group sizes.

    Every group gets at least one pick when ``n`` allows it; ``train`` is served first otherwise.
    """
    groups = sorted(sizes, key=lambda g: (g != "train", g))
    quota = {g: 0 for g in groups}
    for g in groups[: min(n, len(groups))]:
        quota[g] = 1
    left = n - sum(quota.values())
    spare = {g: sizes[g] - quota[g] for g in groups}
    total_spare = sum(spare.values())
    if left > 0 and total_spare > 0:
        exact = {g: left * spare[g] / total_spare for g in groups}
        for g in groups:
            quota[g] += min(spare[g], int(exact[g]))
        by_remainder = sorted(groups, key=lambda g: (-(exact[g] - int(exact[g])), groups.index(g)))
        for g in by_remainder:
            if sum(quota.values()) >= n:
                break
            if quota[g] < sizes[g]:
                quota[g] += 1
    return quota


def _stratified_subsample(
    items: list[tuple[Any, str]], n: int | None, rng: np.random.Generator
) -> list[tuple[Any, str]]:
    """Keep ``n`` of the ``(item, split)`` pairs, proportionally per split (see :func:`_allocate`)."""
    if n is None or n >= len(items):
        return items
    by_split: dict[str, list[int]] = {}
    for idx, (_, split) in enumerate(items):
        by_split.setdefault(split, []).append(idx)
    quota = _allocate({k: len(v) for k, v in by_split.items()}, n)
    keep: list[int] = []
    for split in sorted(by_split):
        keep.extend(int(i) for i in rng.choice(by_split[split], size=quota[split], replace=False))
    return [items[i] for i in sorted(keep)]


def _assign_test_id(keys: list[Any], fraction: float, rng: np.random.Generator) -> set[Any]:
    n = int(round(fraction * len(keys)))
    if fraction > 0 and len(keys) >= 3:
        n = max(n, 1)
    return {keys[i] for i in rng.permutation(len(keys))[:n]}


def plan_tasks(seed: int, spec: DatasetSize) -> tuple[list[_Task], list[tuple[str, str]]]:
    """Enumerate systems, assign splits and subsample; returns (tasks, test_ood combos)."""
    rng = np.random.default_rng(_system_seed(seed, "plan"))
    ood = set(choose_ood_combos(seed, spec.ood_combos))

    # bulk
    bulk_items: list[tuple[Any, str]] = []
    bulk_keys = [(m, k, r) for m in METALS for k in BULK_CELLS for r in range(spec.bulk_replicas)]
    held = _assign_test_id(bulk_keys, spec.test_id_fraction, rng)
    bulk_items = [(key, "test_id" if key in held else "train") for key in bulk_keys]
    bulk_items = _stratified_subsample(bulk_items, spec.bulk_systems, rng)

    # clean slabs
    slab_keys = [(m, f, c) for m in METALS for f in FACETS for c in SLAB_CELLS[f]]
    held = _assign_test_id(slab_keys, spec.test_id_fraction, rng)
    slab_items = [(key, "test_id" if key in held else "train") for key in slab_keys]
    slab_items = _stratified_subsample(slab_items, spec.slab_systems, rng)

    # adsorbate groups (metal, facet, adsorbate, site); replicas stay in their group's split
    groups = [(m, f, a, s) for m in METALS for f in FACETS for a in ADSORBATES for s in (*FACET_SITES[f], RANDOM_SITE)]
    in_dist = [g for g in groups if (g[0], g[2]) not in ood]
    held = _assign_test_id(in_dist, spec.test_id_fraction, rng)
    group_split = {g: ("test_ood" if (g[0], g[2]) in ood else "test_id" if g in held else "train") for g in groups}
    ads_items = [((*g, r), group_split[g]) for g in groups for r in range(spec.adsorbate_replicas)]
    ads_items = _stratified_subsample(ads_items, spec.adsorbate_systems, rng)

    # relaxation references: named-site groups never used in training
    pool = [(g, group_split[g]) for g in groups if group_split[g] != "train" and g[3] != RANDOM_SITE]
    relax_items = _stratified_subsample(pool, spec.relax_tasks, rng)

    tasks: list[_Task] = []

    def add(**kwargs: Any) -> None:
        tasks.append(_Task(task_id=len(tasks), **kwargs))

    for (m, k, r), split in bulk_items:
        add(kind="bulk", system_id=f"bulk-{m}-{k}-r{r}", split=split, metal=m, cell=k)
    for (m, f, c), split in slab_items:
        cell = "x".join(map(str, c))
        add(kind="slab", system_id=f"slab-{m}-{f}-{cell}", split=split, metal=m, facet=f, cell=cell)
    for (m, f, a, s, r), split in ads_items:
        add(kind="adsorbate", system_id=f"ads-{m}-{f}-{a}-{s}-r{r}", split=split, metal=m, facet=f, adsorbate=a, site=s)
    for (m, f, a, s), split in relax_items:
        add(kind="relax_task", system_id=f"relax-{m}-{f}-{a}-{s}", split=split, metal=m, facet=f, adsorbate=a, site=s)
    return tasks, sorted(ood)


# --------------------------------------------------------------------------------------
# Task execution (runs in worker processes)
# --------------------------------------------------------------------------------------


def _annotate(frame: Atoms, task: _Task, frame_kind: str, step: int, split: str, config_type: str) -> Atoms:
    info = frame.info
    info.pop("adsorbate_info", None)
    info.update(
        config_type=config_type,
        metal=task.metal,
        facet=task.facet,
        adsorbate=task.adsorbate,
        site=task.site,
        cell_size=task.cell,
        frame_kind=frame_kind,
        step=int(step),
        split=split,
        system_id=task.system_id,
    )
    frame.new_array("fixed", _fixed_mask(frame))
    return frame


def _random_slab(task: _Task, rng: np.random.Generator) -> tuple[Atoms, str]:
    options = SLAB_CELLS[task.facet]
    cell = options[int(rng.choice(len(options), p=_SLAB_CELL_WEIGHTS))]
    return build_slab(task.metal, task.facet, cell), "x".join(map(str, cell))


def _initial_adsorbate_system(task: _Task, rng: np.random.Generator) -> tuple[Atoms, str]:
    slab, cell = _random_slab(task, rng)
    if task.site == RANDOM_SITE:
        frac = rng.uniform(0.0, 1.0, size=2)
        xy = frac @ slab.cell.array[:2, :2]
    else:
        candidates = site_positions(slab, task.metal, task.facet, task.site)
        xy = candidates[int(rng.integers(len(candidates)))]
    return place_adsorbate(slab, task.adsorbate, xy, rng), cell


def _system_frames(task: _Task, seed: int, spec: DatasetSize, stats: _Stats) -> list[Atoms]:
    """All labelled frames of one bulk / slab / adsorbate system (already split-annotated)."""
    rng = np.random.default_rng(_system_seed(seed, task.system_id))
    split_rng = np.random.default_rng(_system_seed(seed, "split:" + task.system_id))
    raw: list[tuple[str, int, Atoms]] = []  # (frame kind, trajectory step, labelled frame)

    if task.kind == "bulk":
        recipe = spec.bulk_frames
        base = build_bulk_cell(task.metal, task.cell)

        def strained() -> Atoms:
            atoms = base.copy()
            atoms.set_cell(atoms.cell.array @ _random_strain(rng), scale_atoms=True)
            return atoms

        start = _rattle(strained(), rng, free_only=False)
        traj, _ = _relax_trajectory(start, stats, spec.max_relax_steps, with_stress=True, cell_filter=True)
        raw += [("relax", i, f) for i, f in _sample_relax(traj, recipe.relax, rng)]
        for _ in range(recipe.rattle):
            raw.append(("rattle", -1, _label(_rattle(strained(), rng, free_only=False), stats, True)))
        if len(base) > 1:
            md = _md_frames(strained(), stats, rng, recipe, with_stress=True)
            raw += [("md", (k + 1) * recipe.md_stride, f) for k, f in enumerate(md)]
        config_type = "bulk"
        cell = task.cell
    else:
        if task.kind == "slab":
            recipe = spec.slab_frames
            nx, ny, layers = (int(x) for x in task.cell.split("x"))
            initial = _rattle(build_slab(task.metal, task.facet, (nx, ny, layers)), rng, free_only=True)
            cell = task.cell
            config_type = "slab"
        else:
            recipe = spec.adsorbate_frames
            initial, cell = _initial_adsorbate_system(task, rng)
            # nudge the adsorbate off exact symmetry so trajectories explore a little
            n_ads = int(np.sum(initial.get_tags() == 2))
            initial.positions[-n_ads:] += rng.normal(0.0, 0.03, size=(n_ads, 3))
            config_type = "adsorbate"
        traj, _ = _relax_trajectory(initial, stats, spec.max_relax_steps, with_stress=False)
        raw += [("relax", i, f) for i, f in _sample_relax(traj, recipe.relax, rng)]
        for _ in range(recipe.rattle):
            base_frame = traj[int(rng.integers(len(traj)))]
            raw.append(("rattle", -1, _label(_rattle(base_frame, rng, free_only=True), stats, False)))
        relaxed = traj[-1].copy()
        relaxed.calc = None
        md = _md_frames(relaxed, stats, rng, recipe, with_stress=False)
        raw += [("md", (k + 1) * recipe.md_stride, f) for k, f in enumerate(md)]

    task = dataclasses.replace(task, cell=cell)
    frames: list[Atoms] = []
    for frame_kind, step, frame in raw:
        reason = _pathology(frame)
        if reason is not None:
            stats.discarded[reason] += 1
            continue
        split = task.split
        if split == "train" and split_rng.random() < spec.val_fraction:
            split = "val"
        frames.append(_annotate(frame, task, frame_kind, step, split, config_type))
    return frames


def _relax_reference(task: _Task, seed: int, stats: _Stats) -> dict[str, Any]:
    """Initial structure + EMT relaxation reference for one held-out site combination."""
    rng = np.random.default_rng(_system_seed(seed, task.system_id))
    initial, cell = _initial_adsorbate_system(task, rng)
    task = dataclasses.replace(task, cell=cell)
    initial_frame = _annotate(_label(initial, stats, False), task, "initial", 0, task.split, "adsorbate")
    traj, converged = _relax_trajectory(initial, stats, RELAX_TASK_MAX_STEPS, with_stress=False)
    final = _annotate(traj[-1], task, "relaxed", len(traj) - 1, task.split, "adsorbate")
    slab = initial[initial.get_tags() != 2]
    slab_traj, _ = _relax_trajectory(slab, stats, RELAX_TASK_MAX_STEPS, with_stress=False)
    free = ~_fixed_mask(final)
    return {
        "initial": initial_frame,
        "relaxed": final,
        "record": {
            "task_id": task.system_id,
            "metal": task.metal,
            "facet": task.facet,
            "adsorbate": task.adsorbate,
            "site": task.site,
            "cell_size": cell,
            "split": task.split,
            "n_atoms": len(initial),
            "initial_energy": float(initial_frame.get_potential_energy()),
            "relaxed_energy": float(final.get_potential_energy()),
            "clean_slab_energy": float(slab_traj[-1].get_potential_energy()),
            "relaxed_fmax": float(np.linalg.norm(final.get_forces(apply_constraint=False)[free], axis=1).max()),
            "n_steps": len(traj) - 1,
            "converged": converged,
        },
    }


def _run_task(args: tuple[_Task, int, DatasetSize, str]) -> dict[str, Any]:
    """Worker entry point: compute one task and checkpoint it to its shard file."""
    task, seed, spec, shard_dir = args
    shard = Path(shard_dir) / f"{task.task_id:06d}.pkl"
    stats = _Stats()
    start = time.perf_counter()
    payload: dict[str, Any]
    if task.kind == "relax_task":
        payload = _relax_reference(task, seed, stats)
        n_frames = 0
    else:
        frames = _system_frames(task, seed, spec, stats)
        payload = {"frames": frames}
        n_frames = len(frames)
    meta = {
        "task_id": task.task_id,
        "n_frames": n_frames,
        "emt_calls": stats.emt_calls,
        "emt_seconds": stats.emt_seconds,
        "seconds": time.perf_counter() - start,
        "discarded": dict(stats.discarded),
    }
    payload["meta"] = meta
    tmp = shard.with_suffix(f".tmp{os.getpid()}")
    with tmp.open("wb") as fh:
        pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, shard)
    return meta


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def _fingerprint(seed: int, size_name: str, spec: DatasetSize) -> dict[str, Any]:
    return {"seed": int(seed), "size": size_name, "spec": spec.to_dict(), "version": GENERATOR_VERSION}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_summary(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _files_intact(out: Path, summary: Mapping[str, Any]) -> bool:
    """Whether every file listed in ``summary`` exists with its recorded size."""
    files = summary.get("files") or {}
    return bool(files) and all(
        (out / name).is_file() and (out / name).stat().st_size == meta.get("bytes") for name, meta in files.items()
    )


def _openblas_thread_controls() -> list[tuple[Callable[[], int], Callable[[int], None]]]:
    """``(get, set)`` thread-count functions of every OpenBLAS loaded in this process (Linux).

    EMT and BFGS work on tiny matrices, where threaded BLAS is several times *slower* (BFGS's
    ``eigh`` of a ~120x120 Hessian: 2 ms single-threaded vs 10-40 ms threaded, worse when workers
    compete for the cores); it also keeps the numerical environment the same in every process.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_"):
                get = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    set_.argtypes = [ctypes.c_int]
                    controls.append((get, set_))
    return controls


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Run the body with OpenBLAS limited to one thread, restoring the previous setting after."""
    controls = _openblas_thread_controls()
    previous = [(int(get()), set_) for get, set_ in controls]
    for _, set_ in previous:
        set_(1)
    try:
        yield
    finally:
        for n, set_ in previous:
            set_(n)


def _worker_init() -> None:
    for _, set_ in _openblas_thread_controls():
        set_(1)


JobRunner = Callable[[Callable[[Any], dict[str, Any]], list[Any]], Iterable[dict[str, Any]]]


@contextlib.contextmanager
def _task_runner(workers: int, n_jobs: int) -> Iterator[JobRunner]:
    """A ``map``-like runner: in-process for one worker, else a process pool (unordered).

    Task results do not depend on where they run: each task seeds its own generator and every
    process uses single-threaded BLAS.
    """
    if workers <= 1 or n_jobs <= 1:
        with _single_threaded_blas():
            yield map
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(processes=min(workers, n_jobs), initializer=_worker_init) as pool:
        yield lambda fn, jobs: pool.imap_unordered(fn, jobs, chunksize=1)


def _iter_shards(shard_dir: Path, tasks: Iterable[_Task]) -> Iterator[tuple[_Task, dict[str, Any]]]:
    for task in tasks:
        with (shard_dir / f"{task.task_id:06d}.pkl").open("rb") as fh:
            yield task, pickle.load(fh)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    size: str | DatasetSize | Mapping[str, Any] = "small",
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate (or reuse) an EMT-labelled S2EF-style dataset under ``out_dir``.

    Args:
        out_dir: output directory (created if needed).
        seed: global seed; the output is a pure function of ``(seed, size)``.
        size: ``"small"`` | ``"medium"`` | ``"large"``, a :class:`DatasetSize`, or a mapping of
            :class:`DatasetSize` fields (explicit counts).
        workers: worker processes; the output does not depend on it.
        progress: show a tqdm progress bar.
        overwrite: replace a complete dataset made with a different seed/size (otherwise that
            raises :class:`FileExistsError`).

    Returns:
        The summary dict that is also written to ``out_dir/summary.json`` (frame counts per
        split / kind / metal / adsorbate, seed, size, generator version, EMT wall time, ...).

    Files written: ``{train,val,test_id,test_ood}.extxyz``, ``relax_initial.extxyz``,
    ``relax_relaxed.extxyz``, ``relax_tasks.json`` and ``summary.json``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size_name, spec = resolve_size(size)
    fingerprint = _fingerprint(seed, size_name, spec)

    summary_path = out / _SUMMARY
    if summary_path.exists():
        existing = _read_summary(summary_path)
        if existing is not None and existing.get("fingerprint") == json.loads(json.dumps(fingerprint)):
            if _files_intact(out, existing):
                logger.info("%s holds a complete dataset (seed=%d, size=%s): nothing to do", out, seed, size_name)
                return existing
            logger.warning("%s: dataset files are missing or changed; regenerating", out)
        elif not overwrite:
            raise FileExistsError(f"{out} holds a dataset with a different seed/size/version; pass overwrite=True")
        summary_path.unlink()  # the directory no longer holds a complete dataset

    work = out / _WORK_DIR
    shard_dir = work / "shards"
    plan_file = work / "plan.json"
    if work.exists():
        try:
            same = json.loads(plan_file.read_text()) == json.loads(json.dumps(fingerprint))
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            logger.info("discarding stale partial work in %s", work)
            shutil.rmtree(work)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan_file, json.dumps(fingerprint, indent=1, sort_keys=True))

    wall_start = time.perf_counter()
    tasks, ood = plan_tasks(seed, spec)
    done = sum(1 for t in tasks if (shard_dir / f"{t.task_id:06d}.pkl").exists())  # resumed work
    logger.info(
        "datagen: seed=%d size=%s -> %d systems + %d relaxation references; %d already done; %d worker(s); "
        "test_ood combos: %s",
        seed,
        size_name,
        sum(t.kind != "relax_task" for t in tasks),
        sum(t.kind == "relax_task" for t in tasks),
        done,
        workers,
        ", ".join(f"{m}+{a}" for m, a in ood),
    )
    # expensive systems first for better load balance across workers
    cost = {"relax_task": 3, "adsorbate": 2, "slab": 1, "bulk": 0}
    order = sorted(tasks, key=lambda t: (-cost[t.kind], t.task_id))
    metas: dict[int, dict[str, Any]] = {}
    jobs = []
    for t in order:
        shard = shard_dir / f"{t.task_id:06d}.pkl"
        if shard.exists():  # checkpoint of an interrupted run
            with shard.open("rb") as fh:
                metas[t.task_id] = pickle.load(fh)["meta"]
        else:
            jobs.append((t, seed, spec, str(shard_dir)))
    frames_done = sum(m["n_frames"] for m in metas.values())
    interactive = sys.stderr.isatty()
    with (
        _task_runner(workers, len(jobs)) as run_jobs,
        tqdm(
            total=len(tasks),
            initial=len(metas),
            desc="datagen",
            unit="sys",
            disable=not progress,
            mininterval=0.5 if interactive else 15.0,
            dynamic_ncols=True,
        ) as bar,
    ):
        for meta in run_jobs(_run_task, jobs):
            metas[meta["task_id"]] = meta
            frames_done += meta["n_frames"]
            bar.set_postfix(frames=frames_done, refresh=False)
            bar.update(1)
    compute_seconds = time.perf_counter() - wall_start

    logger.info("writing extxyz files to %s", out)
    summary = _write_outputs(out, shard_dir, tasks)
    emt_seconds = sum(m["emt_seconds"] for m in metas.values())
    discarded: Counter = Counter()
    for m in metas.values():
        discarded.update(m["discarded"])
    summary.update(
        fingerprint=fingerprint,
        seed=int(seed),
        size=size_name,
        spec=spec.to_dict(),
        generator_version=GENERATOR_VERSION,
        ase_version=__import__("ase").__version__,
        python=platform.python_version(),
        workers=int(workers),
        test_ood_combos=[list(c) for c in ood],
        lattice_constants=EMT_LATTICE_CONSTANTS,
        discarded_frames=dict(sorted(discarded.items())),
        emt_calls=int(sum(m["emt_calls"] for m in metas.values())),
        emt_wall_seconds=round(emt_seconds, 2),
        task_seconds=round(sum(m["seconds"] for m in metas.values()), 2),
        compute_wall_seconds=round(compute_seconds, 2),
        wall_seconds=round(time.perf_counter() - wall_start, 2),
    )
    write_text_atomic(out / _SUMMARY, json.dumps(summary, indent=1, sort_keys=True))
    shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "datagen done in %.1f s (EMT %.1f s over %d calls): %s frames; %d relaxation references; discarded %s",
        summary["wall_seconds"],
        emt_seconds,
        summary["emt_calls"],
        summary["frames_per_split"],
        summary["relax_tasks"],
        dict(discarded) or "none",
    )
    return summary


def _write_outputs(out: Path, shard_dir: Path, tasks: list[_Task]) -> dict[str, Any]:
    """Concatenate shards in task order into the split files and relaxation references."""
    handles = {s: (out / f"{s}.extxyz.tmp").open("w") for s in SPLITS}
    relax_names = ("relax_initial.extxyz", "relax_relaxed.extxyz")
    relax_handles = [(out / f"{n}.tmp").open("w") for n in relax_names]
    counts: dict[str, Counter] = {k: Counter() for k in ("split", "kind", "config", "metal", "adsorbate", "facet")}
    systems: dict[str, set[str]] = {s: set() for s in SPLITS}
    records: list[dict[str, Any]] = []
    try:
        for task, payload in _iter_shards(shard_dir, tasks):
            if task.kind == "relax_task":
                record = dict(payload["record"], index=len(records))
                records.append(record)
                ase_write(relax_handles[0], payload["initial"], format="extxyz")
                ase_write(relax_handles[1], payload["relaxed"], format="extxyz")
                continue
            for frame in payload["frames"]:
                info = frame.info
                split = info["split"]
                ase_write(handles[split], frame, format="extxyz")
                systems[split].add(info["system_id"])
                counts["split"][split] += 1
                counts["kind"][f"{split}/{info['frame_kind']}"] += 1
                counts["config"][f"{split}/{info['config_type']}"] += 1
                counts["metal"][info["metal"]] += 1
                counts["adsorbate"][info["adsorbate"]] += 1
                counts["facet"][info["facet"]] += 1
    finally:
        for fh in [*handles.values(), *relax_handles]:
            fh.close()
    files: dict[str, dict[str, Any]] = {}
    for name in [f"{s}.extxyz" for s in SPLITS] + list(relax_names):
        os.replace(out / f"{name}.tmp", out / name)
    write_text_atomic(out / "relax_tasks.json", json.dumps(records, indent=1))
    for name in [f"{s}.extxyz" for s in SPLITS] + [*relax_names, "relax_tasks.json"]:
        files[name] = {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}
    return {
        "files": files,
        "frames_total": int(sum(counts["split"].values())),
        "frames_per_split": {s: int(counts["split"][s]) for s in SPLITS},
        "frames_per_split_kind": dict(sorted(counts["kind"].items())),
        "frames_per_split_config": dict(sorted(counts["config"].items())),
        "frames_per_metal": dict(sorted(counts["metal"].items())),
        "frames_per_adsorbate": dict(sorted(counts["adsorbate"].items())),
        "frames_per_facet": dict(sorted(counts["facet"].items())),
        "systems_per_split": {s: len(systems[s]) for s in SPLITS},
        "relax_tasks": len(records),
    }


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc datagen``."""
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="global random seed (default: 0)")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="small",
        help="preset: small (~300 frames, <1 min), medium (~30k frames), large (~3x medium)",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete dataset with other settings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc datagen``."""
    try:
        generate_dataset(
            args.out,
            seed=args.seed,
            size=args.size,
            workers=max(1, args.workers),
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except FileExistsError as exc:
        logger.error("%s", exc)
        return 1
    return 0
