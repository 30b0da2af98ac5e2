"""Sphinx configuration of the histoexpr documentation."""

from __future__ import annotations

import os
import sys
import tempfile
import zlib
from importlib.metadata import version as _package_version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))
from histoexpr_docs import model_summaries  # noqa: E402

project = "histoexpr"
author = "histoexpr developers"
copyright = "2026, histoexpr developers"  # noqa: A001
release = _package_version("histoexpr")
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",  # [source] links beside every function and class
    "sphinx_copybutton",
    "sphinxcontrib.bibtex",
    "matplotlib.sphinxext.plot_directive",  # the example figure of every hx.pl page
    "histoexpr_docs",  # docs/_ext: the options of every model (models.rst), prose Returns
]
# autosummary writes its API stubs in reStructuredText, with the first suffix in source_suffix
# whose parser reads reStructuredText (it cannot tell that myst-nb reads only MyST): ".rst" comes
# first so that the stubs are generated/*.rst and rendered, not shown as raw text in .md files.
autosummary_generate = True
templates_path = ["_templates"]

# the pages of hx.tl.fit, predict, cross_validate and evaluate link to every model's options
# (docs/_templates/autosummary/function.rst, docs/models.rst)
autosummary_context = model_summaries()
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_custom_sections = [("Attributes", "params_style")]
myst_enable_extensions = ["colon_fence", "dollarmath"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints"]

# Tutorials are executed when the docs are built (CI builds them), at the small size that the
# notebooks choose when HISTOEXPR_TUTORIAL_SIZE is unset. Their outputs are cached
# (docs/_build/.jupyter_cache): a rebuild re-runs only the notebooks that changed.
nb_execution_mode = os.environ.get("HISTOEXPR_NB_EXECUTION", "cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True

# Links to the documentation of the libraries histoexpr works with. Built without internet, each
# inventory falls back on an empty one (written below), so the build passes with -W and the
# names of those libraries are shown unlinked; with internet they link to the pages.
_EMPTY_INVENTORY = Path(tempfile.gettempdir()) / "histoexpr-docs-empty-objects.inv"
_EMPTY_INVENTORY.write_bytes(
    b"# Sphinx inventory version 2\n# Project: none\n# Version: 0\n"
    b"# The remainder of this file is compressed using zlib.\n" + zlib.compress(b"")
)
_INVENTORIES = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "pandas": "https://pandas.pydata.org/docs",
    "matplotlib": "https://matplotlib.org/stable",
    "dask": "https://docs.dask.org/en/stable",
    "torch": "https://docs.pytorch.org/docs/stable",
    "anndata": "https://anndata.readthedocs.io/en/stable",
    "scanpy": "https://scanpy.readthedocs.io/en/stable",
    "squidpy": "https://squidpy.readthedocs.io/en/stable",
    "spatialdata": "https://spatialdata.scverse.org/en/stable",
}
intersphinx_mapping = {name: (url, (None, str(_EMPTY_INVENTORY)))
                       for name, url in _INVENTORIES.items()}
intersphinx_timeout = 10

# the methods histoexpr implements and the software it builds on, with their DOIs
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "unsrt"
bibtex_reference_style = "author_year"

# example figures of the hx.pl pages: ``.. plot::`` blocks in the docstrings' Examples
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 80)]
plot_pre_code = ("import matplotlib.pyplot as plt\nimport histoexpr as hx\n"
                 "hx.settings.progress_bar = False")
plot_rcparams = {"figure.figsize": (5, 4)}

# copy buttons leave out the prompts of interactive examples
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

html_theme = "sphinx_book_theme"
html_title = "histoexpr"
html_theme_options = {"repository_url": "https://github.com/histoexpr/histoexpr"}
