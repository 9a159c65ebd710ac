"""OC20-S2EF-style dataset generator, labelled by EMT, a teacher potential or your own calculator.

The labeller (``--labeller emt | sevennet | module:factory``, see :mod:`equiformer_calc.data.labellers`)
drives every relaxation and MD run that makes the frames and labels them; its name and version are
stored in every frame (``labeller``, ``labeller_version``). With EMT the dataset covers seven fcc
metals (Cu, Ag, Au, Ni, Pd, Pt, Al); the ``teacher`` size adds Rh and Ir, slabs at ASE's default
(experimental) lattice constants beside the labeller's own, and gas-phase molecules (H2, H2O, CO, N2,
CO2, NH3, CH4, O2, NO, CH3OH) at and near equilibrium. Systems come as

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
under ``OUT/.datagen-work/shards`` (``NNNNNN.extxyz.xz`` + ``NNNNNN.json``, no pickles), and every
labeller call of an unfinished system is journaled (``journal/NNNNNN.jsonl``), so a run killed at any
point resumes where it stopped without labelling anything twice; final files are written to
temporary names and renamed, and ``summary.json`` (written last) marks a complete dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import lzma
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
from ase.build import molecule as build_molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, reference_states
from ase.eos import EquationOfState
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.geometry import find_mic
from ase.io import read as ase_read
from ase.io import write as ase_write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.neighborlist import neighbor_list
from ase.optimize import BFGS

from ..data.labellers import (
    JournaledCalculator,
    LabelJournal,
    Labeller,
    LabellerError,
    LabelStats,
    resolve_labeller,
)
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
GENERATOR_VERSION = "2.0.0"

HELP = "generate a labelled dataset of adsorbates on metal surfaces, bulk and gas molecules (extxyz)"

#: The EMT metals (the default domain).
METALS: tuple[str, ...] = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
#: The teacher domain: every fcc metal of the distilled model.
TEACHER_METALS: tuple[str, ...] = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Rh", "Ir", "Al")
#: Gas-phase molecules (ASE's g2 names) of the teacher domain: adsorption energies need them.
GAS_MOLECULES: tuple[str, ...] = ("H2", "H2O", "CO", "N2", "CO2", "NH3", "CH4", "O2", "NO", "CH3OH")
#: Vacuum (Å) around gas-phase molecules (non-periodic; the box only sets the cell).
GAS_VACUUM = 6.0

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
    metals: tuple[str, ...] = METALS
    gas_molecules: tuple[str, ...] = ()
    gas_replicas: int = 3
    gas_frames: FrameRecipe = field(default_factory=lambda: FrameRecipe(relax=5, rattle=12, md=6, md_stride=4))
    ase_lattice_fraction: float = 0.0
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
        for key in ("adsorbate_frames", "slab_frames", "bulk_frames", "gas_frames"):
            if isinstance(kwargs.get(key), Mapping):
                kwargs[key] = FrameRecipe(**kwargs[key])
        for key in ("metals", "gas_molecules"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
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
    # strained / rattled bulk cells only (with stress), 6 replicas of each (metal, cell) like "large":
    # extra bulk data for the elastic response (4,571 frames with seed 1, 7 min on one busy core), to add
    # to medium's training set; see the bulk-properties note in checkpoints/emt-small.md
    "bulk": DatasetSize(adsorbate_systems=0, slab_systems=0, relax_tasks=0, bulk_replicas=6),
    # distillation from an expensive teacher: nine metals, half of the slabs at ASE's default lattice
    # constants, gas molecules. Measured with SevenNet-0 (seed 0): 12,670 frames from 37,068 calls,
    # 1.8 h wall on 2 shared cores (checkpoints/pbe-distilled-small-data/summary.json)
    "teacher": DatasetSize(
        metals=TEACHER_METALS,
        gas_molecules=GAS_MOLECULES,
        gas_replicas=4,
        ase_lattice_fraction=0.5,
        adsorbate_systems=400,
        slab_systems=90,
        bulk_systems=180,
        bulk_replicas=4,
        adsorbate_frames=FrameRecipe(relax=10, rattle=3, md=4, md_stride=3),
        slab_frames=FrameRecipe(relax=8, rattle=6, md=5, md_stride=3),
        bulk_frames=FrameRecipe(relax=5, rattle=10, md=5, md_stride=3),
        max_relax_steps=60,
        relax_tasks=48,
    ),
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


def ase_lattice_constant(metal: str) -> float:
    """ASE's default (experimental) fcc lattice constant, the one ``fcc111(metal, ...)`` uses."""
    return float(reference_states[atomic_numbers[metal]]["a"])


