"""Direct screening (OC20's IS2RE task): every (surface, adsorbate, site) *initial* structure is
evaluated once by a direct IS2RE model, which predicts the relaxed adsorption energy; nothing is
relaxed and no database is written."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from ...surfaces import find_sites, oc20_tags, place_adsorbate_on_site
from .._common import resolve_calculator
from .plan import adsorbate_templates, normalise_surfaces
from .summary import rank_sites, write_screen_outputs

__all__ = ["DirectScreenResult", "screen_direct"]

log = logging.getLogger(__name__)

#: the columns of ``screen_direct_sites.csv``
_SITE_COLUMNS = ("surface", "adsorbate", "rank", "site", "site_kind", "e_ads_pred", "site_x", "site_y")


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
    adsorbates: Sequence[Any],
    calculator: Any = None,
    fix_bottom: int | None = 2,
    site_kinds: Sequence[str] | None = None,
    out_dir: str | os.PathLike | None = None,
) -> DirectScreenResult:
    """Rank (surface, adsorbate, site) initial structures by the relaxed adsorption energy a direct
    IS2RE model predicts for them, without relaxing anything.

    slabs / adsorbates / site_kinds: as :func:`~equiformer_calc.workflows.screening.screen_adsorbates`.
    calculator: the model (a calculator, a Predictor, a ModelSettings, a checkpoint name or
    path: see :func:`~equiformer_calc.calculators.local.resolve_calculator`), whose checkpoint task must be ``"is2re-direct"`` (an OC20
    IS2RE checkpoint of the reference code, converted with ``convert-reference --variant
    oc20-is2re``). fix_bottom: the subsurface layers (OC20 tag 0; 1: the other slab atoms, 2:
    adsorbate). out_dir: write ``screen_direct_sites.csv``, ``screen_direct_summary.csv`` and
    ``screen_direct_heatmap.png`` there.
    """
    from ...predictor import model_task

    calc = resolve_calculator(calculator)
    model = getattr(calc, "model", None)
    task = model_task(model) if model is not None else "unknown"
    if task != "is2re-direct":
        raise ValueError(
            f"direct screening needs a direct IS2RE model (task 'is2re-direct', e.g. an OC20 IS2RE checkpoint of the "
            f"reference code converted with convert-reference --variant oc20-is2re); this model's task is {task!r}: "
            "screen without --direct to relax with it"
        )
    surfaces = normalise_surfaces(slabs)
    templates = adsorbate_templates(adsorbates)
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
                keys.append(f"{name}/{ads_name}/{site.label}")
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
    order, ranked, summary = rank_sites(rows, "e_ads_pred")
    structures = {keys[k]: systems[k] for k in order}
    files = (write_screen_outputs(summary, ranked, Path(out_dir), prefix="screen_direct", site_columns=_SITE_COLUMNS)
             if out_dir is not None else {})
    return DirectScreenResult(summary, ranked, structures, files)
