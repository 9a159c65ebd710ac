"""Sphinx configuration of the equiformer-calc documentation.

Build: ``python -m sphinx -W --keep-going -n docs docs/_build/html`` (README: "Documentation"), or
build and serve with ``python docs/serve.py``. The API reference, the command-line reference and the
model cards are generated at build time by ``docs/_ext/eqc_docs.py``; the tutorials in
``docs/tutorials-src/`` are executed by sphinx-gallery on the shipped checkpoints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout being built, not an installed copy
sys.path.insert(0, str(DOCS / "_ext"))

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tutorials: small systems, one thread is fastest

project = "equiformer-calc"
author = "the equiformer-calc developers"
copyright = "2026, the equiformer-calc developers"
from equiformer_calc import __version__ as release  # noqa: E402

version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx_gallery.gen_gallery",
    "eqc_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "tutorials-src/README.txt", "**/GALLERY_HEADER.rst", "tutorials/*.ipynb",
                    "tutorials/*.py", "tutorials/*.zip", "tutorials/*.json", "tutorials/*.md5"]
suppress_warnings: list[str] = []

# ----------------------------------------------------------------------------------- MyST
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4  # "#reliability-what-is-guaranteed"-style links to headings

# -------------------------------------------------------------------------------- autodoc
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = False
autodoc_default_options = {"undoc-members": False}
autoclass_content = "both"
autodoc_inherit_docstrings = False  # not torch.nn.Module's docstrings under our classes
python_use_unqualified_type_names = True

# Names that belong to other projects (the packages our signatures take and return, and the standard
# library). Their documentation is not reachable offline (the build may not use the network), so
# references to them are left unresolved on purpose; every name of our own must resolve (-n).
_EXTERNAL = (
    "ase", "numpy", "torch", "scipy", "pymatgen", "e3nn", "matplotlib", "dask", "distributed", "phonopy",
    "fastapi", "starlette", "collections", "pathlib", "os", "typing", "concurrent",
)
nitpick_ignore_regex = [(r"py:.*", rf"({'|'.join(_EXTERNAL)})(\..*)?")]

# ------------------------------------------------------------------------- sphinx-gallery
sphinx_gallery_conf = {
    "examples_dirs": "tutorials-src",
    "gallery_dirs": "tutorials",
    "filename_pattern": r"/tutorial_",
    "ignore_pattern": r"__init__\.py",
    "image_scrapers": ("matplotlib", "eqc_docs"),  # eqc_docs: PNG files a tutorial names
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "plot_gallery": "True",
    "show_memory": False,
    "show_signature": False,
    "min_reported_time": 1e9,
    "capture_repr": (),
    "matplotlib_animations": False,
    "within_subsection_order": "FileNameSortKey",
    # its timing pages load CSS/JS from a CDN: the site must work offline
    "write_computation_times": False,
    # tutorials run again only when their source changed, unless asked (tests/docs asks: a change of
    # the package must re-execute them)
    "run_stale_examples": os.environ.get("EQUIFORMER_CALC_DOCS_RERUN_TUTORIALS") == "1",
}

# ------------------------------------------------------------------------------------ HTML
html_theme = "furo"
html_title = f"equiformer-calc {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {"navigation_with_keys": True}
html_last_updated_fmt = None