def build_slab(metal: str, facet: str, cell: tuple[int, int, int], a: float | None = None) -> Atoms:
    """Bulk-terminated slab, bottom half fixed, OC20 tags.

    ``a`` is the lattice constant (default: the EMT minimum of :data:`EMT_LATTICE_CONSTANTS`).
    Tags follow OC20: 0 = fixed sub-surface atoms, 1 = free (surface) atoms, 2 = adsorbate.
    """
    a = EMT_LATTICE_CONSTANTS[metal] if a is None else float(a)
    slab = _SLAB_BUILDERS[facet](metal, size=cell, a=a, vacuum=SLAB_VACUUM)
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


def _coordination(atoms: Atoms) -> np.ndarray:
    nn = float(neighbor_list("d", atoms, 4.5).min())  # nearest-neighbour distance of the metal
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


def site_positions(slab: Atoms, facet: str, site: str) -> list[np.ndarray]:
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

    cn = _coordination(slab)
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


def build_bulk_cell(metal: str, kind: str, a: float | None = None) -> Atoms:
    """Unstrained fcc bulk cell of the given kind (see :data:`BULK_CELLS`); ``a`` as in :func:`build_slab`."""
    cubic, reps = BULK_CELLS[kind]
    atoms = build_bulk(metal, "fcc", a=EMT_LATTICE_CONSTANTS[metal] if a is None else float(a), cubic=cubic)
    atoms = atoms.repeat(reps)
    atoms.pbc = True
    atoms.set_tags(np.zeros(len(atoms), dtype=int))
    return atoms


def build_gas_molecule(name: str) -> Atoms:
    """A gas-phase molecule (ASE's g2 geometry) centred in a non-periodic box of :data:`GAS_VACUUM`."""
    atoms = build_molecule(name)
    atoms.center(vacuum=GAS_VACUUM)
    atoms.pbc = False
    atoms.set_tags(np.full(len(atoms), 2))
    return atoms


# --------------------------------------------------------------------------------------
# Labelling
# --------------------------------------------------------------------------------------


@dataclass
class _Stats:
    """Bookkeeping for one task: labeller calls (paid and replayed) and discarded frames."""

    labeller: Labeller
    journal: LabelJournal | None = None
    calls: LabelStats = field(default_factory=LabelStats)
    discarded: Counter = field(default_factory=Counter)

    def calculator(self) -> JournaledCalculator:
        """A fresh ASE calculator view on the labeller, sharing this task's journal and counters."""
        return JournaledCalculator(self.labeller, self.calls, self.journal)


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
    work.calc = stats.calculator()
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
    """BFGS-relax ``atoms`` with the labeller; returns every visited frame and whether it converged."""
    work = atoms.copy()
    work.calc = stats.calculator()
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
    work.calc = stats.calculator()
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
    kind: str  # bulk | slab | adsorbate | gas | relax_task
    system_id: str
    split: str  # train | test_id | test_ood (train frames are further split into train/val)
    metal: str
    facet: str = "bulk"
    adsorbate: str = "none"
    site: str = "none"
    cell: str = ""


def _system_seed(seed: int, key: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(key.encode())])


