"""AdsorbML-style relaxation benchmark of a checkpoint against the EMT references of a datagen
output (``relax_initial.extxyz`` + ``relax_tasks.json``); see
:mod:`equiformer_calc.train.relax_benchmark` for what is measured.

Usage::

    python benchmarks/relax_benchmark.py CKPT data/emt-medium [--max-tasks 20] [--out DIR]

Prints a summary to the log and, with ``--out``, writes ``relax_benchmark.json`` (per task,
per (metal, facet, adsorbate) group and summary) and ``relax_parity.png``.
"""

from __future__ import annotations

import sys

from equiformer_calc.train.relax_benchmark import main

if __name__ == "__main__":
    sys.exit(main())
