"""Use pymatgen structures: a Pt(111) slab cut with pymatgen's SlabGenerator, relaxed, and O
screened on its sites; results handed back to pymatgen.

    python examples/pymatgen_structure.py [--out-dir pymatgen_example]
    python examples/pymatgen_structure.py --steps 3 --layers 3    # smoke run

``slab_from_any`` converts a pymatgen Structure / Slab to ASE (dropping None-valued site
properties, which ``AseAtomsAdaptor.get_atoms`` cannot convert, and orienting the surface normal
along +z); ``AseAtomsAdaptor.get_structure`` converts back.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pymatgen.core import Lattice, Structure
from pymatgen.core.surface import SlabGenerator
from pymatgen.io.ase import AseAtomsAdaptor

from equiformer_calc import EquiformerCalculator, relax, screen_adsorbates
from equiformer_calc.surfaces import EMT_LATTICE_CONSTANTS
from equiformer_calc.surfaces import slab_from_any

log = logging.getLogger("pymatgen_structure")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="atomic layers of the slab")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out-dir", default="pymatgen_example")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    bulk = Structure.from_spacegroup("Fm-3m", Lattice.cubic(EMT_LATTICE_CONSTANTS["Pt"]), ["Pt"], [[0, 0, 0]])
    d111 = EMT_LATTICE_CONSTANTS["Pt"] / 3**0.5
    generator = SlabGenerator(
        bulk, (1, 1, 1), min_slab_size=(args.layers - 0.5) * d111, min_vacuum_size=12.0,
        center_slab=True, in_unit_planes=False, primitive=True,
    )
    slab = generator.get_slab()
    slab = slab.copy()
    slab.make_supercell([2, 2, 1])  # still a pymatgen Slab
    log.info("pymatgen slab: %s, %d sites, surface area %.2f A^2", slab.composition.reduced_formula, len(slab),
             slab.surface_area)

    atoms = slab_from_any(slab)  # ASE Atoms, normal along +z, pbc (T, T, F)
    calc = EquiformerCalculator(args.checkpoint)
    result = relax(atoms, calculator=calc, fix_bottom=2, fmax=0.05, steps=args.steps)
    log.info("relaxed clean slab: E = %.4f eV (%s, %d steps)", result.final_energy,
             "converged" if result.converged else "not converged", result.nsteps)
    relaxed = AseAtomsAdaptor.get_structure(result.atoms)  # back to pymatgen
    relaxed.to(filename=str(out / "Pt111_relaxed.cif"))

    screen = screen_adsorbates(
        {"Pt-111-pymatgen": slab}, ["O"], db=out / "pymatgen.db", calculator=calc, steps=args.steps,
        fix_bottom=2, out_dir=out, progress=False,
    )
    for row in screen.sites:
        log.info("O at %-9s -> %-6s E_ads = %+.3f eV%s", row["site"], row["final_site"], row["e_ads"],
                 "" if row["converged"] else " (not converged)")
    log.info("wrote %s", ", ".join([str(out / "Pt111_relaxed.cif"), *map(str, screen.files.values())]))


if __name__ == "__main__":
    main()
