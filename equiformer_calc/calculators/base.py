"""What every calculator of this package shares with ASE's protocol (no torch here: the remote
calculator imports it too)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["ASE_BASE_KEYWORDS", "reject_unknown_keywords"]

#: keywords of ASE's ``Calculator.__init__`` that our calculators pass through
ASE_BASE_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")


def reject_unknown_keywords(owner: str, given: dict[str, Any], accepted: Sequence[str]) -> None:
    """``TypeError`` naming the keywords of ``given`` not in ``accepted`` (nor ASE's base ones).

    ASE's base class files unknown keywords under ``parameters`` and ignores them, so a misspelled
    ``chekpoint=`` or an unsupported ``dispersion=`` would silently do nothing."""
    unknown = sorted(set(given) - set(accepted) - set(ASE_BASE_KEYWORDS))
    if unknown:
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(list(accepted) + list(ASE_BASE_KEYWORDS))}"
        )
