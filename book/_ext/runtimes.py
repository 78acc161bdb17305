"""Sphinx extension: the measured run time of every chapter, as MyST substitutions.

`tools/run_notebooks.py` stores the seconds a notebook took in its metadata
(``metadata.cvbook.seconds``) when it executes it. This extension reads them at build
time and defines ``{{ runtime_<stem> }}`` (e.g. ``{{ runtime_06_padim }}`` -> "45 s"),
so chapter headers, the Setup page and the teaching guide all show the one measured value.
"""
from __future__ import annotations

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def format_seconds(seconds: float) -> str:
    """Seconds as a reader reads them: '40 s' under two minutes, else '2.5 min' (to 0.5 min)."""
    if seconds < 120:
        return f"{max(5, 5 * round(seconds / 5)):.0f} s"
    return f"{round(2 * seconds / 60) / 2:g} min"


def measured_runtimes(folder: Path = NOTEBOOKS) -> dict[str, str]:
    """``runtime_<stem>`` -> formatted seconds, for every chapter notebook that has a stamp."""
    out = {}
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        stamp = json.loads(path.read_text()).get("metadata", {}).get("cvbook", {})
        if "seconds" in stamp:
            out[f"runtime_{path.stem}"] = format_seconds(float(stamp["seconds"]))
    return out


def _add_substitutions(app, config) -> None:
    config.myst_substitutions = {**measured_runtimes(), **(config.myst_substitutions or {})}


def setup(app):
    app.connect("config-inited", _add_substitutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
