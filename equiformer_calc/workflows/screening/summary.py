"""Screening, step 3: the summary. One row per (surface, adsorbate, site) from the database, the
minimum adsorption energy per (surface, adsorbate), CSV tables and a heat map.

The minimum is taken over converged sites without an anomaly (AdsorbML's four: desorbed, dissociated,
surface changed, intercalated; over the non-converged valid ones when no site converged). Anomalous
relaxations stay in the database and in ``screen_sites.csv`` with their flags, are counted per group
(``n_anomalous`` and one count per flag) and are never a best site; a group whose relaxations are all
anomalous says so in ``note`` and has no minimum. Direct (IS2RE) screening ranks sites by the predicted energy
instead (:func:`rank_sites`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from ...io import new_figure, save_figure, write_csv
from ...surfaces import ANOMALIES
from .plan import ScreenTask
from .store import ScreenStore

__all__ = ["SITE_COLUMNS", "site_rows", "summarise", "rank_sites", "write_screen_outputs", "plot_heatmap"]

#: the columns of ``screen_sites.csv``: one row per (surface, adsorbate, site)
SITE_COLUMNS: tuple[str, ...] = (
    "surface", "adsorbate", "site", "site_kind", "final_site", "e_ads", "e_ads_uncertainty", "energy", "converged", "nsteps",
    "desorbed", "dissociated", "moved", "surface_changed", "intercalated", "anomalies", "status", "row_id", "error",
)


def _anomalies(row: Any) -> list[str]:
    """The anomaly flags a database row raised (rows written before ``anomalies`` existed: from the flags)."""
    return [k for k in ANOMALIES if row.get(k, False)]


def site_rows(tasks: Sequence[ScreenTask], store: ScreenStore, errors: dict[str, str]) -> list[dict[str, Any]]:
    """One dict per adsorbate task (:data:`SITE_COLUMNS`): its database row, or ``status`` ``not run``
    with the error when the executor could not run it (nothing was written; a rerun retries it)."""
    out: list[dict[str, Any]] = []
    for t in tasks:
        head = {"surface": t.info["surface"], "adsorbate": t.info["adsorbate"], "site": t.info["site"],
                "site_kind": t.info["site_kind"]}
        row = store.rows.get(t.key)
        if row is None:
            if t.key in errors:
                out.append({
                    **head, "final_site": "", "e_ads": float("nan"), "e_ads_uncertainty": float("nan"),
                    "energy": float("nan"), "converged": False,
                    "nsteps": 0, "desorbed": False, "dissociated": False, "moved": False, "surface_changed": False,
                    "intercalated": False, "anomalies": "", "status": "not run", "row_id": "", "error": errors[t.key],
                })
            continue
        error = errors.get(t.key, "")
        if not error and row.get("status") == "failed":  # failed in an earlier run: the row says why
            error = store.row_error(row)
        out.append({
            **head, "final_site": row.get("final_site", ""), "e_ads": row.get("e_ads", float("nan")),
            "e_ads_uncertainty": row.get("e_ads_uncertainty", float("nan")),
            "energy": row.get("relaxed_energy", float("nan")), "converged": row.get("converged", False),
            "nsteps": row.get("nsteps", 0), "desorbed": row.get("desorbed", False),
            "dissociated": row.get("dissociated", False), "moved": row.get("moved", False),
            "surface_changed": row.get("surface_changed", False), "intercalated": row.get("intercalated", False),
            "anomalies": ",".join(_anomalies(row)), "status": row.get("status", ""), "row_id": row.id,
            "error": error,
        })
    return out


def summarise(surfaces: Sequence[tuple[str, Atoms]], adsorbates: Sequence[str], sites: Sequence[dict[str, Any]],
              uncertainty_threshold: float = 0.1) -> list[dict[str, Any]]:
    """One dict per (surface, adsorbate): the minimum adsorption energy ``e_ads_min`` over valid sites
    (done, no anomaly, finite; converged ones first), its site, its committee spread
    ``e_ads_uncertainty`` (NaN without a committee) and ``uncertain`` (spread above
    ``uncertainty_threshold`` eV), and counts: ``n_anomalous`` (done relaxations with any anomaly),
    ``n_<flag>`` per anomaly, ``n_flagged`` (= ``n_anomalous``, the old name) and ``note`` (``all
    relaxations anomalous`` when no done relaxation is valid)."""
    summary: list[dict[str, Any]] = []
    for name, slab in surfaces:
        for ads_name in adsorbates:
            rows = [r for r in sites if r["surface"] == name and r["adsorbate"] == ads_name]
            done = [r for r in rows if r["status"] == "done"]
            anomalous = [r for r in done if any(r.get(k, False) for k in ANOMALIES)]
            valid = [r for r in done if r not in anomalous and np.isfinite(r["e_ads"])]
            chosen = [r for r in valid if r["converged"]] or valid
            best = min(chosen, key=lambda r: r["e_ads"]) if chosen else None
            note = ""
            if done and len(anomalous) == len(done):
                note = "all relaxations anomalous"
            elif not done:
                note = "no relaxation done"
            summary.append({
                "surface": name, "metal": slab.info.get("metal", ""), "facet": slab.info.get("facet", ""),
                "adsorbate": ads_name, "e_ads_min": best["e_ads"] if best else float("nan"),
                "e_ads_uncertainty": best.get("e_ads_uncertainty", float("nan")) if best else float("nan"),
                "uncertain": bool(best is not None and best.get("e_ads_uncertainty", 0.0) > uncertainty_threshold),
                "site": best["site"] if best else "", "final_site": best["final_site"] if best else "",
                "converged": best["converged"] if best else False, "moved": best["moved"] if best else False,
                "n_sites": len(rows), "n_valid": len(valid), "n_anomalous": len(anomalous),
                **{f"n_{k}": sum(1 for r in done if r.get(k, False)) for k in ANOMALIES},
                "n_flagged": len(anomalous),
                "n_failed": sum(1 for r in rows if r["status"] != "done"),
                "row_id": best["row_id"] if best else "", "note": note,
            })
    return summary


def rank_sites(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[dict[str, Any]], list[dict[str, Any]]]:
    """Rank sites by ``row[key]`` within each (surface, adsorbate), lowest first: returns the order
    (indices into ``rows``), the rows in that order with their ``rank`` (1 = most stable) set, and the
    best row's summary per (surface, adsorbate) with ``n_sites``."""
    order = sorted(range(len(rows)), key=lambda k: (rows[k]["surface"], rows[k]["adsorbate"], rows[k][key]))
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
                "e_ads_min": row[key], "site": row["site"], "site_kind": row["site_kind"], "n_sites": 0,
            })
        summary[-1]["n_sites"] += 1
    return order, ranked, summary


