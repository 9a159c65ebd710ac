"""Data: readers of users' files, labellers (EMT, a teacher potential, ``module:factory``) and datasets.

Sits above the calculators and below training and workflows: nothing here imports ``train``,
``workflows``, ``service`` or ``cli``.
"""
