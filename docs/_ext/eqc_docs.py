"""Build-time page generators of the equiformer-calc docs (a local Sphinx extension).

At ``builder-inited`` (before Sphinx reads any source) this writes three generated trees under the
docs source folder, each ignored by git and rewritten only when its text changes:

* ``api/``: one page per public module of the package (``automodule``), found by walking the
  package, plus ``api/index`` listing every name of ``equiformer_calc.__all__`` documented under its
  public path. A new module or a new name in ``__all__`` appears without an edit here.
* ``cli/``: one page per ``equiformer-calc`` verb, built from the same argparse parser the command
  line builds (``cli.COMMANDS`` and each verb module's ``add_arguments``), with ``.. program::`` /
  ``.. option::`` entries so options can be cross-referenced. A verb added to ``COMMANDS`` appears
  without an edit here.
* ``model-cards/``: one page per shipped checkpoint (every ``checkpoints/*.card.json`` or ``*.md``),
  made of an ``include`` of the card's markdown and a table read from its ``.card.json``; nothing
  is copied into docs/.

It also registers an image scraper for the executed tutorials (sphinx-gallery): a tutorial shows a
PNG file written by the package (a screening heat map, a learning curve) by holding its path in a
module-level variable, the way a user would keep it.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import logging
import pkgutil
import re
import shutil
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
PACKAGE = "equiformer_calc"

#: generated folders (relative to docs/); tests/docs reads this list too
GENERATED = ("api", "cli", "model-cards")

#: the packages whose every public module gets an API page: the workflows (the public API with
#: ``equiformer_calc.__all__``) and the two packages their signatures are built from (surfaces:
#: slabs, sites, adsorbates; distributed: the executors). A reference to any other existing name of
#: the package renders as code without a link (see :func:`resolve_internal`); a name that does not
#: exist stays a build error.
API_PACKAGES = (f"{PACKAGE}.workflows", f"{PACKAGE}.surfaces", f"{PACKAGE}.distributed")

log = logging.getLogger(__name__)


def _write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` only if it differs (keeps Sphinx's incremental build incremental)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _heading(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def _prune(folder: Path, keep: set[Path]) -> None:
    """Remove generated pages that no longer correspond to a module, verb or card."""
    if folder.exists():
        for path in folder.rglob("*"):
            if path.is_file() and path not in keep:
                path.unlink()


# --------------------------------------------------------------------------------------- API


def public_modules() -> list[str]:
    """The public modules (no ``_``-prefixed part) of :data:`API_PACKAGES`, packages included, sorted."""
    names = []
    for package_name in API_PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            if not any(part.startswith("_") for part in info.name.split(".")):
                names.append(info.name)
    return sorted(set(names))


def workflow_modules() -> list[str]:
    """The modules of ``equiformer_calc.workflows`` (recursively): their public functions must all
    have a reference entry (tests/docs checks it)."""
    return [m for m in public_modules() if m == f"{PACKAGE}.workflows" or m.startswith(f"{PACKAGE}.workflows.")]


def _api_pages() -> dict[str, str]:
    pages: dict[str, str] = {}
    package = importlib.import_module(PACKAGE)
    top = [
        _heading("API reference"),
        "Generated from the docstrings at build time. The names below are what "
        f"``import {PACKAGE}`` exports (``{PACKAGE}.__all__``); each is documented under that "
        "public path here and again in its module's page. The module pages follow the package's "
        "layers, from the structure checks at the bottom to the service at the top "
        "(see :doc:`/development/layout`); the command line has its own :doc:`/cli/index`.\n",
        _heading("Public names", "-"),
        f".. automodule:: {PACKAGE}\n   :no-members:\n",
    ]
    for name in package.__all__:
        obj = getattr(package, name)
        kind = "autoclass" if isinstance(obj, type) else "autofunction"
        options = "\n   :members:\n   :show-inheritance:" if kind == "autoclass" else ""
        top.append(f".. {kind}:: {PACKAGE}.{name}{options}\n")
    top.append(_heading("Modules", "-"))
    top.append(".. toctree::\n   :maxdepth: 1\n")
    modules = [m for m in public_modules() if m != PACKAGE]
    top.extend(f"   {page_name(m)}" for m in modules)
    pages["index"] = "\n".join(top) + "\n"
    for module in modules:
        pages[page_name(module)] = _module_page(module)
    return pages


def page_name(module: str) -> str:
    """The API page of a module: ``equiformer_calc.workflows.md`` -> ``equiformer_calc-workflows-md``
    (a docname may not end in ``.md``)."""
    return module.replace(".", "-")


def canonical_name(obj: Any) -> str | None:
    """Where ``obj`` is defined (``module.qualname``; a module's own name), or None."""
    if inspect.ismodule(obj):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and module.startswith(PACKAGE):
        return f"{module}.{qualname}"
    return None


def _module_page(module: str) -> str:
    """A module's page: ``automodule`` with its members; a package's names re-exported from its
    submodules are listed as links to the page that documents them (documenting them twice
    would give two entries for one object)."""
    mod = importlib.import_module(module)
    text = _heading(f"``{module}``") + f"\n.. automodule:: {module}\n"
    if not hasattr(mod, "__path__"):
        return text + "   :members:\n   :show-inheritance:\n"
    names = list(getattr(mod, "__all__", []))
    own = [n for n in names if getattr(getattr(mod, n), "__module__", None) == module]
    text += f"   :members: {', '.join(own)}\n   :show-inheritance:\n" if own else "   :no-members:\n"
    exported = [(n, canonical_name(getattr(mod, n))) for n in names if n not in own]
    exported = [(n, c) for n, c in exported if c]
    if exported:
        text += "\n" + _heading("Names exported here", "-") + "\n"
        text += "\n".join(f"* ``{module}.{n}``: :py:obj:`{c}`" for n, c in exported) + "\n"
    return text


# --------------------------------------------------------------------------------------- CLI

_RST_SPECIAL = re.compile(r"([\\`*|])")


def _rst_escape(text: str) -> str:
    text = _RST_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"(\w)_(?=\W|$)", r"\1\\_", text)  # "name_" would be a hyperlink reference


