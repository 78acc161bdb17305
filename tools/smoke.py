"""Smoke run: every chapter's **full** profile, cut to a handful of images, on generated stand-ins.

Nothing else executes the ``else`` branch of ``if RUN.tiny`` before a reader with a GPU does,
so ``make smoke`` (part of ``make test``) runs each notebook with papermill and
``PROFILE="full", SMOKE=True`` in a throw-away world:

* a data directory holding the generated stand-ins in the real on-disk layouts
  (``oxford-iiit-pet/``, ``VOCdevkit/VOC2012/``, ``mvtec_ad/<each of the 15 categories>/``,
  ``MNIST/raw/*-ubyte``, and ``images/both.png``, a photo standing in for Grad-CAM's Figure 1 picture,
  used unverified in a smoke run only: ``utils.data.fetch_for``), so the real loaders read them;
* a temporary ``$TORCH_HOME`` holding *randomly initialised* stand-in weight files under the file
  names torchvision expects, for every model in ``utils.models.TORCHVISION_MODELS`` (never the
  user's own cache, where they would silently replace real weights);
* a temporary cache and results folder (``results/`` is never written).

Executed notebooks land in ``_build/smoke/``. A failing notebook is reported with its cell and
the error, the others still run, and the exit status is 1.

    python -m tools.smoke [--device cpu|cuda] [--output DIR] [notebooks ...]
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.run_notebooks import NOTEBOOKS, papermill_run
from utils.config import CACHE_ENV, DATA_ENV
from utils.results import RESULTS_ENV

SMOKE_OUTPUT = ROOT / "_build" / "smoke"


def write_idx(path: Path, array) -> None:
    """Write a uint8 array in MNIST's IDX format (magic 0x0801 labels, 0x0803 images)."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_stand_in_data(target: Path, seed: int = 0) -> Path:
    """The generated datasets, arranged as a data directory of real datasets; returns ``target``.

    Must run with ``$CVBOOK_CACHE`` pointing at a temporary folder (the generators write there).
    """
    import numpy as np
    from PIL import Image
    from skimage import data as skdata
    from skimage import transform

    from utils import data, synthetic

    target.mkdir(parents=True, exist_ok=True)
    (target / "oxford-iiit-pet").symlink_to(synthetic.make_localization_set(seed), target_is_directory=True)
    (target / "VOCdevkit").symlink_to(synthetic.make_multilabel_set(seed) / "VOCdevkit", target_is_directory=True)
    anomaly = synthetic.make_anomaly_set(seed)
    (target / "mvtec_ad").mkdir()
    for i, category in enumerate(data.MVTEC_CATEGORIES):  # each real name reads one generated texture
        source = anomaly / synthetic.ANOMALY_CATEGORIES[i % len(synthetic.ANOMALY_CATEGORIES)]
        (target / "mvtec_ad" / category).symlink_to(source, target_is_directory=True)
    picture = target / "images" / "both.png"   # stands in for Grad-CAM's Figure 1 photo (224 x 224 RGB)
    picture.parent.mkdir()
    cat = transform.resize(skdata.chelsea(), (224, 224), anti_aliasing=True)
    Image.fromarray((cat * 255).round().astype(np.uint8)).save(picture)
    raw = target / "MNIST" / "raw"
    raw.mkdir(parents=True)
    train_x, train_y, test_x, test_y = synthetic.make_digits(seed)
    for prefix, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", (x[:, 0] * 255).round().numpy())
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.numpy())
    return target


def write_stand_in_weights(torch_home: Path) -> list[str]:
    """Random-init state dicts for every torchvision model the book uses, saved in
    ``torch_home/hub/checkpoints`` under torchvision's file names (one file per model, linked
    under the name of each of its weight versions); returns the file names."""
    import torch
    import torchvision

    from utils.models import TORCHVISION_MODELS

    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the same stand-ins every run, so a smoke failure can be reproduced
    written = []
    for name, enum_name in TORCHVISION_MODELS.items():
        versions = list(getattr(torchvision.models, enum_name))
        num_classes = len(versions[0].meta["categories"])
        model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
        first = folder / os.path.basename(versions[0].url)
        torch.save(model.state_dict(), first)
        written.append(first.name)
        for weights in versions[1:]:
            other = folder / os.path.basename(weights.url)
            if not other.exists():
                other.symlink_to(first.name)
                written.append(other.name)
    return written


def smoke_one(path: Path, output: Path, data_dir: Path, env: dict[str, str | None], device: str,
              step_times: Path | None = None) -> str | None:
    """Run one notebook in the smoke setting; return None on success, else a one-line reason
    naming the cell (its 0-based index in the committed notebook, Markdown cells included).
    With ``step_times``, the run writes its time per training step and per image there
    (:mod:`tools.step_timer`)."""
    from papermill.exceptions import PapermillExecutionError

    from tools.step_timer import STEP_TIMES_ENV

    parameters = {"PROFILE": "full", "SMOKE": True, "DATA_DIR": str(data_dir), "DEVICE": device}
    if step_times is not None:
        env = {**env, STEP_TIMES_ENV: str(step_times)}
    try:
        papermill_run(path, output / path.name, parameters, NOTEBOOKS, env)
    except PapermillExecutionError as err:
        first_line = (err.source or "").strip().splitlines()[:1]
        sources = [c.source for c in nbformat.read(path, as_version=4).cells]
        index = sources.index(err.source) if err.source in sources else err.cell_index
        return (f"cell {index} (execution count {err.exec_count}"
                f"{': ' + first_line[0][:60] if first_line else ''}) raised {err.ename}: {err.evalue}")
    return None


def prepare_world(tmp: Path) -> tuple[Path, dict[str, str | None]]:
    """Write the stand-in data and weights under ``tmp``; return the data directory and the
    environment a smoke run needs (cache, results and ``$TORCH_HOME`` inside ``tmp``)."""
    env = {CACHE_ENV: str(tmp / "cache"), RESULTS_ENV: str(tmp / "results"),
           "TORCH_HOME": str(tmp / "torch"), DATA_ENV: None}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: v for k, v in env.items() if v is not None})
    try:
        start = time.perf_counter()
        data_dir = write_stand_in_data(tmp / "data")
        weights = write_stand_in_weights(tmp / "torch")
        print(f"smoke: stand-in data and {len(weights)} random weight files in "
              f"{time.perf_counter() - start:.0f} s ({', '.join(weights)})")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return data_dir, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument("--device", default="cpu", help="DEVICE parameter for the notebooks (cpu, cuda)")
    parser.add_argument("--output", type=Path, default=SMOKE_OUTPUT, help="where executed notebooks go")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"error: no notebook at {', '.join(missing)}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cvbook-smoke-") as tmp:
        tmp = Path(tmp)
        data_dir, env = prepare_world(tmp)
        failures = {}
        for path in paths:
            start = time.perf_counter()
            reason = smoke_one(path, args.output, data_dir, env, args.device)
            status = "ok" if reason is None else "FAILED"
            print(f"smoke: {path.name} {status} in {time.perf_counter() - start:.0f} s", flush=True)
            if reason is not None:
                failures[path.name] = reason
        shutil.rmtree(tmp / "torch", ignore_errors=True)
    for name, reason in failures.items():
        print(f"SMOKE FAILURE: notebooks/{name}: {reason} (executed copy: "
              f"{(args.output / name).relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output / name})",
              file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
