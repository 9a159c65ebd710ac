"""SevenNet (``sevenn``, the ``[teacher]`` extra) as a labeller: :func:`factory` builds a
``SevenNetCalculator`` on the CPU, threads from ``EQUIFORMER_CALC_LABELLER_THREADS`` (default 1).
The labeller name ``sevennet[:MODEL]`` resolves to it in ``equiformer_calc.data.labellers``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ase.calculators.calculator import Calculator

__all__ = ["DEFAULT_MODEL", "factory"]

#: the model of the name ``sevennet`` without ``:MODEL``
DEFAULT_MODEL = "7net-0"


def factory(model: str = DEFAULT_MODEL) -> Callable[[], Calculator]:
    """A zero-argument callable that builds a SevenNet calculator of ``model`` (imports ``sevenn`` when called)."""

    def build() -> Calculator:
        import warnings

        from ..runtime import set_threads

        set_threads(max(1, int(os.environ.get("EQUIFORMER_CALC_LABELLER_THREADS", "1"))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sevenn.calculator import SevenNetCalculator

            return SevenNetCalculator(model, device="cpu")

    return build
