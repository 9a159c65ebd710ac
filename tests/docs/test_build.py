"""The docs build is a test: ``sphinx-build -W --keep-going -n`` must pass (warnings are errors,
every cross-reference resolves), every internal link, image and anchor of the built HTML must
resolve, and every public name, workflows function, CLI verb and option, shipped checkpoint and
tutorial must have its page or entry."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

from .conftest import DOCS, ROOT, BuiltSite
from .htmlcheck import broken_links, external_resources, parse

pytestmark = pytest.mark.slow

sys.path.insert(0, str(DOCS / "_ext"))
import eqc_docs  # noqa: E402  (the generator the docs build itself uses: same module list, same parsers)


def _ids(site: Path) -> dict[str, set[str]]:
    return {str(p.relative_to(site)): parse(p).ids for p in site.rglob("*.html")}


def test_build_passes_with_warnings_as_errors(built_site: BuiltSite) -> None:
    warnings = [line for line in built_site.log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert built_site.status == 0 and not warnings, "\n".join(warnings or built_site.log.splitlines()[-40:])
    print(f"docs build: {built_site.seconds:.0f} s")


def test_internal_links_images_and_anchors_resolve(site: Path) -> None:
    problems, checked = broken_links(site)
    assert checked > 1000, f"only {checked} internal links found: is the site complete?"
    assert not problems, f"{len(problems)} broken of {checked} internal links:\n" + "\n".join(problems[:50])


def test_no_page_loads_anything_from_the_network(site: Path) -> None:
    """The site works offline: no page pulls CSS, JS, fonts or images from another host."""
    found = external_resources(site)
    assert not found, "\n".join(found[:30])


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    """The checker itself: a missing file, a missing anchor and a missing image are each reported."""
    (tmp_path / "a.html").write_text('<p id="here">x</p><a href="b.html#there">b</a><a href="#here">ok</a>'
                                     '<a href="#nowhere">bad</a><img src="_images/x.png"><a href="gone.html">g</a>'
                                     '<a href="https://example.org/#x">external</a>')
    (tmp_path / "b.html").write_text('<section id="elsewhere"></section>')
    problems, checked = broken_links(tmp_path)
    assert external_resources(tmp_path) == []
    (tmp_path / "c.html").write_text('<link rel="stylesheet" href="https://cdn.example/x.css"><a href="a.html">a</a>')
    assert external_resources(tmp_path) == ["c.html: https://cdn.example/x.css"]
    assert checked == 5
    assert len(problems) == 4, problems
    assert any("#there" in p for p in problems) and any("#nowhere" in p for p in problems)
    assert any("x.png" in p for p in problems) and any("gone.html" in p for p in problems)


def test_every_public_name_has_a_reference_entry(site: Path) -> None:
    import equiformer_calc

    ids = parse(site / "api" / "index.html").ids
    missing = [name for name in equiformer_calc.__all__ if f"equiformer_calc.{name}" not in ids]
    assert not missing, f"equiformer_calc.__all__ names without an entry in api/index.html: {missing}"


def _workflow_functions() -> list[str]:
    names = []
    for module_name in eqc_docs.workflow_modules():
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None)
        for name, obj in vars(module).items():
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or obj.__module__ != module_name:
                continue
            if (exported is not None and name in exported) or (exported is None and not name.startswith("_")):
                names.append(f"{module_name}.{name}")
    return names


def test_every_workflows_function_has_a_reference_entry(site: Path) -> None:
    expected = _workflow_functions()
    assert "equiformer_calc.workflows.screening.screen.screen_adsorbates" in expected
    all_ids = set().union(*_ids(site / "api").values())
    missing = [name for name in expected if name not in all_ids]
    assert not missing, f"public functions/classes of the workflows modules without a reference entry: {missing}"


def test_every_cli_verb_and_option_has_a_reference_entry(site: Path) -> None:
    from equiformer_calc.cli import COMMANDS

    assert len(COMMANDS) >= 12
    missing = []
    for verb in COMMANDS:
        page = site / "cli" / f"{verb}.html"
        if not page.exists():
            missing.append(f"{verb}: no page")
            continue
        ids = parse(page).ids
        if f"cli-{verb}" not in ids:
            missing.append(f"{verb}: no anchor cli-{verb}")
        for action in eqc_docs.verb_parser(verb)._actions:
            for option in action.option_strings:
                anchor = f"cmdoption-equiformer-calc-{verb}-{option.lstrip('-')}"
                if anchor not in ids:
                    missing.append(f"{verb} {option}: no entry {anchor}")
    assert not missing, "\n".join(missing)
    guide = (site / "guide" / "cli.html").read_text(encoding="utf-8")
    assert all(f'href="../cli/{verb}.html#cli-{verb}"' in guide for verb in COMMANDS), "guide/cli lacks a verb"


def test_every_shipped_checkpoint_has_a_model_card_page(site: Path) -> None:
    names = sorted(p.name[: -len(".card.json")] for p in (ROOT / "checkpoints").glob("*.card.json"))
    assert {"emt-small", "pbe-distilled-small"} <= set(names)
    for name in names:
        text = (site / "model-cards" / f"{name}.html").read_text(encoding="utf-8")
        card = (ROOT / "checkpoints" / f"{name}.md").read_text(encoding="utf-8")
        first_line = re.sub(r"[`*#]", "", card.splitlines()[0]).strip()
        assert first_line.split(":")[0] in text  # the card's own text, included at build time
        assert "checkpoint_sha256" in text


def test_benchmarks_page_includes_results_and_links_the_scripts(site: Path) -> None:
    text = (site / "benchmarks.html").read_text(encoding="utf-8")
    headings = re.findall(r"(?m)^#{2,3} (.+)$", (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8"))
    assert headings and all(re.sub(r"[`*]", "", h).split("(")[0].strip()[:20] in text for h in headings[:10])
    for script in (ROOT / "benchmarks").glob("[!_]*.py"):
        assert f"{script.name}</span></code></a>" in text or script.name in text, script.name
        assert list((site / "_downloads").rglob(script.name)), f"{script.name} not copied into the site"


def test_tutorials_ran_and_show_their_plots(site: Path) -> None:
    sources = sorted((DOCS / "tutorials-src").glob("tutorial_*.py"))
    assert len(sources) >= 3
    for source in sources:
        page = site / "tutorials" / f"{source.stem}.html"
        text = page.read_text(encoding="utf-8")
        assert "sphx-glr-script-out" in text, f"{source.name}: no captured output (not executed?)"
        images = [src for attr, src in parse(page).links if attr == "src" and src.endswith(".png")]
        assert images, f"{source.name}: no image"
        for src in images:
            assert (page.parent / src).resolve().stat().st_size > 1000, src
    screen = (site / "tutorials" / "tutorial_02_screen.html").read_text(encoding="utf-8")
    assert "E_ads =" in screen and "relaxations run" in screen
