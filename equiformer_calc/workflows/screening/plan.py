"""Screening, step 1: the plan. Surfaces x adsorbates x sites -> the structures to relax, each with a
unique ``task_key`` (``gas/H2``, ``slab/Cu-fcc111``, ``ads/Cu-fcc111/O/fcc_0``).

Surfaces, sites and placement come from :mod:`equiformer_calc.surfaces`; this module names things,
checks the input before anything runs, and lists the tasks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from ...surfaces import (
    REFERENCE_MOLECULES,
    Site,
    adsorbate_template,
    build_surface,
    find_sites,
    gas_molecule,
    place_adsorbate_on_site,
    slab_from_any,
)

__all__ = [
    "ScreenTask", "ScreenPlan", "geometry_hash", "normalise_surfaces", "adsorbate_templates", "check_supported",
    "plan_screen",
]


@dataclass
class ScreenTask:
    """One structure to relax: ``key`` (its ``task_key``), ``kind`` (gas | slab | adsorbate), the
    initial ``atoms``, ``info`` (the database key-value pairs that describe it) and, for adsorbate
    systems, the ``site`` and the number of slab atoms ``n_slab`` (the adsorbate follows them)."""

    key: str
    kind: str
    atoms: Atoms
    info: dict[str, Any]
    site: Site | None = None
    n_slab: int = 0


@dataclass
class ScreenPlan:
    """The tasks of a screening in the order they run (gas references, clean slabs, adsorbate systems)
    and, per surface, all its sites (not symmetry-reduced: the checks name the site an adsorbate
    ended on)."""

    gas: list[ScreenTask]
    slabs: list[ScreenTask]
    adsorbates: list[ScreenTask]
    all_sites: dict[str, list[Site]] = field(default_factory=dict)


def geometry_hash(atoms: Atoms) -> str:
    """A short hash of species, positions and cell (rounded to 1e-4 Å) and pbc: the identity of a
    surface (or adsorbate template) in the database."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.round(atoms.positions, 4).astype(np.float64).tobytes())
    h.update(np.round(atoms.cell.array, 4).astype(np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()[:16]


def normalise_surfaces(slabs: Any) -> list[tuple[str, Atoms]]:
    """``(name, slab)`` pairs of a mapping name -> slab or a sequence of slabs; a slab is ase.Atoms, a
    pymatgen Structure / Slab (:func:`~equiformer_calc.surfaces.slab_from_any`) or a (metal, facet)
    pair (:func:`~equiformer_calc.surfaces.build_surface`). Unnamed slabs are named
    ``<metal>-<facet>`` when built here, else ``<formula>-<geometry hash>``."""
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
                name = str(atoms.info.get("name") or f"{atoms.get_chemical_formula(mode='hill')}-{geometry_hash(atoms)[:8]}")
        if "/" in str(name):
            raise ValueError(f"surface names cannot contain '/': {name!r}")
        if any(n == name for n, _ in out):
            raise ValueError(f"two surfaces are named {name!r}")
        out.append((str(name), atoms))
    return out


def adsorbate_templates(adsorbates: Sequence[str | Atoms], gas_referenced: bool = False) -> list[tuple[str, Atoms]]:
    """``(name, template)`` of each adsorbate (see :func:`~equiformer_calc.surfaces.adsorbate_template`);
    names must be unique. ``gas_referenced``: refuse elements without a gas-phase reference (only H,
    C, N, O have one)."""
    templates = [adsorbate_template(a) for a in adsorbates]
    names = [n for n, _ in templates]
    if len(set(names)) != len(names):
        raise ValueError(f"adsorbate names must be unique, got {names}")
    if gas_referenced:
        for name, template in templates:
            bad = sorted(set(template.get_chemical_symbols()) - {"H", "C", "N", "O"})
            if bad:
                raise ValueError(f"adsorbate {name}: no gas-phase reference for {', '.join(bad)} (only H, C, N, O)")
    return templates


def check_supported(calc: Any, surfaces: Sequence[tuple[str, Atoms]], templates: Sequence[tuple[str, Atoms]]) -> None:
    """Refuse, before anything is computed or written, a run that cannot produce anything: an
    adsorbate or gas reference the model does not accept (every task needs them), or surfaces of which
    none is accepted (elements, geometry). Raises ``UnknownElementError`` / ``StructureError`` naming
    the one at fault. A bad surface among good ones is not refused here: its own tasks fail with that
    error in the summary and the others run."""
    predictor = getattr(calc, "predictor", None)
    if predictor is None:  # another calculator: it will say what it cannot do
        return
    from ...graph import StructureError
    from ...model import UnknownElementError

    def check(what: str, atoms: Atoms) -> Exception | None:
        try:
            predictor.to_structure(atoms)
        except UnknownElementError as exc:
            return UnknownElementError(f"{what}: {exc}")
        except StructureError as exc:
            return StructureError(f"{what}: {exc}")
        return None

    shared = [(f"adsorbate {name!r}", t) for name, t in templates]
    shared += [(f"gas reference {m}", gas_molecule(m)) for m in REFERENCE_MOLECULES]
    for what, atoms in shared:
        error = check(what, atoms)
        if error is not None:
            raise error
    surface_errors = [check(f"surface {name!r}", slab) for name, slab in surfaces]
    if surface_errors and all(e is not None for e in surface_errors):
        raise surface_errors[0]  # type: ignore[misc]


def _adsorbate_task(name: str, slab: Atoms, info: dict[str, Any], ads_name: str, template: Atoms, site: Site) -> ScreenTask:
    return ScreenTask(
        f"ads/{name}/{ads_name}/{site.label}", "adsorbate", place_adsorbate_on_site(slab, template, site),
        {**info, "adsorbate": ads_name, "site": site.label, "site_kind": site.kind, "asf_kind": site.asf_kind,
         "site_x": float(site.position[0]), "site_y": float(site.position[1]), "site_z": float(site.position[2]),
         "adsorbate_hash": geometry_hash(template)},
        site=site, n_slab=len(slab),
    )


def plan_screen(
    surfaces: Sequence[tuple[str, Atoms]], templates: Sequence[tuple[str, Atoms]], site_kinds: Sequence[str] | None = None
) -> ScreenPlan:
    """Every task of a screening: the gas references of :data:`~equiformer_calc.surfaces.REFERENCE_MOLECULES`,
    each clean slab, and each adsorbate on each symmetry-distinct site of each slab (only ``site_kinds``
    when given)."""
    plan = ScreenPlan([ScreenTask(f"gas/{m}", "gas", gas_molecule(m), {"molecule": m}) for m in REFERENCE_MOLECULES],
                      [], [])
    for name, slab in surfaces:
        info = {
            "surface": name, "metal": slab.info.get("metal"), "facet": slab.info.get("facet"),
            "surface_hash": geometry_hash(slab), "surface_formula": slab.get_chemical_formula(mode="hill"),
        }
        plan.slabs.append(ScreenTask(f"slab/{name}", "slab", slab, info))
        sites = find_sites(slab)
        plan.all_sites[name] = find_sites(slab, symmetry_reduce=False)
        if site_kinds is not None:
            sites = [s for s in sites if s.kind in set(site_kinds)]
        plan.adsorbates += [_adsorbate_task(name, slab, info, ads_name, template, site)
                            for ads_name, template in templates for site in sites]
    return plan
