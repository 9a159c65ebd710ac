"""i-PI force-field client: the model answers i-PI's socket requests (energy, forces, virial).

i-PI (``pip install ipi``) runs the dynamics -- path-integral MD, replica exchange, NPT with its
barostats -- and asks a *client* for energies and forces of each configuration (each bead) over
a UNIX or TCP socket. ``equiformer-calc ipi STRUCTURE --unix NAME`` (or ``--host H --port P``)
is such a client: it connects to the socket that i-PI's ``<ffsocket>`` opened, and answers with
:class:`~equiformer_calc.calculators.local.EquiformerCalculator` through ASE's implementation of the
i-PI protocol (:class:`ase.calculators.socketio.SocketClient`).

i-PI sends positions and the cell but not the elements, so the client reads them (and which
directions are periodic) from ``STRUCTURE``, the same structure i-PI starts from. For a
structure periodic in all three directions the virial (``-V * stress``) is sent too, so NPT
works; for a slab or a molecule the virial is zero (i-PI's constant-pressure modes then make
no sense). i-PI may turn the structure so that cell vector a lies along x and b in the xy plane;
the client evaluates positions and cell exactly as i-PI sends them, so forces and virial are in
i-PI's frame. The client exits when i-PI sends EXIT or closes the socket.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from ase import Atoms
from ase.calculators.calculator import Calculator

__all__ = ["run_client", "connect", "IPIConnectionError"]

log = logging.getLogger(__name__)


class IPIConnectionError(ConnectionError):
    """No i-PI server answered at the given socket within the wait: i-PI is not running there
    (a wrong --unix name or --port, or i-PI not started)."""


def connect(unix: str | None = None, host: str = "localhost", port: int | None = None, wait_s: float = 60.0) -> Any:
    """An ASE ``SocketClient`` connected to i-PI, retrying for ``wait_s`` seconds while the server
    is not up yet (i-PI opens its socket a moment after it starts)."""
    from ase.calculators.socketio import SocketClient

    if (unix is None) == (port is None):
        raise ValueError("give either a UNIX socket name (--unix) or a TCP port (--port)")
    where = f"UNIX socket /tmp/ipi_{unix}" if unix is not None else f"{host}:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client = SocketClient(host=host, port=port, unixsocket=unix)
            log.info("connected to i-PI at %s", where)
            return client
        except (ConnectionRefusedError, FileNotFoundError, socket.timeout) as exc:
            if time.monotonic() > deadline:
                raise IPIConnectionError(
                    f"no i-PI server at {where} after waiting {wait_s:g} s ({exc.__class__.__name__}): start i-pi "
                    f"first, with an <ffsocket> of the same address") from None
            time.sleep(0.2)


def run_client(
    atoms: Atoms,
    calculator: Calculator,
    unix: str | None = None,
    host: str = "localhost",
    port: int | None = None,
    wait_s: float = 60.0,
) -> int:
    """Answer i-PI's requests for ``atoms`` (elements and pbc; i-PI sends positions and cell) with
    ``calculator`` until i-PI ends the run. Returns the number of force evaluations done."""
    work = atoms.copy()
    work.calc = calculator
    use_stress = bool(work.pbc.all())
    client = connect(unix=unix, host=host, port=port, wait_s=wait_s)
    steps = 0
    try:
        for _ in client.irun(work, use_stress=use_stress):
            steps += 1
            if steps == 1:
                log.info("first evaluation: %d atoms, energy %.6f eV%s", len(work), work.get_potential_energy(),
                         "" if use_stress else " (no virial: the structure is not periodic in 3D)")
    except ValueError as exc:
        raise ValueError(f"i-PI sent a configuration that does not fit the structure ({len(work)} atoms): {exc}") from None
    log.info("i-PI ended the run after %d force evaluations", steps)
    return steps
