"""Sphinx extension: the measured run time of every chapter, as MyST substitutions.

`tools/run_notebooks.py` stores the seconds a notebook took in its metadata
(``metadata.cvbook.seconds``) when it executes it. This extension reads them at build
time and defines ``{{ runtime_<stem> }}`` (e.g. ``{{ runtime_06_padim }}`` -> "45 s"),
so chapter headers, the Setup page and the teaching guide all show the one measured value.

The full profile has not been run for this book (it needs a GPU and the real datasets), so its
run times are estimates; they are written once, in :data:`FULL_ESTIMATES`, and shown through
``{{ full_estimate_<stem> }}`` in the chapter headers and the Setup page.
"""
from __future__ import annotations

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

#: The full profile's expected run time per chapter (estimates: not yet run), one place for all pages.
FULL_ESTIMATES = {
    "00_getting_started": "about the same as the tiny profile",
    "01_datasets": "about a minute once the real datasets are downloaded (about 8 GB in all, the first time)",
    "02_cam": "roughly 15 minutes on one GPU, plus the 800 MB Pets download the first time",
    "03_gradcam": "a few minutes on one GPU, plus the Pets download the first time",
    "04_camloss": "roughly 15 minutes on one GPU, plus the MNIST and Pets downloads the first time",
    "05_mobilenet": "a few minutes on one GPU",
    "06_padim": "tens of minutes on one GPU (feature extraction and the 550-dimensional Gaussians), "
                "plus the 5 GB MVTec AD download the first time",
    "07_patch_svdd": "hours per category on one GPU, most of it training",
    "08_boostlu": "most of a day on one GPU (about 26 fine-tunings of ResNet-50 at 448 px)",
}


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


def full_estimates() -> dict[str, str]:
    """``full_estimate_<stem>`` -> the full profile's estimated run time, with the word that it is one."""
    return {f"full_estimate_{stem}": f"{text} (an estimate: not yet run)" for stem, text in FULL_ESTIMATES.items()}


def _add_substitutions(app, config) -> None:
    config.myst_substitutions = {**measured_runtimes(), **full_estimates(), **(config.myst_substitutions or {})}


def setup(app):
    app.connect("config-inited", _add_substitutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