def choose_ood_combos(seed: int, n: int, metals_pool: Sequence[str] = METALS) -> list[tuple[str, str]]:
    """``n`` (metal, adsorbate) pairs held out entirely; distinct metals/adsorbates while possible."""
    rng = np.random.default_rng(_system_seed(seed, "ood-combos"))
    adsorbates = list(ADSORBATES)
    combos: list[tuple[str, str]] = []
    while len(combos) < n:
        metals = [metals_pool[i] for i in rng.permutation(len(metals_pool))]
        ads = [adsorbates[i] for i in rng.permutation(len(adsorbates))]
        for m, a in zip(metals, ads, strict=False):
            if len(combos) < n and (m, a) not in combos:
                combos.append((m, a))
        if len(combos) >= len(metals_pool) * len(adsorbates):
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
    METALS = spec.metals  # noqa: N806 (the domain of this spec)
    ood = set(choose_ood_combos(seed, spec.ood_combos, METALS))

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

    # gas-phase molecules: one replica of each held out when there are three or more
    gas_keys = [(g, r) for g in spec.gas_molecules for r in range(spec.gas_replicas)]
    held_gas = {(g, spec.gas_replicas - 1) for g in spec.gas_molecules} if spec.gas_replicas >= 3 else set()
    gas_items = [(key, "test_id" if key in held_gas else "train") for key in gas_keys]

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
    for (g, r), split in gas_items:
        add(kind="gas", system_id=f"gas-{g}-r{r}", split=split, metal="none", facet="gas", adsorbate=g)
    for (m, f, a, s), split in relax_items:
        add(kind="relax_task", system_id=f"relax-{m}-{f}-{a}-{s}", split=split, metal=m, facet=f, adsorbate=a, site=s)
    return tasks, sorted(ood)


# --------------------------------------------------------------------------------------
# Task execution (runs in worker processes)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """What every task of one run shares (sent to worker processes with each task)."""

    seed: int
    spec: DatasetSize
    shard_dir: str
    labeller: str
    labeller_version: str
    lattice: dict[str, float]  # metal -> the labeller's own fcc lattice constant (Å)
    journal: bool  # journal every labeller call (expensive labellers)


def _annotate(
    frame: Atoms, task: _Task, frame_kind: str, step: int, split: str, config_type: str, stats: _Stats
) -> Atoms:
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
        labeller=stats.labeller.name,
        labeller_version=stats.labeller.version,
    )
    frame.new_array("fixed", _fixed_mask(frame))
    return frame


def _slab_lattice(task: _Task, ctx: _Context) -> float:
    """The labeller's lattice constant, or ASE's default one for ``ase_lattice_fraction`` of the systems."""
    fraction = ctx.spec.ase_lattice_fraction
    if fraction > 0:
        draw = np.random.default_rng(_system_seed(ctx.seed, "lattice:" + task.system_id)).random()
        if draw < fraction:
            return ase_lattice_constant(task.metal)
    return ctx.lattice[task.metal]


def _random_slab(task: _Task, rng: np.random.Generator, a: float) -> tuple[Atoms, str]:
    options = SLAB_CELLS[task.facet]
    cell = options[int(rng.choice(len(options), p=_SLAB_CELL_WEIGHTS))]
    return build_slab(task.metal, task.facet, cell, a=a), "x".join(map(str, cell))


def _initial_adsorbate_system(task: _Task, rng: np.random.Generator, a: float) -> tuple[Atoms, str]:
    slab, cell = _random_slab(task, rng, a)
    if task.site == RANDOM_SITE:
        frac = rng.uniform(0.0, 1.0, size=2)
        xy = frac @ slab.cell.array[:2, :2]
    else:
        candidates = site_positions(slab, task.facet, task.site)
        xy = candidates[int(rng.integers(len(candidates)))]
    return place_adsorbate(slab, task.adsorbate, xy, rng), cell


