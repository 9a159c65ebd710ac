"""Helpers shared by the benchmark scripts: the machine/version lines of RESULTS.md sections."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Iterable


def machine_line() -> str:
    """`nproc`, CPU model, Python version and the date, as one markdown sentence."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"Machine: `nproc` = {nproc}, CPU: {model}, Python {platform.python_version()}, date: {date}."


def versions_line(packages: Iterable[str]) -> str:
    """Installed versions of ``packages`` ('?' where absent), as one markdown sentence."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in packages:
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} ?")
    return "Versions: " + ", ".join(parts) + "."
