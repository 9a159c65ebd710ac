"""A reference calculator for the refinement's SIGKILL test: ASE's EMT that kills its own process with
SIGKILL at its ``$KILL_AT_CALL``-th calculation (unset: never), like a DFT job lost to a node failure."""

from __future__ import annotations

import os
import signal

from ase.calculators.emt import EMT


class KillingEMT(EMT):
    """EMT whose n-th ``calculate`` (n = ``$KILL_AT_CALL``) is a SIGKILL of the process."""

    calls = 0

    def calculate(self, *args, **kwargs):  # type: ignore[override]
        KillingEMT.calls += 1
        if KillingEMT.calls == int(os.environ.get("KILL_AT_CALL", "0") or 0):
            os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(*args, **kwargs)


def factory() -> EMT:
    """The labeller factory (``tests.workflows.killing_emt:factory``)."""
    return KillingEMT()
