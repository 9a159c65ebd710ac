"""The page generators of the docs (docs/_ext/eqc_docs.py), without a Sphinx build: what they
write covers every verb and option, every API module and every shipped checkpoint, so that a verb,
module or checkpoint added later appears in the docs without an edit there."""

from __future__ import annotations

import sys

from .conftest import DOCS, ROOT

sys.path.insert(0, str(DOCS / "_ext"))
import eqc_docs  # noqa: E402


def test_cli_pages_have_every_verb_and_option() -> None:
    from equiformer_calc.cli import COMMANDS

    pages = eqc_docs._cli_pages()
    assert set(pages) == set(COMMANDS) | {"index"}
    for verb in COMMANDS:
        text = pages[verb]
        assert f".. _cli-{verb}:" in text and f".. program:: equiformer-calc {verb}" in text
        for action in eqc_docs.verb_parser(verb)._actions:
            for option in action.option_strings:
                assert f".. option:: {option}" in text or f", {option}" in text, f"{verb} {option}"
    relax = pages["relax"]
    fmax = next(a for a in eqc_docs.verb_parser("relax")._actions if "--fmax" in a.option_strings)
    assert f".. option:: --fmax FMAX\n\n   {eqc_docs._rst_escape(fmax.help)}" in relax
    assert "{BFGS,FIRE,LBFGS}" in relax
    table = eqc_docs._verb_table()
    assert all(f"<cli-{verb}>" in table for verb in COMMANDS)


def test_option_entry_expands_defaults_and_lists_choices() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="x")
    step = parser.add_argument("--step", type=float, default=0.5, help="step size (default %(default)s)")
    mode = parser.add_argument("--mode", choices=["a", "b"], default="a")
    flag = parser.add_argument("-q", "--quiet", action="store_true", help="say *nothing*")
    assert eqc_docs._option_entry(parser, step) == ".. option:: --step STEP\n\n   step size (default 0.5)\n"
    assert eqc_docs._option_entry(parser, mode) == ".. option:: --mode {a,b}\n\n   (choices: a, b)\n"
    assert eqc_docs._option_entry(parser, flag) == ".. option:: -q, --quiet\n\n   say \\*nothing\\*\n"


def test_rst_escaping_of_help_texts() -> None:
    assert eqc_docs._rst_escape("a *b* `c` |d| e_ f\\g") == r"a \*b\* \`c\` \|d\| e\_ f\\g"


def test_api_pages_cover_the_public_names_and_every_workflows_module() -> None:
    import equiformer_calc

    pages = eqc_docs._api_pages()
    index = pages["index"]
    for name in equiformer_calc.__all__:
        assert f":: equiformer_calc.{name}" in index, name
    modules = eqc_docs.workflow_modules()
    assert {"equiformer_calc.workflows.relax", "equiformer_calc.workflows.screening.screen"} <= set(modules)
    for module in modules:
        assert f".. automodule:: {module}" in pages[eqc_docs.page_name(module)]
        assert f"   {eqc_docs.page_name(module)}" in index
    assert not any(part.startswith("_") for m in eqc_docs.public_modules() for part in m.split("."))
    # a package lists what it re-exports as links to the documenting page instead of documenting it twice
    package = pages[eqc_docs.page_name("equiformer_calc.workflows")]
    assert ":no-members:" in package and ":py:obj:`equiformer_calc.workflows.batch.relax_batch`" in package


def test_model_card_pages_include_every_shipped_card() -> None:
    names = eqc_docs.shipped_checkpoints()
    assert {"emt-small", "pbe-distilled-small"} <= set(names)
    pages = eqc_docs._card_pages()
    for name in names:
        text = pages[name]
        if (ROOT / "checkpoints" / f"{name}.md").exists():
            assert f"```{{include}} ../../checkpoints/{name}.md" in text  # included, not copied
        if (ROOT / "checkpoints" / f"{name}.card.json").exists():
            assert f"```{{literalinclude}} ../../checkpoints/{name}.card.json" in text
        assert f"\n{name}\n" in pages["index"]


def test_benchmark_table_links_every_script() -> None:
    table = eqc_docs._benchmark_table()
    for script in (ROOT / "benchmarks").glob("[!_]*.py"):
        assert f"{{download}}`{script.name} <../benchmarks/{script.name}>`" in table


def test_google_attributes_section_becomes_a_bullet_list() -> None:
    lines = ["Settings.", "", "Attributes:", "    out: the folder.", "    a / b: two names,", "        one text.",
             "", "After."]
    assert eqc_docs._attributes_as_list(lines) == [
        "Settings.", "", "**Attributes**", "", "* out: the folder.", "* a / b: two names,", "  one text.", "", "",
        "After."]
