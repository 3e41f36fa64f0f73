"""Sphinx configuration for orchestra's documentation."""

project = "orchestra"
author = "the orchestra developers"
copyright = "2026, the orchestra developers"  # noqa: A001
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
suppress_warnings = ["myst.xref_missing", "ref.python"]
html_theme = "alabaster"
intersphinx_mapping: dict[str, tuple[str, None]] = {}
