"""Data: readers of users' files, labellers (EMT, a teacher potential, ``module:factory``) and the
generation of labelled datasets.

* :mod:`.readers`: extxyz keys, ASE databases, ``ase.io`` formats, fairchem ``.aselmdb``;
* :mod:`.labellers`: what labels frames (resumable, journaled calls);
* data generation in three steps: :mod:`.plan` (which systems, which split), :mod:`.label` (one
  system -> labelled frames, structures from :mod:`equiformer_calc.surfaces`) and :mod:`.generate`
  (the resumable run over processes or a Dask cluster, and ``equiformer-calc datagen``).

Sits above the calculators and :mod:`equiformer_calc.surfaces`, below training and workflows: nothing
here imports ``train``, ``workflows``, ``service`` or ``cli``.
"""
