"""The interfaces that several layers program against (typing only: this module imports nothing of
the package at run time and sits at the bottom of the layers).

:class:`PredictorLike` is what a batched model call needs from a predictor. The one implementation
that runs the model is :class:`~equiformer_calc.predictor.Predictor`; the wrappers stacked over it
(:class:`~equiformer_calc.integrations.d3.DispersionPredictor`, which adds D3, and the
service's :class:`~equiformer_calc.service.worker.IsolatedPredictor`, which runs the calls in a
worker process) have the same interface, so the service's batcher, the batched workflows and the
tests take any of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Structure

__all__ = ["PredictorLike"]


@runtime_checkable
class PredictorLike(Protocol):
    """A model evaluator: validated structures in, one result dict per structure out (ASE units:
    ``energy`` eV, ``forces`` eV/A, ``stress`` eV/A^3 Voigt, ``energies`` eV per atom)."""

    @property
    def elements(self) -> list[str]:
        """Chemical symbols the model knows."""

    @property
    def cutoff(self) -> float:
        """Radial cutoff in Angstrom."""

    def to_structure(self, item: Any) -> "Structure":
        """Validate one input (``ase.Atoms`` or a Structure), elements included."""

    def graph(self, structure: "Structure") -> Any:
        """The radius graph of one structure (raises ``StructureError`` for a bad one)."""

    def predict(self, structures: Sequence[Any], properties: Sequence[str] = ...) -> list[dict[str, Any]]:
        """Results of ``structures`` (batched), in order."""
