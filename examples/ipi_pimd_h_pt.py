"""Path-integral MD of an H atom on Pt(111) with i-PI, the model as i-PI's force-field client.

    pip install -e ".[ipi]"
    python examples/ipi_pimd_h_pt.py [--beads 8] [--steps 200] [--temperature 100] [--out-dir ipi_pimd_h_pt]
    python examples/ipi_pimd_h_pt.py --beads 4 --steps 10       # smoke run, well under a minute

Writes ``init.extxyz`` and an i-PI ``input.xml`` (PIMD, PILE-L thermostat, UNIX socket) into the
output folder, starts ``i-pi input.xml`` there, and answers it with
``equiformer_calc.integrations.ipi.run_client`` -- what ``equiformer-calc ipi init.extxyz --unix
NAME`` does from a second terminal. Hydrogen is light: its ring polymer spreads over tenths of an
Angstrom (nuclear quantum effects a classical MD misses), which the script reports as the radius
of gyration of the H ring polymer from i-PI's own output. The Pt atoms are fixed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
from ase.io import write

from equiformer_calc import EquiformerCalculator
from equiformer_calc.integrations.ipi import run_client
from equiformer_calc.surfaces import build_surface, place_adsorbate_on_site, site_positions

log = logging.getLogger("ipi_pimd_h_pt")

INPUT = """<simulation verbosity='low'>
  <output prefix='pimd'>
    <properties stride='{stride}' filename='out'> [ step, time{{picosecond}}, conserved{{electronvolt}},
      temperature{{kelvin}}, potential{{electronvolt}}, kinetic_cv{{electronvolt}}, r_gyration(H){{angstrom}} ] </properties>
    <trajectory filename='xc' stride='{stride}' format='xyz'> x_centroid{{angstrom}} </trajectory>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 42 </seed></prng>
  <ffsocket name='equiformer' mode='unix' pbc='false'><address> {socket} </address><latency> 1e-4 </latency></ffsocket>
  <system>
    <initialize nbeads='{beads}'>
      <file mode='ase'> init.extxyz </file>
      <velocities mode='thermal' units='kelvin'> {temperature} </velocities>
    </initialize>
    <forces><force forcefield='equiformer'/></forces>
    <motion mode='dynamics'>
      <fixcom> False </fixcom>
      <fixatoms> [ {fixed} ] </fixatoms>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'> {timestep} </timestep>
        <thermostat mode='pile_l'><tau units='femtosecond'> 50 </tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> {temperature} </temperature></ensemble>
  </system>
</simulation>
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beads", type=int, default=8, help="ring-polymer beads (1: classical MD)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=100.0, help="K")
    parser.add_argument("--out-dir", default="ipi_pimd_h_pt")
    parser.add_argument("--checkpoint", default=None, help="checkpoint name or path (default: the shipped one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    i_pi = shutil.which("i-pi") or str(Path(sys.executable).with_name("i-pi"))
    if not Path(i_pi).exists():
        raise SystemExit("i-PI is not installed: pip install 'equiformer-calc[ipi]'")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    slab = build_surface("Pt", "111", size=(2, 2, 3), vacuum=6.0)  # at the EMT lattice constant
    fcc = site_positions(slab, "fcc111", "fcc")[0]
    slab = place_adsorbate_on_site(slab, "H", fcc, height=1.8)  # EMT (and so emt-small) puts H 1.8 A above it
    slab.pbc = True  # i-PI's cell is periodic; the vacuum separates the slab from its images
    write(out / "init.extxyz", slab, format="extxyz")
    fixed = [a.index for a in slab if a.symbol == "Pt"]
    socket = f"eqc-pimd-{uuid.uuid4().hex[:8]}"
    (out / "input.xml").write_text(INPUT.format(
        stride=max(1, args.steps // 20), steps=args.steps, socket=socket, beads=args.beads, temperature=args.temperature,
        timestep=args.timestep, fixed=", ".join(map(str, fixed)),
    ))
    log.info("i-PI: %d beads, %d steps of %g fs at %g K on %s (socket /tmp/ipi_%s)", args.beads, args.steps,
             args.timestep, args.temperature, slab.get_chemical_formula(), socket)
    calc = EquiformerCalculator(checkpoint=args.checkpoint, dtype="float64", skin=1.0)
    with open(out / "i-pi.log", "w") as logfile:
        server = subprocess.Popen([i_pi, "input.xml"], cwd=out, stdout=logfile, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            evaluations = run_client(slab, calc, unix=socket)
            if server.wait(timeout=300) != 0:
                raise SystemExit(f"i-pi failed; see {out / 'i-pi.log'}")
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    rows = np.loadtxt(out / "pimd.out", ndmin=2)
    log.info("%d force evaluations (%d per step: one per bead)", evaluations, args.beads)
    log.info("conserved quantity: %.5f -> %.5f eV; mean temperature %.0f K", rows[0, 2], rows[-1, 2], rows[1:, 3].mean()
             if len(rows) > 1 else rows[0, 3])
    log.info("H ring-polymer radius of gyration: mean %.3f A (0 for a classical particle)", rows[1:, 6].mean()
             if len(rows) > 1 else rows[0, 6])
    log.info("wrote %s, %s, %s", out / "input.xml", out / "pimd.out", out / "pimd.xc.xyz")


if __name__ == "__main__":
    main()
