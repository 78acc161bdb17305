"""Sphinx extension: the measured run time of every chapter, as MyST substitutions.

`tools/run_notebooks.py` stores the seconds a notebook took in its metadata
(``metadata.cvbook.seconds``) when it executes it. This extension reads them at build
time and defines ``{{ runtime_<stem> }}`` (e.g. ``{{ runtime_06_padim }}`` -> "45 s"),
so chapter headers, the Setup page and the teaching guide all show the one measured value.

The full profile has not been run for this book (it needs a GPU and the real datasets), so its
run times are estimates; they are written once, in :data:`FULL_ESTIMATES`, and shown through
``{{ full_estimate_<stem> }}`` in the chapter headers and the Setup page. Once a GPU check has
been recorded (``results/gpu-check.json``, written by ``python -m tools.gpu_check
--write-results``), a chapter whose full-profile work is counted in :data:`FULL_WORKLOAD` gets
an estimate extrapolated from that run's time per training step and per image instead, and
says so; the others keep their estimate.
"""
from __future__ import annotations

import json
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
GPU_CHECK = NOTEBOOKS.parent / "results" / "gpu-check.json"

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


#: The full profile's work per chapter, counted from its settings and the datasets' sizes:
#: training steps and images scored without gradients (a training step's images are in its
#: time). Multiplied by a GPU check's smoke-run medians (time per step, per image).
FULL_WORKLOAD = {
    # PaDiM: no training. Images through the backbone: every MVTec AD image (3629 train + 1725
    # test, the dataset paper's Table 1) for R18-Rd100 and WR50-Rd550, the ablation's five
    # categories once more (carpet, grid, bottle, hazelnut, screw: 1464 train + 548 test) and
    # the demonstration category (carpet: 280 + 117).
    "06_padim": {"steps": 0, "images": 2 * (3629 + 1725) + (1464 + 548) + (280 + 117)},
    # BoostLU: 26 trainings (8 methods x 3 seeds, random labels, "ignore unobserved") of 10 epochs
    # of ceil(0.8 x 5717 / 16) = 286 steps (VOC2012 train); per training 10 validations of the
    # other 1143 train images; 47 passes over the 5823 VOC2012 val images (test mAP and maps).
    "08_boostlu": {"steps": 26 * 10 * 286, "images": 26 * 10 * 1143 + 47 * 5823},
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


def extrapolated(check: dict) -> dict[str, str]:
    """``stem`` -> the full profile's run time extrapolated from a GPU check's smoke timings, for
    every chapter of :data:`FULL_WORKLOAD` whose smoke run measured what its work needs."""
    out = {}
    for stem, work in FULL_WORKLOAD.items():
        row = check.get("chapters", {}).get(stem, {})
        per_step, per_image = row.get("seconds_per_step"), row.get("seconds_per_image")
        if (work["steps"] and per_step is None) or (work["images"] and per_image is None):
            continue
        seconds = work["steps"] * (per_step or 0.0) + work["images"] * (per_image or 0.0)
        out[stem] = (f"about {format_seconds(seconds)} on one {check['device']} (extrapolated from "
                     f"the GPU check of {check['date']}: time per training step and per image of "
                     "its smoke run, times the full profile's steps and images)")
    return out


def full_estimates(check_path: Path = GPU_CHECK) -> dict[str, str]:
    """``full_estimate_<stem>`` -> the full profile's run time: extrapolated from a recorded GPU
    check where possible (:func:`extrapolated`), else the estimate, with the word that it is one."""
    measured = extrapolated(json.loads(check_path.read_text())) if check_path.exists() else {}
    return {f"full_estimate_{stem}": measured.get(stem, f"{text} (an estimate: not yet run)")
            for stem, text in FULL_ESTIMATES.items()}


def _add_substitutions(app, config) -> None:
    config.myst_substitutions = {**measured_runtimes(), **full_estimates(), **(config.myst_substitutions or {})}


def setup(app):
    app.connect("config-inited", _add_substitutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
