"""``equiformer-calc serve``: serve a checkpoint over HTTP (the app is
:func:`equiformer_calc.service.app.create_app`, run by :func:`equiformer_calc.service.serve.serve`)."""

from __future__ import annotations

import argparse
import logging
import os

from ._common import add_memory_argument, add_model_arguments, settings_from_args

__all__ = ["HELP", "add_arguments", "run"]

log = logging.getLogger(__name__)

HELP = "serve a checkpoint over HTTP (POST /v1/predict) with dynamic batching"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``equiformer-calc serve``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--token", default=os.environ.get("EQUIFORMER_CALC_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' (default: $EQUIFORMER_CALC_TOKEN; prefer the "
                             "environment variable, command lines are visible to other users)")
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    add_memory_argument(parser, "; calls that fit in neither are answered 507")
    parser.add_argument("--max-batch-atoms", type=int, default=1024,
                        help="atom budget of one model call (default 1024)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a request may wait for others to batch with, skipped when none are "
                             "arriving (default 5)")
    parser.add_argument("--no-batching", action="store_true", help="one model call per request")
    parser.add_argument("--max-atoms-per-structure", type=int, default=10_000, help="413 above (default 10000)")
    parser.add_argument("--max-atoms-per-request", type=int, default=50_000, help="413 above (default 50000)")
    parser.add_argument("--max-edges-per-structure", type=int, default=None,
                        help="413 above this estimated edge count (default: what fits in the memory budget)")
    parser.add_argument("--max-edges-per-request", type=int, default=None,
                        help="413 above this estimated edge count summed over a request (default: what fits in the "
                             "memory budget)")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="memory one model call may use, in GiB (default: 80%% of the memory available when "
                             "the call starts)")
    parser.add_argument("--no-isolation", action="store_true",
                        help="run the model in the server process (default: in a worker process that is restarted "
                             "if it crashes)")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body in MiB (default 16)")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="seconds (queueing included) before a request gets 504 (default 120)")
    parser.add_argument("--parse-timeout", type=float, default=60.0,
                        help="seconds one request body may take to read and check (in a parser process, off the "
                             "event loop); 413 above (default 60)")
    parser.add_argument("--max-queued-requests", type=int, default=1024,
                        help="503 beyond this many waiting requests (default 1024)")
    parser.add_argument("--graceful-timeout", type=float, default=60.0,
                        help="on SIGTERM/SIGINT, seconds to let in-flight requests finish (default 60); the process "
                             "is gone within this + 15 s in every case")
    parser.add_argument("--keep-alive", type=float, default=30.0,
                        help="seconds an idle client connection stays open; clients reconnect transparently "
                             "(default 30)")
    parser.add_argument("--no-access-log", action="store_true", help="do not log every request")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and serve it with uvicorn until SIGINT/SIGTERM."""
    from ..checkpoint import CheckpointError
    from ..runtime import set_threads
    from ..service.app import create_app
    from ..service.serve import serve

    set_threads(args.threads)
    try:
        budget = "auto" if args.memory_budget_gb is None else int(args.memory_budget_gb * (1 << 30))
        app = create_app(
            settings_from_args(args, memory_budget=budget),
            token=args.token or None,
            max_atoms_per_structure=args.max_atoms_per_structure,
            max_atoms_per_request=args.max_atoms_per_request,
            max_edges_per_structure=args.max_edges_per_structure,
            max_edges_per_request=args.max_edges_per_request,
            isolate=not args.no_isolation,
            max_body_bytes=int(args.max_body_mb * (1 << 20)),
            request_timeout_s=args.request_timeout,
            parse_timeout_s=args.parse_timeout,
            max_batch_atoms=args.max_batch_atoms,
            max_wait_ms=args.max_wait_ms,
            batching=not args.no_batching,
            max_queued_requests=args.max_queued_requests,
        )
    except (CheckpointError, ValueError, ImportError) as exc:
        log.error("%s", exc)
        return 2
    started = serve(app, args.host, args.port, keep_alive_s=args.keep_alive, graceful_timeout_s=args.graceful_timeout,
                    access_log=not args.no_access_log, token_set=bool(args.token))
    return 0 if started else 1
