"""Sphinx configuration for the parallelaverage documentation."""

project = "parallelaverage"
author = "parallelaverage developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]  # formulas in statistics.md
autodoc_member_order = "bysource"
autodoc_typehints = "description"
html_theme = "alabaster"