def _system_frames(task: _Task, ctx: _Context, stats: _Stats) -> list[Atoms]:
    """All labelled frames of one bulk / slab / adsorbate / gas system (already split-annotated)."""
    seed, spec = ctx.seed, ctx.spec
    rng = np.random.default_rng(_system_seed(seed, task.system_id))
    split_rng = np.random.default_rng(_system_seed(seed, "split:" + task.system_id))
    raw: list[tuple[str, int, Atoms]] = []  # (frame kind, trajectory step, labelled frame)

    if task.kind == "bulk":
        recipe = spec.bulk_frames
        base = build_bulk_cell(task.metal, task.cell, a=ctx.lattice[task.metal])

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
    elif task.kind == "gas":
        recipe = spec.gas_frames
        base = build_gas_molecule(task.adsorbate)
        traj, _ = _relax_trajectory(_rattle(base, rng, free_only=False), stats, spec.max_relax_steps, False)
        raw += [("relax", i, f) for i, f in _sample_relax(traj, recipe.relax, rng)]
        relaxed = traj[-1].copy()
        relaxed.calc = None
        centre = relaxed.positions.mean(axis=0)
        for k in range(recipe.rattle):
            distorted = relaxed.copy()
            if k % 2:  # stretch or compress every bond together, then rattle
                distorted.positions = centre + rng.uniform(0.88, 1.15) * (distorted.positions - centre)
            raw.append(("rattle", -1, _label(_rattle(distorted, rng, free_only=False), stats, False)))
        if len(base) > 1:
            md = _md_frames(relaxed, stats, rng, recipe, with_stress=False)
            raw += [("md", (k + 1) * recipe.md_stride, f) for k, f in enumerate(md)]
        config_type = "gas"
        cell = "molecule"  # (an empty string would not survive an extxyz round trip)
    else:
        if task.kind == "slab":
            recipe = spec.slab_frames
            nx, ny, layers = (int(x) for x in task.cell.split("x"))
            a = _slab_lattice(task, ctx)
            initial = _rattle(build_slab(task.metal, task.facet, (nx, ny, layers), a=a), rng, free_only=True)
            cell = task.cell
            config_type = "slab"
        else:
            recipe = spec.adsorbate_frames
            initial, cell = _initial_adsorbate_system(task, rng, _slab_lattice(task, ctx))
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
        frames.append(_annotate(frame, task, frame_kind, step, split, config_type, stats))
    return frames


def _relax_reference(task: _Task, ctx: _Context, stats: _Stats) -> dict[str, Any]:
    """Initial structure + labeller relaxation reference for one held-out site combination."""
    rng = np.random.default_rng(_system_seed(ctx.seed, task.system_id))
    initial, cell = _initial_adsorbate_system(task, rng, _slab_lattice(task, ctx))
    task = dataclasses.replace(task, cell=cell)
    initial_frame = _annotate(_label(initial, stats, False), task, "initial", 0, task.split, "adsorbate", stats)
    traj, converged = _relax_trajectory(initial, stats, RELAX_TASK_MAX_STEPS, with_stress=False)
    final = _annotate(traj[-1], task, "relaxed", len(traj) - 1, task.split, "adsorbate", stats)
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


_LABELLERS: dict[str, Labeller] = {}


def _labeller(name: str) -> Labeller:
    """The process-wide :class:`Labeller` for ``name`` (resolved once per worker process)."""
    if name not in _LABELLERS:
        _LABELLERS[name] = resolve_labeller(name)
    return _LABELLERS[name]


def _shard_paths(shard_dir: Path, task_id: int) -> tuple[Path, Path]:
    """(frames, metadata) files of one finished task; the metadata file is written last."""
    return shard_dir / f"{task_id:06d}.extxyz.xz", shard_dir / f"{task_id:06d}.json"


def _journal_path(shard_dir: Path, task_id: int) -> Path:
    return shard_dir.parent / "journal" / f"{task_id:06d}.jsonl"


