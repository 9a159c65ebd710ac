"""Build the documentation and serve it locally: ``python docs/serve.py [--port 8000] [--no-serve]``.

Runs ``sphinx-build -W --keep-going -n`` (warnings are errors, every cross-reference must resolve)
into ``docs/_build/html`` (incremental: a second run rebuilds only what changed), then serves that
folder on http://127.0.0.1:PORT until Ctrl-C. Needs the ``[docs]`` extra.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    parser.add_argument("--out", type=Path, default=DOCS / "_build" / "html", help="output folder")
    parser.add_argument("--no-serve", action="store_true", help="only build")
    args = parser.parse_args()
    status = subprocess.call(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", str(DOCS), str(args.out),
         "-d", str(args.out.parent / "doctrees")]
    )
    if status or args.no_serve:
        return status
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(args.out))
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        print(f"serving {args.out} on http://127.0.0.1:{args.port}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
