"""Adsorbate screening: surfaces x adsorbates x symmetry-distinct sites -> adsorption energies.

Python::

    from equiformer_calc import screen_adsorbates
    from equiformer_calc.workflows.screening import build_surface
    slabs = {f"{m}-fcc111": build_surface(m, "111") for m in ("Cu", "Pt")}
    out = screen_adsorbates(slabs, ["O", "OH", "CO"], db="screen.db", out_dir="screen")
    out.summary  # one row per (surface, adsorbate): minimum adsorption energy and its site

Command line::

    equiformer-calc screen --metals Cu,Pt --facets 111,100 --adsorbates O,OH,CO --db screen.db --out-dir screen

What it does:

1. **Surfaces**: ASE's fcc111/100/110/211 builders at the EMT lattice constants of
   :data:`equiformer_calc.train.datagen.EMT_LATTICE_CONSTANTS` (:func:`build_surface`), or your
   own slabs as ASE ``Atoms`` or pymatgen ``Structure`` / ``Slab`` (:func:`slab_from_any`: the
   surface normal must be the third lattice vector; the slab is re-oriented so that it is +z).
2. **Sites**: pymatgen's ``AdsorbateSiteFinder`` (symmetry-reduced), each site re-labelled by
   the number of surface atoms it touches: ``ontop`` (1), ``bridge`` (2), ``fcc`` / ``hcp``
   (3-fold; hcp when an atom of the second layer lies right below) and ``hollow`` (4-fold).
3. **Placement**: the adsorbate's binding atom (the first atom; templates of
   :data:`~equiformer_calc.train.datagen.ADSORBATES` for names) goes above the site at the
   binding distance used by the data generator, the rest of the molecule pointing up.
4. **Relaxation** of every structure with :func:`~equiformer_calc.workflows.batch.relax_batch`
   (one batched model call per step): first the gas-phase references and the clean slabs, then
   all adsorbate systems. The ``fix_bottom`` lowest layers are fixed in slabs and adsorbate
   systems alike.
5. **Adsorption energy** ``E_ads = E(slab+ads) - E(slab) - sum_X n_X mu_X`` with OC20-style
   gas-phase references relaxed with the same model: ``mu_H = E(H2)/2``,
   ``mu_O = E(H2O) - E(H2)``, ``mu_C = E(CO) - mu_O``, ``mu_N = E(N2)/2``.
6. **Checks** against the initial site (:func:`equiformer_calc.surfaces.check_relaxation`, one set of
   thresholds for the whole package): ``desorbed`` (no adsorbate atom in contact with the surface),
   ``dissociated`` (the adsorbate's bond graph fell apart), ``moved`` (binding atom more than
   ``move_tolerance`` A away laterally; ``final_site`` names the nearest site kind) and
   ``surface_changed`` (a slab atom moved more than 1 A). The minimum per (surface, adsorbate)
   is taken over converged, non-desorbed, non-dissociated sites.

**Database**: every relaxed structure (gas, slab, adsorbate system) is one row of an ASE database
(``ase.db.connect(db)``) with its energy, forces, the key-value pairs above and, in ``data``,
the energy and force criterion of every step and the initial positions. A path gives SQLite;
the same code works with ASE's PostgreSQL backend by passing a URL such as
``postgresql://user:password@host:5432/screening`` (needs ``psycopg2``; not tested here).

**Resumable**: every (surface, adsorbate, site) -- and every gas molecule and clean slab -- has a
unique ``task_key`` (``ads/Cu-fcc111/O/fcc_0``). Rows are written one by one as relaxations
finish, each in its own transaction, and existing rows are never modified. A killed run
restarted with the same arguments skips every task already in the database and loses only the
relaxations that were in flight; rerunning finished work does nothing (no model calls, no
writes). The database records the model's fingerprint; resuming with another model (or a
surface of the same name but another geometry) is an error rather than a silent mix.

**Outputs** (with ``out_dir``): ``screen_summary.csv`` (minimum E_ads per surface x adsorbate),
``screen_sites.csv`` (every site) and ``screen_heatmap.png``.

**Direct screening** (:func:`screen_direct`, ``screen --direct``): with a direct IS2RE model (an
OC20 IS2RE checkpoint of the reference Equiformer code, converted with ``convert-reference
--variant oc20-is2re``), every (surface, adsorbate, site) *initial* structure of steps 1-3 is
evaluated once, without relaxing: the model predicts the relaxed adsorption energy (OC20's
references) directly, which is OC20's IS2RE task. Atoms get OC20 tags (0: the ``fix_bottom``
subsurface layers, 1: the other slab atoms, 2: adsorbate). Sites are ranked by the prediction;
``screen_direct_sites.csv``, ``screen_direct_summary.csv`` and ``screen_direct_heatmap.png`` are
written (no database: nothing is relaxed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.build import fcc100, fcc110, fcc111, fcc211, molecule
from ase.geometry import find_mic

from ..surfaces import check_relaxation
from ._common import add_model_arguments, bottom_fixed_mask, fixed_mask, read_structure, resolve_calculator, write_csv
from .batch import RelaxChunk, relax_batch, relax_chunk
from .relax import OPTIMIZERS, RelaxResult

__all__ = [
    "HELP",
    "GAS_MOLECULES",
    "Site",
    "ScreenResult",
    "build_surface",
    "slab_from_any",
    "find_sites",
    "place_adsorbate_on_site",
    "reference_potentials",
    "screen_adsorbates",
    "DirectScreenResult",
    "oc20_tags",
    "screen_direct",
    "add_arguments",
    "run",
]

log = logging.getLogger(__name__)

HELP = "adsorbate screening over metals, facets and adsorbates into an ASE database"

#: gas-phase molecules relaxed for the OC20-style references
GAS_MOLECULES: tuple[str, ...] = ("H2", "H2O", "CO", "N2")
REFERENCE_SCHEME = "OC20: mu_H=E(H2)/2, mu_O=E(H2O)-E(H2), mu_C=E(CO)-mu_O, mu_N=E(N2)/2"

_BUILDERS = {"fcc111": fcc111, "fcc100": fcc100, "fcc110": fcc110, "fcc211": fcc211}


# ------------------------------------------------------------------------------------ surfaces


def _facet_name(facet: str) -> str:
    f = str(facet).lower().strip().strip("()")
    f = f if f.startswith("fcc") else "fcc" + f
    if f not in _BUILDERS:
        raise ValueError(f"unknown facet {facet!r}; choose from 111, 100, 110, 211")
    return f


def build_surface(metal: str, facet: str = "111", size: Sequence[int] = (3, 3, 4), vacuum: float = 7.0) -> Atoms:
    """An fcc ``metal`` slab (``facet`` 111 / 100 / 110 / 211, ``size`` = (nx, ny, layers)) at its
    EMT lattice constant (ASE's reference value for metals the EMT table lacks), ``vacuum`` A on
    each side, pbc (True, True, False). For (211) nx is rounded up to a multiple of 3."""
    from ..train.datagen import EMT_LATTICE_CONSTANTS

    name = _facet_name(facet)
    size = tuple(int(n) for n in size)
    if len(size) != 3:
        raise ValueError(f"size is (nx, ny, layers), got {size}")
    if name == "fcc211" and size[0] % 3:
        size = (3 * -(-size[0] // 3), size[1], size[2])
    if any(n < 1 for n in size):
        raise ValueError(f"size is (nx, ny, layers), each at least 1, got {size}")
    kwargs: dict[str, Any] = {"size": size, "vacuum": vacuum}
    if metal in EMT_LATTICE_CONSTANTS:
        kwargs["a"] = EMT_LATTICE_CONSTANTS[metal]
    else:
        from ase.data import atomic_numbers, reference_states

        if metal not in atomic_numbers:
            raise ValueError(f"unknown metal {metal!r}: give a chemical symbol such as Cu or Pt")
        state = reference_states[atomic_numbers[metal]] or {}
        if state.get("symmetry") != "fcc":
            raise ValueError(f"{metal} is not an fcc metal (its reference structure is "
                             f"{state.get('symmetry', 'unknown')}); this builder makes fcc surfaces")
    slab = _BUILDERS[name](metal, **kwargs)
    slab.pbc = (True, True, False)
    slab.info.update({"metal": metal, "facet": name, "size": "x".join(map(str, size))})
    return slab


def _drop_none_properties(structure: Any) -> Any:
    """pymatgen site properties with None values (e.g. ``tags`` of atoms added by
    AdsorbateSiteFinder) make ``AseAtomsAdaptor.get_atoms`` fail: drop them."""
    structure = structure.copy()
    for name, values in list(structure.site_properties.items()):
        if any(v is None for v in values):
            structure.remove_site_property(name)
    return structure


def slab_from_any(slab: Any) -> Atoms:
    """ASE Atoms or a pymatgen Structure / Slab -> an ASE slab in a standard frame: the first two
    cell vectors (the periodic ones) in the xy plane, the surface normal along +z (adsorbates go
    on the +z side), the third cell vector along z, pbc (True, True, False).

    The input's surface plane must be spanned by its first two cell vectors (pymatgen's Slab
    convention). A 3D-periodic input (pymatgen structures always are) is first made contiguous
    along the third vector (the largest gap becomes the vacuum). The third vector is then made
    orthogonal to the surface: it is not periodic any more, so this moves no atom, but minimum-
    image geometry along the surface (sites, placement, checks) needs it.
    """
    if isinstance(slab, Atoms):
        atoms = slab.copy()
    else:
        try:
            from pymatgen.core import Structure
            from pymatgen.io.ase import AseAtomsAdaptor
        except ImportError as exc:  # pragma: no cover - pymatgen is a dependency
            raise TypeError(f"cannot convert {type(slab).__name__} without pymatgen") from exc
        if not isinstance(slab, Structure):
            raise TypeError(f"a slab must be ase.Atoms or a pymatgen Structure/Slab, got {type(slab).__name__}")
        atoms = AseAtomsAdaptor.get_atoms(_drop_none_properties(slab))
        atoms.pbc = True
    if len(atoms) == 0:
        raise ValueError("the slab has no atoms")
    if not atoms.pbc[0] or not atoms.pbc[1]:
        raise ValueError(f"a slab must be periodic along its first two cell vectors (pbc={atoms.pbc.tolist()})")
    cell = atoms.cell.array.copy()
    normal = np.cross(cell[0], cell[1])
    if np.linalg.norm(normal) < 1e-8:
        raise ValueError("the first two cell vectors of a slab must span the surface plane")
    normal /= np.linalg.norm(normal)
    if abs(cell[2] @ normal) < 1e-6:  # no usable third vector (non-periodic input): make one
        extent = float(np.ptp(atoms.positions @ normal))
        cell[2] = normal * (extent + 20.0)
        atoms.set_cell(cell)
    atoms.set_cell(atoms.cell.standard_form()[0], scale_atoms=True)  # rotation: a || x, b in xy
    if atoms.pbc[2]:
        frac = atoms.get_scaled_positions(wrap=True)
        c = np.sort(frac[:, 2])
        gaps = np.diff(np.concatenate([c, [c[0] + 1.0]]))
        k = int(np.argmax(gaps))
        start = c[(k + 1) % len(c)]
        width = 1.0 - gaps[k]
        frac[:, 2] = (frac[:, 2] - start) % 1.0 + 0.5 * (1.0 - width)
        atoms.set_scaled_positions(frac)
        atoms.pbc = (True, True, False)
    cell = atoms.cell.array.copy()
    if cell[2, 2] < 0:  # a left-handed input: keep the vacuum on the same side
        cell[2] = -cell[2]
    height = max(float(cell[2, 2]), float(np.ptp(atoms.positions[:, 2])) + 10.0)
    if not np.allclose(cell[2], (0.0, 0.0, height)):
        cell[2] = (0.0, 0.0, height)
        atoms.set_cell(cell)  # positions unchanged
        atoms.wrap()  # back into the cell along the two periodic directions
    return atoms


def _geometry_hash(atoms: Atoms) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(atoms.positions, 4).astype(np.float64).tobytes())
    h.update(np.round(atoms.cell.array, 4).astype(np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------- sites


@dataclass
class Site:
    """An adsorption site: ``label`` (unique per surface, e.g. ``fcc_0``), ``kind`` (ontop,
    bridge, fcc, hcp, hollow), ``position`` (the site point, in the plane of the surface atoms
    it touches) and ``asf_kind`` (pymatgen's own name)."""

    label: str
    kind: str
    position: np.ndarray
    asf_kind: str


def _mic(vectors: np.ndarray, atoms: Atoms) -> np.ndarray:
    return find_mic(vectors, atoms.cell, atoms.pbc)[0]


def _image_vectors(slab: Atoms, point: np.ndarray, reach: int = 2) -> np.ndarray:
    """Vectors from ``point`` to every atom and its periodic images within ``reach`` cells along
    the two surface vectors (small cells hold several images of one atom around a site)."""
    shifts = np.array([(i, j, 0) for i in range(-reach, reach + 1) for j in range(-reach, reach + 1)], dtype=float)
    base = _mic(slab.positions - point, slab)
    return (base[None, :, :] + (shifts @ slab.cell.array)[:, None, :]).reshape(-1, 3)


def _site_kind(slab: Atoms, point: np.ndarray) -> str:
    v = _image_vectors(slab, point)
    d = np.linalg.norm(v, axis=1)
    touching = int((d < d.min() + 0.1).sum())
    if touching <= 1:
        return "ontop"
    if touching == 2:
        return "bridge"
    if touching == 3:
        below = (np.hypot(v[:, 0], v[:, 1]) < 0.5) & (v[:, 2] < -0.5) & (v[:, 2] > -3.0)
        return "hcp" if below.any() else "fcc"
    return "hollow"


def _asf_points(slab: Atoms, symm_reduce: float) -> list[tuple[str, np.ndarray]]:
    from pymatgen.analysis.adsorption import AdsorbateSiteFinder
    from pymatgen.io.ase import AseAtomsAdaptor

    clean = slab.copy()
    clean.set_constraint()
    structure = _drop_none_properties(AseAtomsAdaptor.get_structure(clean))
    finder = AdsorbateSiteFinder(structure)
    found = finder.find_adsorption_sites(distance=0.0, symm_reduce=symm_reduce, near_reduce=0.01)
    return [(kind, np.asarray(p, dtype=float)) for kind in ("ontop", "bridge", "hollow") for p in found.get(kind, [])]


def find_sites(slab: Atoms, symmetry_reduce: bool = True) -> list[Site]:
    """The symmetry-distinct adsorption sites of ``slab`` (all of them with
    ``symmetry_reduce=False``), labelled ``<kind>_<k>`` in a deterministic order."""
    points = _asf_points(slab, 0.01 if symmetry_reduce else 0.0)
    sites = [(_site_kind(slab, p), p, asf) for asf, p in points]
    order = {"ontop": 0, "bridge": 1, "fcc": 2, "hcp": 3, "hollow": 4}
    sites.sort(key=lambda s: (order[s[0]], round(float(s[1][2]), 2), round(float(s[1][0]), 2), round(float(s[1][1]), 2)))
    counts: dict[str, int] = {}
    out = []
    for kind, p, asf in sites:
        k = counts.get(kind, 0)
        counts[kind] = k + 1
        out.append(Site(f"{kind}_{k}", kind, p, asf))
    return out


# ---------------------------------------------------------------------------------- adsorbates


def _adsorbate_template(adsorbate: str | Atoms) -> tuple[str, Atoms]:
    """(name, template with the binding atom first at the origin, molecule pointing up)."""
    from ..train.datagen import ADSORBATES, build_adsorbate

    if isinstance(adsorbate, Atoms):
        template = adsorbate.copy()
        template.set_constraint()
        template.pbc = False
        template.cell = np.zeros((3, 3))
        template.translate(-template.positions[0])
        name = str(template.info.get("name") or template.get_chemical_formula(mode="hill"))
        return name, template
    if adsorbate not in ADSORBATES:
        raise ValueError(f"unknown adsorbate {adsorbate!r}; named ones: {', '.join(ADSORBATES)} (or pass ase.Atoms)")
    return str(adsorbate), build_adsorbate(adsorbate)


def place_adsorbate_on_site(slab: Atoms, adsorbate: str | Atoms, site: Site | np.ndarray) -> Atoms:
    """``slab`` + the adsorbate with its binding atom (first atom) above ``site``, at the binding
    distance of the data generator from the nearest metal atom and the other atoms kept clear
    of the surface. Slab constraints are kept; the adsorbate atoms get tag 2 (OC20 style)."""
    from ..train.datagen import _BINDING_DISTANCE, _placement_height  # the generator's placement rule

    _, template = _adsorbate_template(adsorbate)
    point = site.position if isinstance(site, Site) else np.asarray(site, dtype=float)
    xy = point[:2]
    binding = _BINDING_DISTANCE.get(template[0].symbol, 2.0)
    z = _placement_height(slab, template, xy, binding)
    template.translate((xy[0], xy[1], z))
    system = slab.copy()
    tags = np.concatenate([slab.get_tags(), np.full(len(template), 2)])
    system.extend(template)
    system.set_tags(tags)
    return system


def reference_potentials(gas_energies: Mapping[str, float]) -> dict[str, float]:
    """Element chemical potentials mu_H, mu_O, mu_C, mu_N from the gas-phase energies of H2, H2O,
    CO and N2 (OC20's scheme)."""
    e = gas_energies
    mu = {"H": 0.5 * e["H2"], "O": e["H2O"] - e["H2"]}
    mu["C"] = e["CO"] - mu["O"]
    mu["N"] = 0.5 * e["N2"]
    return mu


# ----------------------------------------------------------------------------------- screening


@dataclass
class _Task:
    key: str
    kind: str  # "gas" | "slab" | "adsorbate"
    atoms: Atoms
    info: dict[str, Any]
    site: Site | None = None
    n_slab: int = 0


@dataclass
class ScreenResult:
    """summary: one dict per (surface, adsorbate) with the minimum adsorption energy; sites: one
    dict per (surface, adsorbate, site); files written; counts of relaxations run and skipped."""

    summary: list[dict[str, Any]]
    sites: list[dict[str, Any]]
    db: str
    files: dict[str, Path] = field(default_factory=dict)
    computed: int = 0
    skipped: int = 0
    #: task_key -> why it has no result: a structure the model refused or whose relaxation
    #: broke (written as a ``failed`` row), or a task the executor could not run (not written:
    #: a rerun tries it again)
    errors: dict[str, str] = field(default_factory=dict)


def _model_fingerprint(calc: Any) -> dict[str, str]:
    """Identity of the model (weights + config + precision), to refuse mixing models in one db."""
    model = getattr(calc, "model", None)
    if model is None:
        return {"model": type(calc).__name__, "model_hash": type(calc).__name__}
    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().double().numpy().tobytes())
    h.update(str(getattr(calc, "dtype", "")).encode())
    if getattr(calc, "dispersion_term", None) is not None:
        h.update(repr(calc.dispersion_term).encode())
    path = getattr(model, "checkpoint_path", None)
    return {"model": Path(path).stem if path else "in-memory model", "model_hash": h.hexdigest()[:16]}


