r"""Sphinx configuration of the deepinv-deq documentation.

Builds offline: no intersphinx. References to deepinv and PyTorch objects in docstrings
(``:class:`deepinv.physics.Tomography```) are turned into links to their online documentation by
:func:`_external_reference` below; ``:deepinv:`...``` and ``:torch:`...``` roles do the same in pages.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import warnings
from pathlib import Path

from docutils import nodes
from sphinx.ext import autosummary

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # import the checkout even without `pip install -e .`

import deepinv_deq  # noqa: E402
import torch  # noqa: E402

# The gallery runs in this process: one torch thread, as the command line does. Torch's default
# (one thread per core) made the build 12x slower when another process kept a core busy (issue 20).
torch.set_num_threads(1)

# -- project --------------------------------------------------------------------------------------
project = "deepinv-deq"
author = "deepinv-deq developers"
copyright = "2026, deepinv-deq developers"
release = deepinv_deq.__version__
version = release

# -- extensions -----------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.extlinks",
    "sphinx.ext.doctest",
    "sphinx_gallery.gen_gallery",
    "sphinxcontrib.bibtex",
]
# citations: :footcite:`key` in docstrings and pages, keys in docs/refs.bib
bibtex_bibfiles = ["refs.bib"]
bibtex_default_style = "unsrt"
bibtex_reference_style = "author_year"
bibtex_foot_reference_style = "foot"
# MathJax served from the built site, not from a CDN, so formulas render offline too
if importlib.util.find_spec("sphinx-mathjax-offline") is not None:
    extensions.append("sphinx-mathjax-offline")
try:  # part of the `docs` extra; optional for a bare build
    import sphinx_copybutton  # noqa: F401

    extensions.append("sphinx_copybutton")
except ImportError:  # pragma: no cover
    pass

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "auto_examples/*.ipynb",
    "**.ipynb_checkpoints",
    # result files (claims.rst is included by results.rst, not a page of its own)
    "_static",
]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"

# deepinv's docstrings (and ours, which follow them) separate the description from the example
# with |sep|.
rst_prolog = """
.. |sep| raw:: html

   <hr>

"""

# -- generated includes ----------------------------------------------------------------------------
# The size-preset table of the command line, from deepinv_deq/experiments/configs.py (the same text
# as `deepinv-deq --help`); written only when it changes, so rebuilds stay incremental.
from deepinv_deq.experiments.cli import preset_table  # noqa: E402

_GENERATED = Path(__file__).resolve().parent / "_generated"
_GENERATED.mkdir(exist_ok=True)
_presets = _GENERATED / "presets.rst"
if not _presets.exists() or _presets.read_text() != preset_table("rst"):
    _presets.write_text(preset_table("rst"))
exclude_patterns.append("_generated")

# -- autodoc / autosummary ------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # the :param type name: fields already give the types
autodoc_class_signature = "mixed"
# signatures show the defaults as written in the code (``1e-4``, not ``0.0001``)
autodoc_preserve_defaults = True
#: torch.nn.Module plumbing that our classes override but users never call
_HIDDEN_MEMBERS = {"extra_repr"}
add_module_names = False

# The one-line summaries of the autosummary tables are cut from the docstrings' first sentence;
# a :footcite: there would point to a bibliography the table does not have: drop it from summaries.
_extract_summary = autosummary.extract_summary


def _summary_without_citations(doc, document):
    # the role as written, or as the footnote reference it has become by then
    pattern = r"\s*(:footcite(?::\w+)?:`[^`]*`|\[#[\w:-]+\]_)"
    return re.sub(pattern, "", _extract_summary(doc, document))


autosummary.extract_summary = _summary_without_citations

# -- links to deepinv and PyTorch (offline: plain external links) ---------------------------------
DEEPINV_DOCS = "https://deepinv.github.io/deepinv"
TORCH_DOCS = "https://docs.pytorch.org/docs/stable"
extlinks = {
    "deepinv": (DEEPINV_DOCS + "/api/stubs/%s.html", "%s"),
    "deepinv_guide": (DEEPINV_DOCS + "/user_guide/%s.html", "%s"),
    "torch": (TORCH_DOCS + "/generated/%s.html", "%s"),
}


def _external_url(target: str, reftype: str) -> str | None:
    """The online documentation page of a deepinv or torch object, or None."""
    if target.startswith("deepinv.") and not target.startswith("deepinv_deq"):
        if reftype == "mod":
            return f"{DEEPINV_DOCS}/api/{target}.html"
        if reftype in ("meth", "attr"):
            owner = target.rsplit(".", 1)[0]
            return f"{DEEPINV_DOCS}/api/stubs/{owner}.html#{target}"
        return f"{DEEPINV_DOCS}/api/stubs/{target}.html"
    if target == "torch.no_grad":
        return f"{TORCH_DOCS}/generated/torch.no_grad.html"
    if target.startswith("torch."):
        if reftype == "mod":
            return (
                f"{TORCH_DOCS}/{target[len('torch.') :]}.html" if target.count(".") == 1 else None
            )
        if reftype in ("meth", "attr"):
            owner = target.rsplit(".", 1)[0]
            return f"{TORCH_DOCS}/generated/{owner}.html#{target}"
        return f"{TORCH_DOCS}/generated/{target}.html"
    return None


_BUILTIN_EXCEPTIONS = {"ValueError", "RuntimeError", "RuntimeWarning", "TypeError", "UserWarning"}


def _external_reference(app, env, node, contnode):
    """Resolve ``:class:`deepinv.X``` and ``:class:`torch.X``` to their online documentation."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target in _BUILTIN_EXCEPTIONS:
        url = f"https://docs.python.org/3/library/exceptions.html#{target}"
    else:
        url = _external_url(target, node.get("reftype", ""))
    if url is None:
        return None
    ref = nodes.reference("", "", internal=False, refuri=url, reftitle=target)
    ref.append(contnode)
    return ref