def _run_task(args: tuple[_Task, _Context]) -> dict[str, Any]:
    """Worker entry point: compute one task and checkpoint it to its shard files.

    Frames go to ``NNNNNN.extxyz.xz``, then metadata (and a relaxation record) to ``NNNNNN.json``;
    both are written to temporary names and renamed, the JSON last, so a shard exists only complete.
    With ``ctx.journal`` every labeller call is journaled first, and a rerun replays it.
    """
    task, ctx = args
    frames_xz, meta = _compute_task(task, ctx, journal=ctx.journal)
    _store_shard(Path(ctx.shard_dir), task.task_id, frames_xz, meta)
    return meta


def _compute_task(task: _Task, ctx: _Context, journal: bool) -> tuple[bytes, dict[str, Any]]:
    """Label one task: its frames as xz-compressed extxyz bytes (the shard file's content) and its
    metadata. With ``journal`` every labeller call goes through the task's journal first."""
    shard_dir = Path(ctx.shard_dir)
    journal_path = _journal_path(shard_dir, task.task_id)
    journal = LabelJournal(journal_path) if journal else None
    stats = _Stats(labeller=_labeller(ctx.labeller), journal=journal)
    start = time.perf_counter()
    record = None
    if task.kind == "relax_task":
        payload = _relax_reference(task, ctx, stats)
        frames = [payload["initial"], payload["relaxed"]]
        record = payload["record"]
        n_frames = 0
    else:
        frames = _system_frames(task, ctx, stats)
        n_frames = len(frames)
    meta = {
        "task_id": task.task_id,
        "n_frames": n_frames,
        "labeller_calls": stats.calls.calls,
        "labeller_seconds": stats.calls.seconds,
        "replayed_calls": stats.calls.replayed,
        "seconds": time.perf_counter() - start,
        "discarded": dict(stats.discarded),
        "record": record,
    }
    buffer = io.BytesIO()
    with lzma.open(buffer, "wt") as fh:
        ase_write(fh, frames, format="extxyz")
    if journal is not None:
        journal.close()
    return buffer.getvalue(), meta


def _store_shard(shard_dir: Path, task_id: int, frames_xz: bytes, meta: dict[str, Any]) -> None:
    """Checkpoint a computed task: frames, then metadata (each to a temporary name, renamed), then
    drop its journal, whose calls the shard now holds."""
    frames_path, meta_path = _shard_paths(shard_dir, task_id)
    tmp = frames_path.with_name(f"{frames_path.name}.tmp{os.getpid()}")
    tmp.write_bytes(frames_xz)
    os.replace(tmp, frames_path)
    write_text_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True))
    _journal_path(shard_dir, task_id).unlink(missing_ok=True)


class LabellingFailed(RuntimeError):
    """Some labelling tasks failed on an executor; the finished ones are checkpointed."""


def _compute_task_job(args: tuple[_Task, _Context]) -> tuple[bytes, dict[str, Any]]:
    """Task of :func:`generate_dataset` on an executor (a Dask worker): compute, return to the
    client, which alone writes the shard. The labeller call journal is kept when this process sees
    the output folder (same machine or shared file system), so even a task cut short resumes
    mid-way; elsewhere a retried task starts over."""
    task, ctx = args
    journal = ctx.journal and Path(ctx.shard_dir).is_dir()
    with _single_threaded_blas():
        return _compute_task(task, ctx, journal=journal)


def _executor_jobs(executor: Any, jobs: list[tuple[_Task, _Context]], failures: list[str]) -> Iterator[dict[str, Any]]:
    """Run ``jobs`` on ``executor`` and store each shard here as it arrives; a failing task is
    appended to ``failures`` (``"task N (system): error"``) and the others go on."""
    for outcome in executor.map(_compute_task_job, jobs, name="datagen"):
        task, ctx = jobs[outcome.index]
        if outcome.error is not None:
            failures.append(f"task {task.task_id} ({task.kind} {task.system_id}): {outcome.error}")
            continue
        frames_xz, meta = outcome.value
        _store_shard(Path(ctx.shard_dir), task.task_id, frames_xz, meta)
        yield meta


