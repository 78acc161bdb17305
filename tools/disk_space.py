"""Stop before a long install that cannot fit on the disk, with a message that says so.

``make env`` builds ``.venv`` from requirements.txt; on x86_64 the pinned torch is a CUDA build
and the finished environment takes about 6.7 GiB. When the disk fills half-way through, pip
stops with ``OSError: [Errno 28]`` after a minute and leaves a broken environment behind; this
check runs first (system Python, standard library only) and names the folder and the shortfall.

    python3 tools/disk_space.py PATH GIB
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

GIB = 1024**3


def existing_parent(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing parent (where it will be made)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def require_free(path: str | Path, need_gib: float) -> float:
    """Free space in GiB on the filesystem that holds (or will hold) ``path``.

    Raises ``SystemExit`` with a readable message when fewer than ``need_gib`` GiB are free.
    """
    if need_gib < 0:
        raise ValueError(f"need_gib must be >= 0, got {need_gib}")
    where = existing_parent(Path(path))
    free_gib = shutil.disk_usage(where).free / GIB
    if free_gib < need_gib:
        raise SystemExit(
            f"ERROR: {Path(path)} needs about {need_gib:.1f} GiB of free disk, but only "
            f"{free_gib:.1f} GiB are free on the filesystem of {where}. Free some space "
            "(old clones, caches, _build/) and run the command again.")
    return free_gib


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit("usage: python3 tools/disk_space.py PATH GIB")
    path, need_gib = argv[0], float(argv[1])
    free_gib = require_free(path, need_gib)
    print(f"=== {free_gib:.1f} GiB free for {path} (needs about {need_gib:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