def _skip_member(app, what, name, obj, skip, options):
    return True if name in _HIDDEN_MEMBERS else None


def _signature(app, what, name, obj, options, signature, return_annotation):
    """Drop ``**unknown`` from signatures: it only collects misspelled options to reject them with a
    clear error, it accepts nothing. Show the plain default of an option marked with
    ``default(...)`` (the marker tells the code whether the user passed the option; with
    ``autodoc_preserve_defaults`` the source text ``default(1.0)`` would be shown)."""
    if signature and "**unknown" in signature:
        signature = signature.replace(", **unknown", "").replace("(**unknown)", "()")
    if signature:
        signature = re.sub(r"\bdefault\(([^()]*)\)", r"\1", signature)
    return signature, return_annotation


def setup(app):
    app.connect("missing-reference", _external_reference)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-signature", _signature)


# -- sphinx-gallery -------------------------------------------------------------------------------
# Every examples/demo_*.py is executed during the build; a failing example fails the build.
warnings.filterwarnings("ignore", category=UserWarning, message="Matplotlib is currently using agg")
# deprecation notices of torch and deepinv that the examples cannot act on (never a DEQ warning)
warnings.filterwarnings(
    "ignore", category=UserWarning, message="torch.meshgrid: in an upcoming release"
)
warnings.filterwarnings(
    "ignore", category=DeprecationWarning, message="The tuple format for dataset"
)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # docs/_gallery_order.py
sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/demo_",
    "ignore_pattern": r"__init__\.py",
    "abort_on_example_error": True,
    # DEEPINV_DEQ_DOCS_PLOT_GALLERY=0 builds the pages without running the examples (quick drafts)
    "plot_gallery": str(
        os.environ.get("DEEPINV_DEQ_DOCS_PLOT_GALLERY", "1").lower() not in ("0", "false", "no")
    ),
    # sections from basic to advanced, then examples in the order of docs/_gallery_order.py
    "subsection_order": ["../examples/basics", "../examples/training", "../examples/advanced"],
    "within_subsection_order": "_gallery_order.ExampleOrder",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("deepinv_deq",),
    "remove_config_comments": True,
    "min_reported_time": 0,
    "write_computation_times": True,
    "matplotlib_animations": False,
    "thumbnail_size": (320, 224),
}

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"deepinv-deq {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "icon_links": [
        {
            "name": "deepinv",
            "url": DEEPINV_DOCS,
            "icon": "fa-solid fa-book",
            "type": "fontawesome",
        },
    ],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "user_guide": [], "api": [], "results": []}

# -- doctest ---------------------------------------------------------------------------------------
doctest_global_setup = "import torch\ntorch.manual_seed(0)"