# --------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------


def _fingerprint(seed: int, size_name: str, spec: DatasetSize, labeller: Labeller, compress: bool) -> dict[str, Any]:
    return {
        "seed": int(seed),
        "size": size_name,
        "spec": spec.to_dict(),
        "version": GENERATOR_VERSION,
        "labeller": labeller.name,
        "labeller_version": labeller.version,
        "compress": bool(compress),
    }


def fit_lattice_constants(labeller: Labeller, metals: Sequence[str]) -> dict[str, float]:
    """The labeller's own fcc lattice constants: Birch-Murnaghan fit of 9 primitive-cell energies at ±4 %."""
    stats = _Stats(labeller=labeller)
    out: dict[str, float] = {}
    for metal in metals:
        a_guess = ase_lattice_constant(metal)
        volumes, energies = [], []
        for scale in np.linspace(0.96, 1.04, 9):
            atoms = build_bulk(metal, "fcc", a=a_guess * scale)
            atoms.calc = stats.calculator()
            volumes.append(atoms.get_volume())
            energies.append(atoms.get_potential_energy())
        v0, _, _ = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
        out[metal] = round(float((4.0 * v0) ** (1.0 / 3.0)), 5)
    return out


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
    # torch-based labellers: never fork a process whose OpenMP runtime is already running
    method = "fork" if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules else "spawn"
    with mp.get_context(method).Pool(processes=min(workers, n_jobs), initializer=_worker_init) as pool:
        yield lambda fn, jobs: pool.imap_unordered(fn, jobs, chunksize=1)


def _read_shard(shard_dir: Path, task_id: int) -> tuple[list[Atoms], dict[str, Any]]:
    frames_path, meta_path = _shard_paths(shard_dir, task_id)
    meta = json.loads(meta_path.read_text())
    with lzma.open(frames_path, "rt") as fh:
        frames = ase_read(fh, index=":", format="extxyz")
    return frames, meta


def _shard_done(shard_dir: Path, task_id: int) -> bool:
    return all(p.exists() for p in _shard_paths(shard_dir, task_id))


