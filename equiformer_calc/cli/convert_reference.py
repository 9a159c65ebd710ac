"""``equiformer-calc convert-reference``: convert a checkpoint of the reference Equiformer code to
ours (the converter is :func:`equiformer_calc.reference.convert_reference`)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ._common import FINITE_FLOAT, POSITIVE_FLOAT, check_outputs

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)


HELP = "convert a checkpoint of the reference Equiformer code (atomicarchitects/equiformer) to ours"

#: the converter's tables (reference.VARIANTS, TASKS, ENERGY_UNITS), named here so that --help
#: does not import torch; tests/cli/test_help.py checks they are the converter's
VARIANT_NAMES = ("md17-l2", "md17-l3", "oc20-is2re", "qm9")
TASK_NAMES = ("potential", "is2re-direct", "property")
ENERGY_UNIT_NAMES = ("Hartree", "eV", "kJ/mol", "kcal/mol", "meV")


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``equiformer-calc convert-reference``."""
    parser.add_argument("input", help="the reference checkpoint (torch.save file with 'state_dict', or .safetensors)")
    parser.add_argument("output", help="the equiformer-calc checkpoint to write (.safetensors)")
    parser.add_argument("--variant", required=True, choices=VARIANT_NAMES, help="which reference model family")
    parser.add_argument("--task-mean", type=FINITE_FLOAT, default=None,
                        help="training-set mean of the target (reference units)")
    parser.add_argument("--task-std", type=POSITIVE_FLOAT, default=None,
                        help="training-set standard deviation of the target (> 0)")
    parser.add_argument("--energy-unit", choices=ENERGY_UNIT_NAMES, default=None,
                        help="unit of the reference's energies (default: kcal/mol for MD17, eV otherwise)")
    parser.add_argument("--elements", default=None, help="comma-separated elements to accept (default: all the embedding has)")
    parser.add_argument("--reference-kwargs", type=_json_object, default=None, metavar="JSON",
                        help="override reference constructor arguments, e.g. '{\"num_layers\": 4}'")
    parser.add_argument("--task", choices=TASK_NAMES, default=None, help="override the variant's task")
    parser.add_argument("--drop-auxiliary-head", action="store_true", help="ignore OC20's auxiliary IS2RS head")


def run(args: argparse.Namespace) -> int:
    """``equiformer-calc convert-reference``: errors (not a checkpoint, wrong variant, missing
    statistics, ...) end the command with one line, as every command's do."""
    from ..reference import convert_reference

    check_outputs([args.output], [args.input])
    elements = [e.strip() for e in args.elements.split(",") if e.strip()] if args.elements else None
    path = convert_reference(
        args.input, variant=args.variant, out=args.output, task_mean=args.task_mean, task_std=args.task_std,
        energy_unit=args.energy_unit, elements=elements, reference_kwargs=args.reference_kwargs, task=args.task,
        drop_auxiliary_head=args.drop_auxiliary_head,
    )
    log.info("wrote %s", path)
    return 0
