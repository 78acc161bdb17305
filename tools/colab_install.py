"""Install the book's requirements on Google Colab, keeping Colab's own torch when it is recent enough.

Called by the setup cell of every chapter after it clones the repository on Colab. Colab ships
a CUDA build of torch and torchvision; re-installing the pinned ``torch==2.14.1`` would download
gigabytes and restart the runtime, so when Colab's torch is at least :data:`MIN_TORCH` its torch
and torchvision are kept and only the other pins are installed. Older runtimes get the pins.

    python tools/colab_install.py [requirements.txt]
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

MIN_TORCH = (2, 4)
TORCH_PACKAGES = ("torch", "torchvision")


def version_tuple(version: str) -> tuple[int, int]:
    """'2.9.0+cu126' -> (2, 9)."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def requirements_for(lines: list[str], torch_version: str | None) -> list[str]:
    """The requirement lines to install given the torch already present (None: no torch)."""
    keep_torch = torch_version is not None and version_tuple(torch_version) >= MIN_TORCH
    out = []
    for line in lines:
        name = line.split("#")[0].strip().split("==")[0].split(">")[0].split("<")[0].strip().lower()
        if keep_torch and name in TORCH_PACKAGES:
            continue
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "requirements.txt"
    try:
        import torch
        version = torch.__version__
    except ImportError:
        version = None
    lines = requirements_for(path.read_text().splitlines(), version)
    kept = "keeping Colab's torch " + version if version and len(lines) < len(path.read_text().splitlines()) else ""
    print(f"installing the book's requirements{'; ' + kept if kept else ''}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as tmp:
        tmp.write("\n".join(lines) + "\n")
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", "-r", tmp.name])


if __name__ == "__main__":
    sys.exit(main())
