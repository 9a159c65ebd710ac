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


def update_section(path: Path, heading: str, body: str) -> None:
    """Replace the markdown section that starts with the line ``heading`` (up to the next heading of
    level 1 or 2) by ``body``, or append ``body`` if there is no such section. Lines inside fenced
    code blocks (for example ``# comments`` in a bash block) are not taken for headings."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines = text.splitlines()
    try:
        start = next(k for k, line in enumerate(lines) if line.strip() == heading)
    except StopIteration:
        path.write_text(text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n")
        return
    end, fenced = len(lines), False
    for k in range(start + 1, len(lines)):
        if lines[k].lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and lines[k].startswith(("## ", "# ")):
            end = k
            break
    before = "\n".join(lines[:start]).rstrip("\n")
    after = "\n".join(lines[end:])
    new = (before + "\n\n" if before else "") + body.rstrip("\n") + ("\n\n" + after if after else "")
    path.write_text(new.rstrip("\n") + "\n")
