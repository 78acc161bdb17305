"""Execute the chapter notebooks whose source or parameters changed since their last run.

Used by ``make book``. Each executed notebook stores, in its metadata under ``cvbook``,
the SHA-256 of its cells' sources and the profile it ran with; a notebook is executed
again (with papermill, in place) only when either differs, or with ``--force``.

    python -m utils.run_notebooks [--profile tiny|full] [--force] [notebooks ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import nbformat

from .config import DATA_ENV, get_profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SKIP_TAGS = {"injected-parameters"}


def source_digest(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the cells' types and sources (papermill's injected parameters excluded)."""
    cells = [(c.cell_type, c.source) for c in nb.cells
             if not SKIP_TAGS & set(c.get("metadata", {}).get("tags", []))]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()


def needs_run(path: Path, profile: str) -> bool:
    """True when ``path`` was never executed by this tool, or its sources or profile changed."""
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get("cvbook", {})
    return stamp.get("source_sha256") != source_digest(nb) or stamp.get("profile") != profile


def execute(path: Path, profile: str) -> float:
    """Run ``path`` in place with papermill (cwd = its folder); return the seconds taken."""
    import papermill

    if profile == "tiny":  # committed tiny outputs never depend on a local data directory
        os.environ.pop(DATA_ENV, None)
    parameters = {} if profile == "tiny" else {"PROFILE": profile}
    start = time.perf_counter()
    papermill.execute_notebook(str(path), str(path), parameters=parameters, cwd=str(path.parent),
                               kernel_name="python3", progress_bar=False)
    nb = nbformat.read(path, as_version=4)
    for key in ("input_path", "output_path"):  # keep machine paths out of the committed file
        nb.metadata.get("papermill", {})[key] = f"notebooks/{path.name}"
    nb.metadata["cvbook"] = {"source_sha256": source_digest(nb), "profile": profile}
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--force", action="store_true", help="execute even when nothing changed")
    args = parser.parse_args(argv)
    get_profile(args.profile)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        if not path.is_file():
            print(f"error: no notebook at {path}", file=sys.stderr)
            return 2
        if args.force or needs_run(path, args.profile):
            seconds = execute(path, args.profile)
            print(f"executed {path.name} ({args.profile}) in {seconds:.0f} s")
        else:
            print(f"up to date: {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
