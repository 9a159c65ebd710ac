"""``equiformer-calc vibrations``: harmonic vibrations of a structure's adsorbate (or any atoms) by
finite differences in batched model calls (the workflow is
:func:`equiformer_calc.workflows.vibrations.vibrate`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._common import POSITIVE_FLOAT, POSITIVE_INT, add_model_arguments, calculator_from_args, check_outputs, read_structure

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)

HELP = "vibrational frequencies, ZPE and harmonic free energy of an adsorbate (displacements batched)"


def _indices(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated atom indices such as 36,37, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc vibrations``."""
    parser.add_argument("input", help="relaxed structure (any ASE-readable file)")
    parser.add_argument("--index", default="-1", help="frame of a multi-frame input (default: the last)")
    parser.add_argument("--indices", type=_indices, default=None,
                        help="atoms to displace, e.g. 36,37 (default: the non-metal atoms, i.e. the adsorbate)")
    parser.add_argument("--delta", type=POSITIVE_FLOAT, default=0.01, help="displacement, A (default 0.01)")
    parser.add_argument("--nfree", type=int, default=2, choices=[2, 4], help="displacements per coordinate")
    parser.add_argument("--temperature", type=POSITIVE_FLOAT, default=298.15, help="K, for the harmonic free energy")
    parser.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="displaced structures per model call")
    parser.add_argument("-o", "--output", default=None, help="mode table CSV (default: <input stem>_vibrations.csv)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc vibrations``: print the modes and the free-energy correction, write the CSV."""
    from ..workflows.thermo import adsorbate_free_energies

    output = args.output or f"{Path(args.input).stem}_vibrations.csv"
    check_outputs([output], [args.input])
    atoms = read_structure(args.input, args.index)
    calc = calculator_from_args(args)
    (g,) = adsorbate_free_energies([atoms], calc, args.temperature, [args.indices], delta=args.delta,
                                   nfree=args.nfree, batch_size=args.batch_size)
    vib = g.vibrations
    assert vib is not None
    for f in vib.frequencies:
        print(f"{abs(f):10.2f}{'i' if f < 0 else ' '} cm^-1")
    print(vib.summary())
    print(f"harmonic at {args.temperature:g} K: ZPE {g.zpe:.4f} eV, int Cv dT {g.thermal:.4f} eV, TS {g.ts:.4f} eV, "
          f"G - E = {g.correction:.4f} eV ({g.n_imaginary} imaginary mode(s) dropped, {g.n_soft} soft mode(s) "
          f"raised to {g.soft_floor:g} cm^-1)")
    log.info("wrote %s", vib.write_csv(output))
    return 0