def _kv(values: Mapping[str, Any]) -> dict[str, Any]:
    """ASE db key-value pairs: plain bool / int / float / str, None dropped."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, (bool, np.bool_)):
            out[k] = bool(v)
        elif isinstance(v, (int, np.integer)):
            out[k] = int(v)
        elif isinstance(v, (float, np.floating)):
            if np.isfinite(v):
                out[k] = float(v)
        else:
            out[k] = str(v)
    return out


def _existing(db: Any) -> dict[str, Any]:
    """task_key -> row, preferring a 'done' row when a key appears more than once."""
    rows: dict[str, Any] = {}
    for row in db.select("task_key", include_data=False):
        key = row.get("task_key")
        old = rows.get(key)
        if old is None or (old.get("status") != "done" and row.get("status") == "done"):
            rows[key] = row
    return rows


def _check_supported(calc: Any, surfaces: Sequence[tuple[str, Atoms]], templates: Sequence[tuple[str, Atoms]]) -> None:
    """Refuse, before anything is computed or written, a run that cannot produce anything: an
    adsorbate or gas reference the model does not accept (every task needs them), or surfaces of which
    none is accepted (elements, geometry). Raises ``UnknownElementError`` / ``StructureError`` naming
    the one at fault. A bad surface among good ones is not refused here: its own tasks fail with that
    error in the summary and the others run."""
    predictor = getattr(calc, "predictor", None)
    if predictor is None:  # another calculator: it will say what it cannot do
        return
    from ..graph import StructureError
    from ..model import UnknownElementError

    def check(what: str, atoms: Atoms) -> Exception | None:
        try:
            predictor.to_structure(atoms)
        except UnknownElementError as exc:
            return UnknownElementError(f"{what}: {exc}")
        except StructureError as exc:
            return StructureError(f"{what}: {exc}")
        return None

    shared = [(f"adsorbate {name!r}", t) for name, t in templates]
    shared += [(f"gas reference {m}", _gas_molecule(m)) for m in GAS_MOLECULES]
    for what, atoms in shared:
        error = check(what, atoms)
        if error is not None:
            raise error
    surface_errors = [check(f"surface {name!r}", slab) for name, slab in surfaces]
    if surface_errors and all(e is not None for e in surface_errors):
        raise surface_errors[0]  # type: ignore[misc]


def _normalise_surfaces(slabs: Any) -> list[tuple[str, Atoms]]:
    if isinstance(slabs, (Atoms,)) or hasattr(slabs, "lattice"):
        slabs = [slabs]
    items = list(slabs.items()) if isinstance(slabs, Mapping) else [(None, s) for s in slabs]
    out: list[tuple[str, Atoms]] = []
    for name, obj in items:
        if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(x, str) for x in obj):
            atoms = build_surface(obj[0], obj[1])
        else:
            atoms = slab_from_any(obj)
        if name is None:
            if "metal" in atoms.info and "facet" in atoms.info:
                name = f"{atoms.info['metal']}-{atoms.info['facet']}"
            else:
                name = str(atoms.info.get("name") or f"{atoms.get_chemical_formula(mode='hill')}-{_geometry_hash(atoms)[:8]}")
        if "/" in str(name):
            raise ValueError(f"surface names cannot contain '/': {name!r}")
        if any(n == name for n, _ in out):
            raise ValueError(f"two surfaces are named {name!r}")
        out.append((str(name), atoms))
    return out


def _gas_molecule(name: str) -> Atoms:
    atoms = molecule(name)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


def screen_adsorbates(
    slabs: Any,
    adsorbates: Sequence[str | Atoms],
    db: str | os.PathLike = "screen.db",
    calculator: Any = None,
    checkpoint: str | os.PathLike | None = None,
    fmax: float = 0.05,
    steps: int = 300,
    optimizer: str = "FIRE",
    fix_bottom: int | None = 2,
    site_kinds: Sequence[str] | None = None,
    move_tolerance: float = 0.5,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
    retry_failed: bool = False,
    callback: Callable[[str, int], None] | None = None,
    progress: bool = True,
    executor: Any = None,
    chunk_size: int = 16,
) -> ScreenResult:
    """Screen ``adsorbates`` over ``slabs``; see the module docstring for the method.

    slabs: a mapping name -> slab, or a sequence of slabs; a slab is ase.Atoms, a pymatgen
    Structure / Slab, or a (metal, facet) pair built with :func:`build_surface` (unnamed
    slabs are named ``<metal>-<facet>`` when built here, else ``<formula>-<geometry hash>``).
    adsorbates: names of :data:`~equiformer_calc.train.datagen.ADSORBATES` (O, OH, CO, H, N,
    C, NO, CH, CH2, CH3, NH, NH2, H2O) or ase.Atoms templates (binding atom first, pointing up;
    named by ``info['name']`` or their formula). Elements other than H, C, N, O have no
    gas-phase reference. db: path (SQLite) or database URL for ``ase.db.connect``.
    calculator / checkpoint / device / dtype: the model (an EquiformerCalculator; default: the
    shipped checkpoint). fmax / steps / optimizer / fix_bottom: relaxation settings (all
    structures). site_kinds: only these site kinds (e.g. ``["ontop", "fcc"]``).
    out_dir: write ``screen_summary.csv``, ``screen_sites.csv`` and ``screen_heatmap.png`` there.
    batch_size: relaxations in flight at once. retry_failed: redo tasks whose earlier attempt
    failed (the failed row is deleted after the new one is written). callback(task_key, row_id):
    called after each row is written (an exception stops the run; what was written stays).
    executor: an :class:`~equiformer_calc.distributed.Executor` (e.g. from
    :func:`~equiformer_calc.distributed.open_executor`) to fan the relaxations out as tasks of
    ``chunk_size`` structures, each relaxed with :func:`relax_batch` (``batch_size`` in flight)
    on a worker's copy of the model; this process alone writes the database, as chunks
    complete. The numbers depend on the chunk size (which structures share a batched model
    call) and on torch's threads per process (float32 sums differ in the last bits), not on the
    executor or the number of workers.
    Without an executor everything runs here, in batches of ``batch_size``, as before.
    """
    import ase.db

    if optimizer.upper() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    surfaces = _normalise_surfaces(slabs)
    templates = [_adsorbate_template(a) for a in adsorbates]
    names = [n for n, _ in templates]
    if len(set(names)) != len(names):
        raise ValueError(f"adsorbate names must be unique, got {names}")
    for name, template in templates:
        bad = sorted(set(template.get_chemical_symbols()) - {"H", "C", "N", "O"})
        if bad:
            raise ValueError(f"adsorbate {name}: no gas-phase reference for {', '.join(bad)} (only H, C, N, O)")
    calc = resolve_calculator(calculator, checkpoint, device=device, dtype=dtype)
    _check_supported(calc, surfaces, templates)  # before the database or any relaxation
    fingerprint = _model_fingerprint(calc)
    settings = {"fmax": fmax, "steps": steps, "optimizer": optimizer.upper(), "fix_bottom": fix_bottom}

    db_name = str(db)
    if "://" not in db_name:
        Path(db_name).parent.mkdir(parents=True, exist_ok=True)
    database = ase.db.connect(db_name)
    meta = dict(database.metadata or {})
    if meta.get("model_hash") and meta["model_hash"] != fingerprint["model_hash"]:
        raise ValueError(
            f"{db_name} holds results of another model ({meta.get('model')}, {meta['model_hash']}); "
            f"this run uses {fingerprint['model']} ({fingerprint['model_hash']}): use another database"
        )
    if meta.get("settings") and meta["settings"] != settings:
        log.warning("%s was started with settings %s; this run uses %s", db_name, meta["settings"], settings)
    if not meta.get("model_hash"):
        meta.update(fingerprint)
        meta.setdefault("settings", settings)
        meta["reference_scheme"] = REFERENCE_SCHEME
        database.metadata = meta
    existing = _existing(database)
    common = {**fingerprint, "optimizer": optimizer.upper(), "fmax_target": fmax, "max_steps": steps}

    # --- tasks
    gas_tasks = [_Task(f"gas/{m}", "gas", _gas_molecule(m), {"molecule": m}) for m in GAS_MOLECULES]
    slab_tasks: list[_Task] = []
    ads_tasks: list[_Task] = []
    site_lists: dict[str, list[Site]] = {}
    for name, slab in surfaces:
        ghash = _geometry_hash(slab)
        info = {
            "surface": name, "metal": slab.info.get("metal"), "facet": slab.info.get("facet"),
            "surface_hash": ghash, "surface_formula": slab.get_chemical_formula(mode="hill"),
        }
        slab_tasks.append(_Task(f"slab/{name}", "slab", slab, info))
        row = existing.get(f"slab/{name}")
        if row is not None and row.get("surface_hash") not in (None, ghash):
            raise ValueError(
                f"surface {name!r} in {db_name} has another geometry (hash {row.get('surface_hash')} != {ghash}): "
                "use another name or database"
            )
        sites = find_sites(slab)
        site_lists[name] = find_sites(slab, symmetry_reduce=False)
        if site_kinds is not None:
            sites = [s for s in sites if s.kind in set(site_kinds)]
        for ads_name, template in templates:
            for site in sites:
                system = place_adsorbate_on_site(slab, template, site)
                ads_tasks.append(
                    _Task(
                        f"ads/{name}/{ads_name}/{site.label}", "adsorbate", system,
                        {**info, "adsorbate": ads_name, "site": site.label, "site_kind": site.kind,
                         "asf_kind": site.asf_kind, "site_x": float(site.position[0]),
                         "site_y": float(site.position[1]), "site_z": float(site.position[2]),
                         "adsorbate_hash": _geometry_hash(template)},
                        site=site, n_slab=len(slab),
                    )
                )
    counts = {"computed": 0, "skipped": 0}
    errors: dict[str, str] = {}
    if executor is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    remote_model = executor.register_model(calc) if executor is not None else None

    def pending(tasks: list[_Task]) -> list[_Task]:
        todo = []
        for t in tasks:
            row = existing.get(t.key)
            if row is None or (retry_failed and row.get("status") != "done"):
                todo.append(t)
            else:
                counts["skipped"] += 1
        return todo

    def run_tasks(tasks: list[_Task], extra: Callable[[_Task, RelaxResult], dict[str, Any]] | None, what: str) -> None:
        todo = pending(tasks)
        if not todo:
            return
        log.info("relaxing %d %s (%d already in %s)", len(todo), what, len(tasks) - len(todo), db_name)

        def write(index: int, result: RelaxResult) -> None:
            task = todo[index]
            old = existing.get(task.key)
            if old is not None and old.get("status") == "done":  # never a second row for a task
                return
            status = "done" if result.error is None else "failed"
            if result.error is not None:
                errors[task.key] = result.error
            kv = {
                **common, **task.info, "task_key": task.key, "kind": task.kind, "status": status,
                "converged": result.converged, "nsteps": result.nsteps,
                "relaxed_energy": result.final_energy if result.error is None else None,
                "initial_energy": result.initial_energy if result.energies else None,
            }
            if extra is not None and result.error is None:
                kv.update(extra(task, result))
            data = {
                "step_energies": np.asarray(result.energies, dtype=float),
                "step_fmax": np.asarray(result.fmax, dtype=float),
                "initial_positions": task.atoms.positions.copy(),
            }
            if result.error:
                data["error"] = result.error
            row_id = database.write(result.atoms, key_value_pairs=_kv(kv), data=data)
            if old is not None:  # retry of a failed task: the new row is safely written first
                database.delete([old.id])
            existing[task.key] = database.get(id=row_id)
            counts["computed"] += 1
            if callback is not None:
                callback(task.key, row_id)

        fix = None if todo[0].kind == "gas" else fix_bottom
        if executor is None:
            relax_batch(
                [t.atoms for t in todo], fmax=fmax, steps=steps, optimizer=optimizer, calculator=calc,
                fix_bottom=fix, max_concurrent=batch_size, callback=write, progress=progress, invalid="record",
            )
            return
        # fan-out: chunks of tasks relax on the executor's workers; rows are written here
        assert remote_model is not None
        starts = range(0, len(todo), chunk_size)
        chunks = (
            RelaxChunk(remote_model, [t.atoms for t in todo[i : i + chunk_size]], fmax=fmax, steps=steps,
                       optimizer=optimizer, fix_bottom=fix, max_concurrent=batch_size)
            for i in starts
        )
        for outcome in executor.map(relax_chunk, chunks, name=f"screen-{todo[0].kind}"):
            first = starts[outcome.index]
            if outcome.error is not None:
                for task in todo[first : first + chunk_size]:
                    errors[task.key] = f"task failed: {outcome.error}"
                continue
            for j, result in enumerate(outcome.value):
                write(first + j, result)

    # phase 1: references (gas molecules, clean slabs); phase 2: adsorbate systems
    run_tasks(gas_tasks, None, "gas-phase reference molecules")
    run_tasks(slab_tasks, None, "clean slabs")
    gas_energy = {m: existing[f"gas/{m}"].get("relaxed_energy") for m in GAS_MOLECULES if f"gas/{m}" in existing}
    mu = reference_potentials(gas_energy) if all(v is not None for v in gas_energy.values()) and len(gas_energy) == 4 else None
    if mu is None:
        log.warning("a gas-phase reference failed: adsorption energies cannot be computed")

    def ads_extra(task: _Task, result: RelaxResult) -> dict[str, Any]:
        assert task.site is not None
        slab_row = existing.get(f"slab/{task.info['surface']}")
        e_slab = slab_row.get("relaxed_energy") if slab_row is not None else None
        mask = np.arange(len(result.atoms)) >= task.n_slab
        checks = check_relaxation(result.atoms, mask, task.atoms, task.site.position,
                                  [(x.kind, x.position) for x in site_lists[task.info["surface"]]], move_tolerance)
        out: dict[str, Any] = {**{k: v for k, v in checks.items() if k != "anomalies"}, "slab_energy": e_slab}
        if e_slab is not None and mu is not None:
            symbols = result.atoms.get_chemical_symbols()[task.n_slab :]
            out["e_ads"] = result.final_energy - e_slab - sum(mu[s] for s in symbols)
            out["reference"] = "OC20"
        return out

    run_tasks(ads_tasks, ads_extra, "adsorbate systems")

    # --- summary
    site_rows: list[dict[str, Any]] = []
    for t in ads_tasks:
        row = existing.get(t.key)
        if row is None:
            if t.key in errors:  # the executor could not run it: nothing written, a rerun retries
                site_rows.append({
                    "surface": t.info["surface"], "adsorbate": t.info["adsorbate"], "site": t.info["site"],
                    "site_kind": t.info["site_kind"], "final_site": "", "e_ads": float("nan"), "energy": float("nan"),
                    "converged": False, "nsteps": 0, "desorbed": False, "dissociated": False, "moved": False,
                    "surface_changed": False, "status": "not run", "row_id": "", "error": errors[t.key],
                })
            continue
        error = errors.get(t.key, "")
        if not error and row.get("status") == "failed":  # failed in an earlier run: the row says why
            error = str(database.get(id=row.id).data.get("error", ""))
        site_rows.append(
            {
                "surface": t.info["surface"], "adsorbate": t.info["adsorbate"], "site": t.info["site"],
                "site_kind": t.info["site_kind"], "final_site": row.get("final_site", ""),
                "e_ads": row.get("e_ads", float("nan")), "energy": row.get("relaxed_energy", float("nan")),
                "converged": row.get("converged", False), "nsteps": row.get("nsteps", 0),
                "desorbed": row.get("desorbed", False), "dissociated": row.get("dissociated", False),
                "moved": row.get("moved", False), "surface_changed": row.get("surface_changed", False),
                "status": row.get("status", ""), "row_id": row.id,
                "error": error,
            }
        )
    summary: list[dict[str, Any]] = []
    for name, slab in surfaces:
        for ads_name in names:
            rows = [r for r in site_rows if r["surface"] == name and r["adsorbate"] == ads_name]
            valid = [
                r for r in rows
                if r["status"] == "done" and not r["desorbed"] and not r["dissociated"] and np.isfinite(r["e_ads"])
            ]
            chosen = [r for r in valid if r["converged"]] or valid
            best = min(chosen, key=lambda r: r["e_ads"]) if chosen else None
            summary.append(
                {
                    "surface": name, "metal": slab.info.get("metal", ""), "facet": slab.info.get("facet", ""),
                    "adsorbate": ads_name, "e_ads_min": best["e_ads"] if best else float("nan"),
                    "site": best["site"] if best else "", "final_site": best["final_site"] if best else "",
                    "converged": best["converged"] if best else False, "moved": best["moved"] if best else False,
                    "n_sites": len(rows), "n_valid": len(valid),
                    "n_flagged": sum(1 for r in rows if r["desorbed"] or r["dissociated"]),
                    "n_failed": sum(1 for r in rows if r["status"] != "done"),
                    "row_id": best["row_id"] if best else "",
                }
            )
    files: dict[str, Path] = {}
    if out_dir is not None:
        files = write_screen_outputs(summary, site_rows, Path(out_dir))
    log.info(
        "screening: %d relaxations run, %d found in %s; %d surface x adsorbate pairs",
        counts["computed"], counts["skipped"], db_name, len(summary),
    )
    for key, error in errors.items():
        log.error("%s: %s", key, error)
    return ScreenResult(summary, site_rows, db_name, files, counts["computed"], counts["skipped"], errors)


# ---------------------------------------------------------------------------- direct screening


def oc20_tags(system: Atoms, n_slab: int, fix_bottom: int | None = 2) -> np.ndarray:
    """OC20's per-atom tags of a slab + adsorbate system whose first ``n_slab`` atoms are the slab:
    2 for the adsorbate, 0 for subsurface slab atoms (the ``fix_bottom`` lowest layers and any atom
    already held by FixAtoms: OC20 fixes exactly its subsurface atoms), 1 for the other slab atoms."""
    if not 0 < n_slab <= len(system):
        raise ValueError(f"n_slab must be between 1 and {len(system)}, got {n_slab}")
    slab = system[:n_slab]
    subsurface = bottom_fixed_mask(slab, fix_bottom) | fixed_mask(system)[:n_slab]
    tags = np.full(len(system), 2, dtype=int)
    tags[:n_slab] = np.where(subsurface, 0, 1)
    return tags


@dataclass
class DirectScreenResult:
    """sites: one dict per (surface, adsorbate, site) with the predicted relaxed adsorption energy
    ``e_ads_pred`` and its ``rank`` among the sites of that surface x adsorbate (1 = most stable),
    sorted by (surface, adsorbate, rank); summary: the best site per surface x adsorbate;
    structures: the tagged initial structures, keyed like the sites (``surface/adsorbate/site``)."""

    summary: list[dict[str, Any]]
    sites: list[dict[str, Any]]
    structures: dict[str, Atoms]
    files: dict[str, Path] = field(default_factory=dict)


def screen_direct(
    slabs: Any,
    adsorbates: Sequence[str | Atoms],
    calculator: Any = None,
    checkpoint: str | os.PathLike | None = None,
    fix_bottom: int | None = 2,
    site_kinds: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> DirectScreenResult:
    """Rank (surface, adsorbate, site) initial structures by the relaxed adsorption energy a direct
    IS2RE model predicts for them, without relaxing anything (see the module docstring).

    slabs / adsorbates / site_kinds: as :func:`screen_adsorbates`. calculator / checkpoint: the
    model, whose checkpoint task must be ``"is2re-direct"``. fix_bottom: the subsurface layers
    (tag 0). out_dir: write the CSVs and the heat map there.
    """
    from ..predictor import model_task

    calc = resolve_calculator(calculator, checkpoint, device=device, dtype=dtype)
    model = getattr(calc, "model", None)
    task = model_task(model) if model is not None else "unknown"
    if task != "is2re-direct":
        raise ValueError(
            f"direct screening needs a direct IS2RE model (task 'is2re-direct', e.g. an OC20 IS2RE checkpoint of the "
            f"reference code converted with convert-reference --variant oc20-is2re); this model's task is {task!r}: "
            "screen without --direct to relax with it"
        )
    surfaces = _normalise_surfaces(slabs)
    templates = [_adsorbate_template(a) for a in adsorbates]
    names = [n for n, _ in templates]
    if len(set(names)) != len(names):
        raise ValueError(f"adsorbate names must be unique, got {names}")
    keys: list[str] = []
    rows: list[dict[str, Any]] = []
    systems: list[Atoms] = []
    for name, slab in surfaces:
        sites = find_sites(slab)
        if site_kinds is not None:
            sites = [st for st in sites if st.kind in set(site_kinds)]
        for ads_name, template in templates:
            for site in sites:
                system = place_adsorbate_on_site(slab, template, site)
                system.set_tags(oc20_tags(system, len(slab), fix_bottom))
                key = f"{name}/{ads_name}/{site.label}"
                keys.append(key)
                systems.append(system)
                rows.append({
                    "surface": name, "metal": slab.info.get("metal", ""), "facet": slab.info.get("facet", ""),
                    "adsorbate": ads_name, "site": site.label, "site_kind": site.kind,
                    "site_x": float(site.position[0]), "site_y": float(site.position[1]),
                })
    log.info("direct screening: %d initial structures on %d surfaces", len(systems), len(surfaces))
    results = calc.predict(systems, properties=["energy"]) if systems else []
    for row, result in zip(rows, results):
        row["e_ads_pred"] = float(result["energy"])
    order = sorted(range(len(rows)), key=lambda k: (rows[k]["surface"], rows[k]["adsorbate"], rows[k]["e_ads_pred"]))
    ranked: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for k in order:
        row = rows[k]
        prev = ranked[-1] if ranked else None
        same = prev is not None and (prev["surface"], prev["adsorbate"]) == (row["surface"], row["adsorbate"])
        row["rank"] = prev["rank"] + 1 if same else 1
        ranked.append(row)
        if row["rank"] == 1:
            summary.append({
                "surface": row["surface"], "metal": row["metal"], "facet": row["facet"], "adsorbate": row["adsorbate"],
                "e_ads_min": row["e_ads_pred"], "site": row["site"], "site_kind": row["site_kind"], "n_sites": 0,
            })
        summary[-1]["n_sites"] += 1
    structures = {keys[k]: systems[k] for k in order}
    files: dict[str, Path] = {}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        site_keys = ["surface", "adsorbate", "rank", "site", "site_kind", "e_ads_pred", "site_x", "site_y"]
        files["sites"] = write_csv(out / "screen_direct_sites.csv", site_keys, [[r[k] for k in site_keys] for r in ranked])
        if summary:
            keys_s = list(summary[0])
            files["summary"] = write_csv(out / "screen_direct_summary.csv", keys_s, [[r[k] for k in keys_s] for r in summary])
            files["heatmap"] = plot_heatmap(summary, out / "screen_direct_heatmap.png")
    return DirectScreenResult(summary, ranked, structures, files)


def write_screen_outputs(summary: list[dict[str, Any]], sites: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """``screen_summary.csv``, ``screen_sites.csv`` and the heat map ``screen_heatmap.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    if summary:
        keys = list(summary[0])
        files["summary"] = write_csv(out_dir / "screen_summary.csv", keys, [[r[k] for k in keys] for r in summary])
    site_keys = [
        "surface", "adsorbate", "site", "site_kind", "final_site", "e_ads", "energy", "converged", "nsteps",
        "desorbed", "dissociated", "moved", "surface_changed", "status", "row_id", "error",
    ]
    files["sites"] = write_csv(out_dir / "screen_sites.csv", site_keys, [[r[k] for k in site_keys] for r in sites])
    files["heatmap"] = plot_heatmap(summary, out_dir / "screen_heatmap.png")
    return files


