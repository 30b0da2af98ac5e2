"""Sphinx configuration of the histoexpr documentation."""

from __future__ import annotations

import os
import sys
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

# Tutorials are executed at every build (CI builds the docs), at the small size that the
# notebooks choose when HISTOEXPR_TUTORIAL_SIZE is unset.
nb_execution_mode = os.environ.get("HISTOEXPR_NB_EXECUTION", "force")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True

html_theme = "sphinx_book_theme"
html_title = "histoexpr"
html_theme_options = {"repository_url": "https://github.com/histoexpr/histoexpr"}