def generate_dataset(
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    size: str | DatasetSize | Mapping[str, Any] = "small",
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    labeller: str = "emt",
    compress: bool = False,
    executor: Any = None,
) -> dict[str, Any]:
    """Generate (or reuse) a labelled S2EF-style dataset under ``out_dir``.

    Args:
        out_dir: output directory (created if needed).
        seed: global seed; the output is a pure function of ``(seed, size, labeller)``.
        size: ``"small"`` | ``"medium"`` | ``"large"`` | ``"teacher"``, a :class:`DatasetSize`,
            or a mapping of :class:`DatasetSize` fields (explicit counts).
        workers: worker processes; the output does not depend on it.
        progress: show a tqdm progress bar (with an ETA).
        overwrite: replace a complete dataset made with other settings (otherwise that
            raises :class:`FileExistsError`).
        labeller: ``emt``, ``sevennet[:MODEL]`` or ``module:factory`` (see
            :func:`equiformer_calc.data.labellers.resolve_labeller`). Anything but EMT has every
            call journaled, so a killed run resumes without labelling anything twice.
        compress: write the split files xz-compressed (``*.extxyz.xz``; ASE reads them directly).
        executor: an :class:`~equiformer_calc.distributed.Executor` (e.g. Dask) to run the tasks
            on instead of ``workers`` local processes; this process writes every shard as its
            task returns, so a killed run resumes from the shards here. The output does not
            depend on it.

    Returns:
        The summary dict that is also written to ``out_dir/summary.json`` (frame counts per
        split / kind / metal / adsorbate, seed, size, generator version, labeller calls and time, ...).

    Files written: ``{train,val,test_id,test_ood}.extxyz``, ``relax_initial.extxyz``,
    ``relax_relaxed.extxyz`` (each with ``.xz`` when compressed), ``relax_tasks.json`` and
    ``summary.json``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    size_name, spec = resolve_size(size)
    resolved = resolve_labeller(labeller)
    resolved.check_elements(set(spec.metals) | {"H", "C", "N", "O"})
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(seed, size_name, spec, resolved, compress)

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
    if resolved.name == "emt":
        lattice = {m: EMT_LATTICE_CONSTANTS[m] for m in spec.metals}
    else:
        lattice_file = work / "lattice.json"
        try:
            lattice = json.loads(lattice_file.read_text())
        except (OSError, json.JSONDecodeError):
            logger.info("fitting %s's own fcc lattice constants (%d metals)", resolved.name, len(spec.metals))
            lattice = fit_lattice_constants(resolved, spec.metals)
            write_text_atomic(lattice_file, json.dumps(lattice, indent=1, sort_keys=True))
    ctx = _Context(
        seed=int(seed),
        spec=spec,
        shard_dir=str(shard_dir),
        labeller=resolved.name,
        labeller_version=resolved.version,
        lattice=dict(lattice),
        journal=resolved.name != "emt",
    )
    tasks, ood = plan_tasks(seed, spec)
    done = sum(1 for t in tasks if _shard_done(shard_dir, t.task_id))  # resumed work
    logger.info(
        "datagen: labeller %s (%s), seed=%d size=%s -> %d systems + %d relaxation references; %d already done; "
        "%d worker(s); test_ood combos: %s",
        resolved.name,
        resolved.version,
        seed,
        size_name,
        sum(t.kind != "relax_task" for t in tasks),
        sum(t.kind == "relax_task" for t in tasks),
        done,
        workers,
        ", ".join(f"{m}+{a}" for m, a in ood),
    )
    # expensive systems first for better load balance across workers
    cost = {"relax_task": 3, "adsorbate": 2, "slab": 1, "bulk": 0, "gas": 0}
    order = sorted(tasks, key=lambda t: (-cost[t.kind], t.task_id))
    metas: dict[int, dict[str, Any]] = {}
    jobs = []
    for t in order:
        if _shard_done(shard_dir, t.task_id):  # checkpoint of an interrupted run
            metas[t.task_id] = json.loads(_shard_paths(shard_dir, t.task_id)[1].read_text())
        else:
            jobs.append((t, ctx))
    frames_done = sum(m["n_frames"] for m in metas.values())
    interactive = sys.stderr.isatty()
    failures: list[str] = []
    if executor is not None:
        workers = executor.n_workers
        runner: contextlib.AbstractContextManager[JobRunner] = contextlib.nullcontext(
            lambda _fn, todo: _executor_jobs(executor, todo, failures)
        )
    else:
        runner = _task_runner(workers, len(jobs))
    with (
        runner as run_jobs,
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
    if failures:
        raise LabellingFailed(
            f"{len(failures)} of {len(jobs)} labelling task(s) failed (the others are checkpointed in {shard_dir}; "
            "rerun to retry only these): " + "; ".join(failures)
        )
    compute_seconds = time.perf_counter() - wall_start

    logger.info("writing extxyz files to %s", out)
    summary = _write_outputs(out, shard_dir, tasks, compress)
    labeller_seconds = sum(m["labeller_seconds"] for m in metas.values())
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
        labeller=resolved.name,
        labeller_version=resolved.version,
        lattice_constants=dict(lattice),
        discarded_frames=dict(sorted(discarded.items())),
        labeller_calls=int(sum(m["labeller_calls"] for m in metas.values())),
        labeller_wall_seconds=round(labeller_seconds, 2),
        task_seconds=round(sum(m["seconds"] for m in metas.values()), 2),
        compute_wall_seconds=round(compute_seconds, 2),
        wall_seconds=round(time.perf_counter() - wall_start, 2),
    )
    write_text_atomic(out / _SUMMARY, json.dumps(summary, indent=1, sort_keys=True))
    shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "datagen done in %.1f s (labeller %.1f s over %d calls): %s frames; %d relaxation references; discarded %s",
        summary["wall_seconds"],
        labeller_seconds,
        summary["labeller_calls"],
        summary["frames_per_split"],
        summary["relax_tasks"],
        dict(discarded) or "none",
    )
    return summary


def _write_outputs(out: Path, shard_dir: Path, tasks: list[_Task], compress: bool = False) -> dict[str, Any]:
    """Concatenate shards in task order into the split files and relaxation references."""
    ext = ".extxyz.xz" if compress else ".extxyz"

    def open_tmp(name: str) -> Any:
        path = out / f"{name}.tmp"
        # preset=6 with a fixed check: the compressed bytes are a pure function of the text
        return lzma.open(path, "wt", preset=6, check=lzma.CHECK_CRC64) if compress else path.open("w")

    handles = {s: open_tmp(f"{s}{ext}") for s in SPLITS}
    relax_names = (f"relax_initial{ext}", f"relax_relaxed{ext}")
    relax_handles = [open_tmp(n) for n in relax_names]
    counts: dict[str, Counter] = {k: Counter() for k in ("split", "kind", "config", "metal", "adsorbate", "facet")}
    systems: dict[str, set[str]] = {s: set() for s in SPLITS}
    records: list[dict[str, Any]] = []
    try:
        for task in tasks:
            shard_frames, meta = _read_shard(shard_dir, task.task_id)
            if task.kind == "relax_task":
                record = dict(meta["record"], index=len(records))
                records.append(record)
                ase_write(relax_handles[0], shard_frames[0], format="extxyz")
                ase_write(relax_handles[1], shard_frames[1], format="extxyz")
                continue
            for frame in shard_frames:
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
    for name in [f"{s}{ext}" for s in SPLITS] + list(relax_names):
        os.replace(out / f"{name}.tmp", out / name)
    write_text_atomic(out / "relax_tasks.json", json.dumps(records, indent=1))
    for name in [f"{s}{ext}" for s in SPLITS] + [*relax_names, "relax_tasks.json"]:
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
        help="preset: small (~300 frames, <1 min), medium (~30k frames), large (~3x medium), "
        "teacher (~15k frames, 9 metals + gas molecules, sized for an expensive labeller), "
        "bulk (strained/rattled bulk cells only, with stress)",
    )
    parser.add_argument(
        "--labeller",
        default="emt",
        help="what labels the data and drives its relaxations/MD: emt (default), sevennet[:MODEL] (needs the "
        "[teacher] extra), or module:factory for any importable function returning an ASE calculator",
    )
    parser.add_argument("--compress", action="store_true", help="write the split files as .extxyz.xz")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes: a local Dask cluster when the [distributed] extra is installed, "
                        "else a process pool (the output does not depend on it)")
    parser.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="label on the Dask cluster of this scheduler (tcp://HOST:8786); shards are written here")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete dataset with other settings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``equiformer-calc datagen``."""
    from ..distributed import open_executor

    dask = args.scheduler is not None
    if not dask and args.workers > 1:
        try:
            import distributed  # noqa: F401

            dask = True
        except ImportError:
            logger.info("dask.distributed is not installed: %d worker processes in a local pool", args.workers)
    try:
        with (
            open_executor(scheduler=args.scheduler) if args.scheduler
            else open_executor(workers=args.workers) if dask
            else contextlib.nullcontext(None)
        ) as executor:
            generate_dataset(
                args.out,
                seed=args.seed,
                size=args.size,
                workers=max(1, args.workers),
                progress=not args.no_progress,
                overwrite=args.overwrite,
                labeller=args.labeller,
                compress=args.compress,
                executor=executor,
            )
    except (FileExistsError, LabellerError, LabellingFailed) as exc:
        logger.error("%s", exc)
        return 1
    return 0
