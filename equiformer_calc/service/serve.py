"""Run a service app with uvicorn until SIGINT / SIGTERM (``equiformer-calc serve``).

The stop, and its bound. On the first SIGTERM / SIGINT uvicorn stops accepting connections and
lets in-flight requests finish for up to ``graceful_timeout_s``; the app's lifespan then gives
queued model calls up to 10 s more and stops the model worker and the parser processes. A
watchdog started by the signal guarantees the bound whatever the process is doing: if it is
still alive ``graceful_timeout_s + STOP_MARGIN_S`` seconds after the signal, it kills its child
processes and exits with status 1. A stop by signal within the grace period is a normal return
(status 0), not death by signal.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

__all__ = ["serve", "STOP_MARGIN_S"]

log = logging.getLogger(__name__)

#: seconds after ``graceful_timeout_s`` by which the process is gone in every case
STOP_MARGIN_S = 15.0


def _hard_exit(after_s: float) -> None:
    """Kill the child processes and end this one (the watchdog's last resort)."""
    log.error("still running %.0f s after the stop signal: killing the workers and exiting", after_s)
    for child in multiprocessing.active_children():
        child.kill()
    logging.shutdown()
    os._exit(1)


def _server_class(grace_s: float | None) -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server, plus a watchdog armed by the first stop signal."""

        watchdog: threading.Timer | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.watchdog is None and grace_s is not None:
                limit = grace_s + STOP_MARGIN_S
                self.watchdog = threading.Timer(limit, _hard_exit, args=(limit,))
                self.watchdog.daemon = True
                self.watchdog.start()
                log.info("%s: stopping (in-flight requests get %g s; the process is gone within %g s)",
                         signal.Signals(sig).name, grace_s, limit)
            super().handle_exit(sig, frame)

    return _Server


def serve(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    keep_alive_s: float = 30.0,
    graceful_timeout_s: float = 60.0,
    access_log: bool = True,
    token_set: bool = False,
) -> bool:
    """Serve ``app`` (from :func:`~equiformer_calc.service.app.create_app`) on ``host:port`` until
    SIGINT / SIGTERM. ``keep_alive_s``: how long an idle client connection stays open;
    ``graceful_timeout_s`` (<= 0: no limit, and no watchdog): how long in-flight requests may take
    to finish on stop; ``token_set``: whether the app requires a token (a warning otherwise, when
    the address is reachable from other machines). Returns whether the server started (False:
    e.g. the port was taken)."""
    import uvicorn

    if not token_set and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who can reach this address can use the model", host)
    grace = graceful_timeout_s if graceful_timeout_s > 0 else None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # use the CLI's logging setup
        log_level=logging.getLogger().getEffectiveLevel(),
        access_log=access_log,
        timeout_keep_alive=max(1, int(round(keep_alive_s))),
        timeout_graceful_shutdown=grace,
    )
    server = _server_class(grace)(config)
    # uvicorn re-raises the stop signal after its graceful shutdown; catch it here so that a
    # SIGTERM/SIGINT stop is a normal exit (status 0) rather than death by signal
    received: list[int] = []
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        server.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if server.watchdog is not None:
            server.watchdog.cancel()
    why = f" after {signal.Signals(received[0]).name}" if received else ""
    log.info("server stopped%s", why)
    return bool(server.started)