def verb_parser(name: str) -> argparse.ArgumentParser:
    """The full parser of ``equiformer-calc NAME``, built as :func:`equiformer_calc.cli.main` builds it."""
    cli = importlib.import_module(f"{PACKAGE}.cli")
    module = importlib.import_module(cli.COMMANDS[name])
    parser = argparse.ArgumentParser(
        prog=f"equiformer-calc {name}", description=getattr(module, "HELP", cli._HELP.get(name))
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    return parser


def _option_entry(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    if action.option_strings:
        if action.nargs == 0:
            names = ", ".join(action.option_strings)
        else:
            metavar = formatter._format_args(action, action.dest.upper())
            names = ", ".join(f"{s} {metavar}" for s in action.option_strings)
    else:
        names = action.metavar or action.dest
        if isinstance(names, tuple):
            names = " ".join(names)
    help_text = formatter._expand_help(action) if action.help else ""
    if action.choices is not None and "choices" not in help_text:
        help_text = (help_text + " " if help_text else "") + "(choices: " + ", ".join(map(str, action.choices)) + ")"
    body = _rst_escape(" ".join(help_text.split())) or "(no help text)"
    return f".. option:: {names}\n\n   {body}\n"


def _cli_pages() -> dict[str, str]:
    cli = importlib.import_module(f"{PACKAGE}.cli")
    pages: dict[str, str] = {}
    index = [
        _heading("Command-line reference"),
        "Generated at build time from the argparse parsers of ``equiformer-calc``: every verb, "
        "every option, with the defaults the code has now. ``equiformer-calc VERB --help`` prints "
        "the same. The guide's :doc:`/guide/cli` says which verb to use when.\n",
        ".. code-block:: text\n",
        "   " + cli.build_parser().format_help().replace("\n", "\n   ").rstrip() + "\n",
        ".. toctree::\n   :maxdepth: 1\n",
    ]
    for name in cli.COMMANDS:
        index.append(f"   {name}")
        parser = verb_parser(name)
        lines = [
            f".. _cli-{name}:\n",
            _heading(f"equiformer-calc {name}"),
            _rst_escape(parser.description or "") + "\n",
            ".. code-block:: text\n",
            "   " + parser.format_usage().strip().replace("\n", "\n   ") + "\n",
            f".. program:: equiformer-calc {name}\n",
        ]
        lines.extend(_option_entry(parser, a) for a in parser._actions if a.help is not argparse.SUPPRESS)
        pages[name] = "\n".join(lines) + "\n"
    pages["index"] = "\n".join(index) + "\n"
    return pages


def _verb_table() -> str:
    """A MyST table of every verb and its one-line help, included by guide/cli.md."""
    cli = importlib.import_module(f"{PACKAGE}.cli")
    rows = ["| verb | what it does |", "|---|---|"]
    for name in cli.COMMANDS:
        text = " ".join(str(cli._HELP.get(name) or getattr(importlib.import_module(cli.COMMANDS[name]), "HELP", "")).split())
        text = text.replace("|", "\\|")
        rows.append(f"| {{ref}}`{name} <cli-{name}>` | {text} |")
    return "\n".join(rows) + "\n"


def _benchmark_table() -> str:
    """A MyST table of benchmarks/*.py: a download link to each script and its docstring's first
    sentence (included by benchmarks.md; the scripts are copied into the built site by Sphinx)."""
    rows = ["| script | what it measures |", "|---|---|"]
    for path in sorted((ROOT / "benchmarks").glob("[!_]*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.strip().split("\n\n")[0].split())
        first = re.split(r"(?<=[.:])\s", first)[0].rstrip(":") if first else "(no docstring)"
        first = first.replace("|", "\\|")
        rows.append(f"| {{download}}`{path.name} <../benchmarks/{path.name}>` | {first} |")
    return "\n".join(rows) + "\n"


# ------------------------------------------------------------------------------- model cards


def shipped_checkpoints() -> list[str]:
    """Names of the checkpoints that ship a card (``checkpoints/NAME.card.json`` or ``NAME.md``)."""
    folder = ROOT / "checkpoints"
    names = {p.name[: -len(".card.json")] for p in folder.glob("*.card.json")}
    names |= {p.stem for p in folder.glob("*.md")}
    return sorted(names)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _card_page(name: str) -> str:
    folder = ROOT / "checkpoints"
    md, card = folder / f"{name}.md", folder / f"{name}.card.json"
    rel = "../../checkpoints"
    parts = [f"(card-{name})=\n"]
    if md.exists():
        parts.append(f"```{{include}} {rel}/{md.name}\n```\n")
    else:
        parts.append(f"# Model card: `{name}`\n")
    if card.exists():
        data = json.loads(card.read_text(encoding="utf-8"))
        parts.append(f"## Card data (`checkpoints/{card.name}`)\n")
        scalars = {k: v for k, v in data.items() if not isinstance(v, (dict, list))}
        if scalars:
            parts.append("| field | value |\n|---|---|")
            parts.extend(f"| {k} | `{_fmt(v)}` |" for k, v in scalars.items())
            parts.append("")
        testset = data.get("testset")
        if isinstance(testset, dict):
            parts.append("Metrics on the committed test set (eV, A; `e_mae_atom` per atom):\n")
            parts.append("| metric | value |\n|---|---:|")
            parts.extend(f"| {k} | {_fmt(v)} |" for k, v in testset.items())
            parts.append("")
        parts.append(
            f"The whole card, as committed:\n\n```{{literalinclude}} {rel}/{card.name}\n:language: json\n```\n"
        )
    return "\n".join(parts) + "\n"


def _card_pages() -> dict[str, str]:
    names = shipped_checkpoints()
    pages = {name: _card_page(name) for name in names}
    index = [
        "# Model cards\n",
        "One page per shipped checkpoint, generated at build time from `checkpoints/NAME.md` (what it "
        "is, data, training, limits) and `checkpoints/NAME.card.json` (the measured numbers). "
        "{doc}`/guide/shipped-checkpoints` compares them.\n",
        "```{toctree}\n:maxdepth: 1\n",
        *names,
        "```\n",
    ]
    pages["index"] = "\n".join(index) + "\n"
    return pages


# ------------------------------------------------------------------------------- generation


def generate(app: Any = None) -> None:
    """Write api/, cli/ and model-cards/ under docs/ (Sphinx ``builder-inited`` handler)."""
    for folder, pages, suffix in (
        ("api", _api_pages(), ".rst"),
        ("cli", _cli_pages(), ".rst"),
        ("model-cards", _card_pages(), ".md"),
    ):
        keep = set()
        for name, text in pages.items():
            path = DOCS / folder / f"{name}{suffix}"
            _write(path, text)
            keep.add(path)
        if folder == "cli":
            for inc, text in (("verbs.inc", _verb_table()), ("benchmarks.inc", _benchmark_table())):
                keep.add(DOCS / "cli" / inc)
                _write(DOCS / "cli" / inc, text)
        _prune(DOCS / folder, keep)


def png_variable_scraper(block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
    """sphinx-gallery image scraper: show every PNG file whose path a tutorial holds in a variable.

    A tutorial block that leaves ``heatmap = out / "screen_heatmap.png"`` (a :class:`pathlib.Path`
    to an existing PNG) in its globals gets that image under the block, once; files are copied to
    the gallery's image folder, so the built site does not refer to the temporary folder.
    """
    from sphinx_gallery.scrapers import figure_rst

    shown: set[Path] = block_vars.setdefault("_eqc_shown_png", set())
    images = []
    iterator = block_vars["image_path_iterator"]
    for value in list(vars(block_vars["fake_main"]).values()):
        if isinstance(value, Path) and value.suffix == ".png" and value.is_file():
            key = value.resolve()
            if key in shown:
                continue
            shown.add(key)
            target = Path(next(iterator))
            shutil.copyfile(value, target)
            images.append(target)
    return figure_rst(images, gallery_conf["src_dir"]) if images else ""


def _import_path(path: str) -> Any:
    """The object a dotted path names (module attributes included), or None if there is none."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def resolve_internal(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    """``missing-reference`` handler for Python references to this package's own names.

    A name reached through another path than where it is defined (``equiformer_calc.surfaces.
    build_surface``, or ``relax_batch`` imported into a module) links to the page of its
    definition. A name that exists but lies outside the API pages (:data:`API_PACKAGES`; the lower
    layers such as ``graph`` or ``nn``) renders as code without a link. A name that does not exist
    is left to Sphinx, which reports it (an error under ``-n -W``).
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    module = node.get("py:module")
    klass = node.get("py:class")
    candidates = []
    if module and klass:
        candidates.append(f"{module}.{klass}.{target}")
    if module:
        candidates.append(f"{module}.{target}")
    candidates.append(target)
    # the module where the docstring holding the reference was written: names it imports or defines
    found = re.search(r"docstring of ([\w.]+)", str(getattr(node, "source", "") or ""))
    if found:  # the innermost enclosing class, function or module (a property has no __module__)
        parts = found.group(1).split(".")
        for cut in range(len(parts), 0, -1):
            documented = _import_path(".".join(parts[:cut]))
            home = documented.__name__ if inspect.ismodule(documented) else getattr(documented, "__module__", None)
            if isinstance(home, str):
                if home.startswith(PACKAGE):
                    candidates.insert(0, f"{home}.{target}")
                break
    domain = env.get_domain("py")
    for candidate in candidates:
        if not candidate.startswith(PACKAGE):
            continue
        obj = _import_path(candidate)
        if obj is None:
            continue
        canonical = canonical_name(obj) or candidate
        if not canonical.startswith(PACKAGE):
            return None
        if canonical in domain.objects:
            return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", canonical, node, contnode)
        return contnode
    # a bare name used in a docstring (``RelaxResult``): the one documented object of that kind
    kinds = _ROLE_KINDS.get(node.get("reftype"), None)
    matches = [
        name for name, entry in domain.objects.items()
        if (name == target or name.endswith("." + target)) and not entry.aliased
        and (kinds is None or entry.objtype in kinds)
    ]
    # one object documented twice (``equiformer_calc.relax`` and its home): the home wins
    homes = {canonical_name(_import_path(m)) or m for m in matches}
    if len(homes) == 1 and len(matches) > 1 and next(iter(homes)) in domain.objects:
        matches = list(homes)
    if len(matches) == 1:
        return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", matches[0], node, contnode)
    # a bare name of a module outside the API pages (``ModelPlugin`` of a private module)
    if "." not in target and not matches:
        for name, mod in list(sys.modules.items()):
            obj = getattr(mod, target, None) if name.startswith(PACKAGE + ".") else None
            if obj is not None and (canonical_name(obj) or "").startswith(PACKAGE):
                return contnode
    return None


#: Python roles -> the object types they may name
_ROLE_KINDS = {
    "func": {"function", "method"}, "meth": {"method", "function"}, "class": {"class", "exception"},
    "exc": {"exception", "class"}, "data": {"data", "attribute"}, "attr": {"attribute", "property", "data"},
    "mod": {"module"},
}


def _get_sg_image_scraper() -> Any:
    """sphinx-gallery's hook for ``image_scrapers = ("eqc_docs",)`` (a name keeps the config picklable)."""
    return png_variable_scraper


_GOOGLE_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields):\s*$")
_ATTRIBUTES = re.compile(r"^(\s*)Attributes:\s*$")


def _attributes_as_list(lines: list[str]) -> list[str]:
    """A Google-style ``Attributes:`` section as a bullet list, one item per entry (napoleon would
    read ``a / b: text`` as a name and a type)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _ATTRIBUTES.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        base = len(match.group(1))
        out.extend([f"{match.group(1)}**Attributes**", ""])
        i += 1
        item_indent = None
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if line.strip():
                item_indent = indent if item_indent is None else item_indent
                prefix = "* " if indent <= item_indent else "  "
                out.append(" " * base + prefix + line.strip())
            else:
                out.append("")
            i += 1
        out.append("")
    return out


def google_sections(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Render Google-style ``Args:`` / ``Returns:`` sections (a few docstrings use them) with
    napoleon, and only those docstrings: napoleon on every docstring would read our plain
    ``#: name: text`` attribute comments as ``type: description``."""
    if any(_ATTRIBUTES.match(line) for line in lines):
        lines[:] = _attributes_as_list(lines)
    if what in ("function", "method", "class") and any(_GOOGLE_SECTION.match(line) for line in lines):
        from sphinx.ext.napoleon import Config
        from sphinx.ext.napoleon.docstring import GoogleDocstring

        config = Config(napoleon_use_param=True, napoleon_use_rtype=True)
        lines[:] = GoogleDocstring(lines, config, app, what, name, obj).lines()


def dataclass_factories(app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None,
                        return_annotation: str | None) -> tuple[str | None, str | None] | None:
    """A dataclass field with ``default_factory`` shows as ``= <factory>`` in the signature, which is
    not Python, so Sphinx would split the signature at every comma; show ``= ...`` instead."""
    if signature and "<factory>" in signature:
        return signature.replace("<factory>", "..."), return_annotation
    return None


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-signature", dataclass_factories)
    app.connect("autodoc-process-docstring", google_sections)
    app.connect("missing-reference", resolve_internal)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