def plot_heatmap(summary: list[dict[str, Any]], path: Path) -> Path:
    """Minimum adsorption energy by surface (rows) x adsorbate (columns), values written in."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    surfaces = list(dict.fromkeys(r["surface"] for r in summary))
    adsorbates = list(dict.fromkeys(r["adsorbate"] for r in summary))
    grid = np.full((len(surfaces), len(adsorbates)), np.nan)
    for r in summary:
        grid[surfaces.index(r["surface"]), adsorbates.index(r["adsorbate"])] = r["e_ads_min"]
    fig = Figure(figsize=(1.3 * len(adsorbates) + 2.6, 0.55 * len(surfaces) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    finite = grid[np.isfinite(grid)]
    span = float(np.abs(finite).max()) if finite.size else 1.0
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="coolwarm", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(adsorbates)), adsorbates)
    ax.set_yticks(range(len(surfaces)), surfaces)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize="small")
    fig.colorbar(image, ax=ax, label="min E$_{ads}$ (eV)")
    ax.set_title("minimum adsorption energy (OC20 gas references)", fontsize="medium")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# --------------------------------------------------------------------------------------------- CLI


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _size(text: str) -> tuple[int, int, int]:
    """``"3x3x4"`` -> (3, 3, 4); anything else is an argparse error naming the expected form."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected NXxNYxLAYERS with positive integers, e.g. 3x3x4, got {text!r}")
    return (int(parts[0]), int(parts[1]), int(parts[2]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc screen``."""
    parser.add_argument("--metals", type=_csv_list, default=[], help="comma-separated fcc metals, e.g. Cu,Pt")
    parser.add_argument("--facets", type=_csv_list, default=["111"], help="comma-separated: 111,100,110,211")
    parser.add_argument("--slab", action="append", default=[], metavar="FILE",
                        help="also screen this slab file (any ASE-readable format; repeatable)")
    parser.add_argument("--adsorbates", type=_csv_list, default=["O", "OH", "CO"], help="comma-separated names")
    parser.add_argument("--size", type=_size, default=(3, 3, 4), help="slab size NXxNYxLAYERS (default 3x3x4)")
    parser.add_argument("--vacuum", type=float, default=7.0, help="vacuum on each side, A")
    parser.add_argument("--site-kinds", type=_csv_list, default=None, help="only these: ontop,bridge,fcc,hcp,hollow")
    parser.add_argument("--db", default="screen.db", help="ASE database: a path (SQLite) or a postgresql:// URL")
    parser.add_argument("--out-dir", default=".", help="folder for screen_summary.csv, screen_sites.csv, screen_heatmap.png")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--optimizer", default="FIRE", type=str.upper, choices=sorted(OPTIMIZERS))
    parser.add_argument("--fix-bottom", type=int, default=2, metavar="K", help="fixed bottom layers (default 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="relaxations in flight at once")
    parser.add_argument("--retry-failed", action="store_true", help="redo tasks that failed in an earlier run")
    parser.add_argument("--direct", action="store_true",
                        help="no relaxation: rank initial structures by a direct IS2RE model's predicted relaxed "
                             "adsorption energy (a converted OC20 IS2RE checkpoint); writes screen_direct_*.csv")
    add_model_arguments(parser)
    from ..distributed import add_executor_arguments

    add_executor_arguments(parser)
    parser.add_argument("--chunk-size", type=int, default=16, metavar="K",
                        help="with --scheduler/--workers: relaxations per task, relaxed together in batched "
                             "model calls on one worker (default 16)")


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc screen``."""
    size = args.size
    slabs: dict[str, Any] = {}
    for metal in args.metals:
        for facet in args.facets:
            slab = build_surface(metal, facet, size=size, vacuum=args.vacuum)
            slabs[f"{metal}-{slab.info['facet']}"] = slab
    for path in args.slab:
        slabs[Path(path).stem] = read_structure(path)
    if not slabs:
        raise SystemExit("nothing to screen: give --metals (and --facets) and/or --slab FILE")
    if args.direct:
        try:
            direct = screen_direct(
                slabs, args.adsorbates, checkpoint=args.checkpoint, fix_bottom=args.fix_bottom,
                site_kinds=args.site_kinds, out_dir=args.out_dir, device=args.device, dtype=args.dtype,
            )
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        for r in direct.summary:
            log.info("%-14s %-4s predicted relaxed E_ads,min = %+.3f eV at %s (%d sites)",
                     r["surface"], r["adsorbate"], r["e_ads_min"], r["site"], r["n_sites"])
        log.info("wrote %s", ", ".join(str(p) for p in direct.files.values()))
        return 0
    from ..distributed import executor_from_args

    fan_out = args.scheduler is not None or args.workers is not None
    if fan_out and args.dispersion:
        raise ValueError("--dispersion is not available with --scheduler/--workers yet (workers run the bare "
                         "model): screen without fan-out, or add D3 afterwards")
    calculator = None if fan_out else resolve_calculator(
        None, args.checkpoint, args.device, args.dtype, dispersion=args.dispersion, xc=args.xc
    )
    with executor_from_args(args) as executor:
        result = screen_adsorbates(
            slabs, args.adsorbates, db=args.db, checkpoint=args.checkpoint if fan_out else None,
            calculator=calculator, fmax=args.fmax, steps=args.steps,
            optimizer=args.optimizer, fix_bottom=args.fix_bottom, site_kinds=args.site_kinds, out_dir=args.out_dir,
            batch_size=args.batch_size, device=args.device, dtype=args.dtype, retry_failed=args.retry_failed,
            executor=executor if fan_out else None, chunk_size=args.chunk_size,
        )
    for r in result.summary:
        log.info(
            "%-14s %-4s E_ads,min = %s eV at %s%s (%d/%d sites valid)",
            r["surface"], r["adsorbate"], "  n/a " if not np.isfinite(r["e_ads_min"]) else f"{r['e_ads_min']:+.3f}",
            r["site"] or "-", f" -> {r['final_site']}" if r["moved"] else "", r["n_valid"], r["n_sites"],
        )
    log.info("database %s; wrote %s", result.db, ", ".join(str(p) for p in result.files.values()))
    if result.errors:
        log.error("%d task(s) failed (listed above and in screen_sites.csv); rerun to retry tasks that did not run, "
                  "add --retry-failed to redo failed structures", len(result.errors))
        return 1
    return 0
