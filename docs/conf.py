"""Sphinx configuration for anypool's documentation (built by `nox -s docs`, warnings fatal)."""

from __future__ import annotations

project = "anypool"
author = "The anypool developers"
copyright = "2026, the anypool developers"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# No intersphinx: the build must work offline (CI reaches package registries only).

html_theme = "furo"
html_title = "anypool"
