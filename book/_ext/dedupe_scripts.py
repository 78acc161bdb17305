"""Sphinx extension: include each script once per page.

Under Jupyter Book 1, sphinx-thebe's configuration script is registered twice, so every page
declared ``const THEBE_JS_URL`` twice and the browser reported a SyntaxError. This drops exact
duplicates (same file or inline body, same attributes) from a page's scripts.
"""
from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", None) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
