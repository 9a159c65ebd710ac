"""Helpers of the workflow tests: small slabs and a counter of batched model calls."""

from __future__ import annotations

from ase import Atoms
from ase.build import add_adsorbate, fcc111

# seed 1 gives a tiny random model whose energy surface holds these small systems together
SEED = 1


def small_slab(facet=fcc111, ads: str = "O", site: str = "ontop", seed: int = 0) -> Atoms:
    atoms = facet("Cu", (2, 2, 3), vacuum=5.0)
    add_adsorbate(atoms, ads, 1.8, site)
    atoms.rattle(0.05, seed=seed)
    return atoms


class CountingPredict:
    """Wraps Predictor.predict to record the batch size of every model call."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.original = predictor.predict
        self.sizes: list[int] = []

    def __enter__(self):
        def counted(structures, *args, **kwargs):
            structures = list(structures)
            self.sizes.append(len(structures))
            return self.original(structures, *args, **kwargs)

        self.predictor.predict = counted
        return self

    def __exit__(self, *exc):
        del self.predictor.predict
