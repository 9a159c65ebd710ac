"""Run a service app with uvicorn until SIGINT / SIGTERM (``equiformer-calc serve``).

On the stop signal uvicorn stops accepting connections and lets in-flight requests finish (up to
``graceful_timeout_s``); the app's lifespan then finishes the queued requests and stops the model
worker. A stop by signal is a normal return, not death by signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

__all__ = ["serve"]

log = logging.getLogger(__name__)


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
    ``graceful_timeout_s`` (<= 0: no limit): how long in-flight requests may take to finish on
    stop; ``token_set``: whether the app requires a token (a warning otherwise, when the address is
    reachable from other machines). Returns whether the server started (False: e.g. the port was
    taken)."""
    import uvicorn

    if not token_set and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who can reach this address can use the model", host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # use the CLI's logging setup
        log_level=logging.getLogger().getEffectiveLevel(),
        access_log=access_log,
        timeout_keep_alive=max(1, int(round(keep_alive_s))),
        timeout_graceful_shutdown=graceful_timeout_s if graceful_timeout_s > 0 else None,
    )
    server = uvicorn.Server(config)
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
    why = f" after {signal.Signals(received[0]).name}" if received else ""
    log.info("server stopped%s", why)
    return bool(server.started)