def _table(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    columns = list(columns if columns is not None else rows[0])
    return write_csv(path, columns, [[r[k] for k in columns] for r in rows])


def write_screen_outputs(
    summary: list[dict[str, Any]], sites: list[dict[str, Any]], out_dir: Path, prefix: str = "screen",
    site_columns: Sequence[str] = SITE_COLUMNS,
) -> dict[str, Path]:
    """``<prefix>_sites.csv`` and, when there is a summary, ``<prefix>_summary.csv`` and the heat map
    ``<prefix>_heatmap.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = [k for k in ("e_ads_ref", "ref_calls", "ref_anomalies", "ref_fmax") if sites and k in sites[0]
             and k not in site_columns]
    files = {"sites": _table(out_dir / f"{prefix}_sites.csv", sites, [*site_columns, *extra])}
    if summary:
        files["summary"] = _table(out_dir / f"{prefix}_summary.csv", summary)
        files["heatmap"] = plot_heatmap(summary, out_dir / f"{prefix}_heatmap.png")
    return files


def plot_heatmap(summary: list[dict[str, Any]], path: Path) -> Path:
    """Minimum adsorption energy by surface (rows) x adsorbate (columns), values written in (with the
    committee's spread, ``±u``, where there is one); cells whose best is ``uncertain`` are hatched, and
    groups whose relaxations were all anomalous read "anomalous"."""
    from matplotlib.patches import Rectangle

    surfaces = list(dict.fromkeys(r["surface"] for r in summary))
    adsorbates = list(dict.fromkeys(r["adsorbate"] for r in summary))
    grid = np.full((len(surfaces), len(adsorbates)), np.nan)
    cells: dict[tuple[int, int], dict[str, Any]] = {}
    for r in summary:
        ij = (surfaces.index(r["surface"]), adsorbates.index(r["adsorbate"]))
        grid[ij] = r["e_ads_min"]
        cells[ij] = r
    fig = new_figure((1.3 * len(adsorbates) + 2.6, 0.55 * len(surfaces) + 1.6))
    ax = fig.subplots()
    finite = grid[np.isfinite(grid)]
    span = float(np.abs(finite).max()) if finite.size else 1.0
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="coolwarm", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(adsorbates)), adsorbates)
    ax.set_yticks(range(len(surfaces)), surfaces)
    marked = False
    for (i, j), v in np.ndenumerate(grid):
        r = cells.get((i, j), {})
        u = r.get("e_ads_uncertainty", float("nan"))
        if not np.isfinite(v):
            text = "anomalous" if r.get("note") == "all relaxations anomalous" else "n/a"
        else:
            text = f"{v:.2f}" + (f"\n±{u:.2f}" if np.isfinite(u) else "")
        if r.get("uncertain"):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.3", linewidth=0))
            marked = True
        ax.text(j, i, text, ha="center", va="center", fontsize="small")
    fig.colorbar(image, ax=ax, label="min E$_{ads}$ (eV)")
    title = "minimum adsorption energy (OC20 gas references)"
    ax.set_title(title + ("\nhatched: committee spread above the threshold" if marked else ""), fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
