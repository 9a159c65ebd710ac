"""Thin adapters from the Equiformer calculator to other programs (i-PI, LAMMPS, dispersion sums).

Each adapter wraps :class:`equiformer_calc.calculator.EquiformerCalculator` and adds no physics of
its own beyond what the other program needs; none imports ``workflows``, ``service`` or ``cli``.
"""
