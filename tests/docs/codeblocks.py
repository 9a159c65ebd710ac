"""Fenced code blocks of markdown files, for running README and docs examples as tests.

A block is ```` ```python ```` (or ```` ```py ````); its info string may carry a flag after the
language: ```` ```python skip: <reason> ```` marks a block that cannot run offline in seconds (a
running server, a cluster, the user's own files), and the reason is required. Any other info
string (``bash``, ``yaml``, ``{toctree}``) is not Python and is not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass
class CodeBlock:
    path: Path
    line: int  #: 1-based line of the opening fence
    language: str
    flags: str  #: the info string after the language
    code: str

    @property
    def is_python(self) -> bool:
        return self.language in ("python", "py", "python3")

    @property
    def skip_reason(self) -> str | None:
        """The reason of a ``skip: <reason>`` flag, None when the block runs; ValueError for a
        ``skip`` without a reason or an unknown flag (a typo must not silently skip a block)."""
        if not self.flags:
            return None
        match = re.fullmatch(r"skip:\s*(\S.*)", self.flags)
        if not match:
            raise ValueError(f"{self.path}:{self.line}: python block flag {self.flags!r} is not 'skip: <reason>'")
        return match.group(1).strip()


def code_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced block of a markdown file, in order (nested longer fences handled)."""
    blocks: list[CodeBlock] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, info, indent = match.group("fence"), match.group("info").strip(), len(match.group("indent"))
        language, _, flags = info.partition(" ")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        blocks.append(CodeBlock(path, i + 1, language.lower(), flags.strip(), "\n".join(body) + "\n"))
        i = j + 1
    return blocks
