"""README.md's and the docs pages' ```python blocks run as tests, so an example that stops working
fails CI.

The blocks of one page run in order in one namespace (later blocks use earlier names, as a reader
would), in a fresh temporary folder, with the shipped checkpoints. A block marked
```` ```python skip: <reason> ```` is only compiled (a syntax error still fails) and is reported as a
skip with its reason in the test summary. Generated pages (api/, cli/, model-cards/, tutorials/)
are not scanned: the tutorials are executed by the docs build itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .codeblocks import CodeBlock, code_blocks
from .conftest import DOCS, ROOT

GENERATED = ("_build", "api", "cli", "model-cards", "tutorials")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for path in sorted(DOCS.rglob("*.md")):
        if path.relative_to(DOCS).parts[0] not in GENERATED:
            files.append(path)
    return files


def _python_blocks(path: Path) -> list[CodeBlock]:
    return [b for b in code_blocks(path) if b.is_python]


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


RUNNABLE = [p for p in markdown_files() if any(b.skip_reason is None for b in _python_blocks(p))]
SKIPPED = [b for p in markdown_files() for b in _python_blocks(p) if b.skip_reason is not None]


def test_block_parser_reads_fences_flags_and_nesting(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```python\nx = 1\n```\n\n````markdown\n```python\nnot a block of its own\n```\n````\n"
        "```python skip: needs a server\nserver()\n```\n```bash\nls\n```\n```python skip\ny\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b.language, b.line) for b in blocks] == [("python", 2), ("markdown", 6), ("python", 11), ("bash", 14),
                                                      ("python", 17)]
    assert blocks[0].code == "x = 1\n" and blocks[0].skip_reason is None
    assert blocks[2].skip_reason == "needs a server"
    with pytest.raises(ValueError, match="skip: <reason>"):
        blocks[4].skip_reason


def test_readme_and_docs_have_python_examples() -> None:
    """The runner finds what it should: README's example and the guide's."""
    assert any(p.name == "README.md" for p in RUNNABLE), "README.md has no runnable python block"
    assert sum(len(_python_blocks(p)) for p in markdown_files()) >= 15


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=_id)
def test_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    namespace: dict[str, object] = {"__name__": "__main__"}
    for block in _python_blocks(path):
        code = compile(block.code, f"{_id(path)}:{block.line}", "exec")
        if block.skip_reason is None:
            try:
                exec(code, namespace)  # noqa: S102 - running the documentation's own examples is the test
            except Exception as exc:
                raise AssertionError(f"{_id(path)}, block at line {block.line} failed: {exc!r}") from exc


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: f"{_id(b.path)}:{b.line}")
def test_skipped_blocks_compile_and_say_why(block: CodeBlock) -> None:
    compile(block.code, f"{_id(block.path)}:{block.line}", "exec")
    pytest.skip(f"not run: {block.skip_reason}")
