"""Phonons of fcc Cu with phonopy: band structure and DOS, the shipped emt-small model beside EMT.

    pip install -e ".[phonons]"
    python examples/phonons.py [--supercell 4] [--mesh 20] [--out-dir phonons]
    python examples/phonons.py --supercell 2 --mesh 6          # smoke run

phonopy builds the displaced supercells, the calculators give their forces, and phonopy turns
the force constants into the band structure along Gamma-X-K|U-Gamma-L and a total DOS. EMT is
the potential the shipped model ``emt-small`` was trained on, so the two should agree; the
script prints the frequencies at X and the largest deviation along the path, and writes
``phonons_cu.png``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from equiformer_calc import EquiformerCalculator
from equiformer_calc.surfaces import EMT_LATTICE_CONSTANTS
from equiformer_calc.io import new_figure, save_figure
from equiformer_calc.workflows.bulk_properties import FCC_PATH, frequencies_at, phonopy_force_constants

log = logging.getLogger("phonons")


def band_and_dos(phonon, points_per_segment: int, mesh: int) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    """Distances and frequencies of each band segment, and the total DOS (frequency, states)."""
    paths = []
    for branch in FCC_PATH:
        for (_, q0), (_, q1) in zip(branch[:-1], branch[1:]):
            paths.append(np.linspace(q0, q1, points_per_segment))
    connections = []
    for branch in FCC_PATH:
        connections += [True] * (len(branch) - 2) + [False]
    phonon.run_band_structure(paths, path_connections=connections)
    bands = phonon.band_structure
    phonon.run_mesh([mesh] * 3, is_gamma_center=True)
    phonon.run_total_dos()
    dos = phonon.total_dos
    return list(bands.distances), list(bands.frequencies), np.asarray(dos.frequency_points), np.asarray(dos.dos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supercell", type=int, default=4, help="supercell repeats of the primitive cell")
    parser.add_argument("--mesh", type=int, default=20, help="q-point mesh for the DOS")
    parser.add_argument("--points", type=int, default=41, help="q-points per band segment")
    parser.add_argument("--out-dir", default="phonons")
    parser.add_argument("--checkpoint", default="emt-small",
                        help="checkpoint name or path (default: emt-small, the model trained on EMT)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    primitive = bulk("Cu", "fcc", a=EMT_LATTICE_CONSTANTS["Cu"])
    calculators = {"EMT": EMT(), Path(args.checkpoint).stem: EquiformerCalculator(args.checkpoint, dtype="float64")}
    results = {}
    for name, calc in calculators.items():
        phonon = phonopy_force_constants(calc, primitive, supercell=args.supercell)
        x = frequencies_at(phonon, [(0.5, 0.0, 0.5)])[0]
        results[name] = (band_and_dos(phonon, args.points, args.mesh), x)
        log.info("%-10s X point: TA %.3f THz (x2), LA %.3f THz", name, x[0], x[2])

    fig = new_figure((9, 4.5))
    ax_band, ax_dos = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    styles = {0: dict(color="black", linestyle="--", linewidth=1.2), 1: dict(color="tab:red", linewidth=1.2)}
    for k, (name, ((distances, frequencies, dos_f, dos), _)) in enumerate(results.items()):
        for j, (d, f) in enumerate(zip(distances, frequencies)):
            lines = ax_band.plot(d, f, **styles[k])
            if j == 0:
                lines[0].set_label(name)
        ax_dos.plot(dos, dos_f, **styles[k], label=name)
    ticks, labels = [], []
    distances = results["EMT"][0][0]
    segment = 0
    for branch in FCC_PATH:
        for j, (label, _) in enumerate(branch):
            pos = distances[segment][0] if j < len(branch) - 1 else distances[segment - 1][-1]
            if j < len(branch) - 1:
                segment += 1
            if ticks and abs(ticks[-1] - pos) < 1e-9:
                labels[-1] = labels[-1] + "|" + label
            else:
                ticks.append(pos)
                labels.append(label)
    ax_band.set_xticks(ticks, labels)
    for t in ticks:
        ax_band.axvline(t, color="0.8", linewidth=0.8)
    ax_band.set_xlim(ticks[0], ticks[-1])
    ax_band.set_ylabel("frequency (THz)")
    ax_band.set_title("fcc Cu phonons (phonopy)")
    ax_band.legend(loc="upper left")
    ax_dos.set_xlabel("DOS")
    ax_dos.legend(loc="upper right")
    fig.tight_layout()
    save_figure(fig, out / "phonons_cu.png")

    (d_ref, f_ref, *_), _ = results["EMT"]
    (_, f_model, *_), _ = list(results.values())[1]
    worst = max(float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1.0))) for a, b in zip(f_ref, f_model))
    log.info("largest deviation from EMT along the path: %.1f %% (relative, frequencies below 1 THz absolute)", 100 * worst)
    log.info("wrote %s", out / "phonons_cu.png")


if __name__ == "__main__":
    main()
