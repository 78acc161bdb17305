"""Sphinx extension: serve MathJax from the built book, so formulas render without a network.

The MathJax 3 files come from the PyPI package ``sphinx-mathjax-offline`` (in requirements.txt);
only the TeX-to-CHTML bundle, its fonts and the TeX extensions it may autoload are copied into
``_static/mathjax`` (about 3 MB instead of the package's 24 MB).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from sphinx.util.fileutil import copy_asset

NEEDED = ("tex-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions")


def _package_dir() -> Path:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("the PyPI package sphinx-mathjax-offline is missing; run `make env`")
    return Path(spec.origin).parent / "static" / "mathjax"


def _use_local(app, config) -> None:
    config.mathjax_path = "mathjax/tex-chtml.js"


def _copy(app, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    source, target = _package_dir(), Path(app.outdir) / "_static" / "mathjax"
    for part in NEEDED:
        src = source / part
        if src.is_dir():
            copy_asset(str(src), str(target / part))
        else:
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            (target / part).write_bytes(src.read_bytes())


def setup(app):
    _package_dir()
    app.connect("config-inited", _use_local)
    app.connect("build-finished", _copy)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
