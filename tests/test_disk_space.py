"""The free-disk check that runs before a new .venv is built (tools/disk_space.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import disk_space

ROOT = Path(__file__).resolve().parents[1]


def test_enough_space_returns_the_free_gib(tmp_path):
    free = disk_space.require_free(tmp_path, 0)
    assert free == pytest.approx(shutil.disk_usage(tmp_path).free / disk_space.GIB, rel=0.05)


def test_a_path_not_made_yet_is_checked_on_its_nearest_existing_parent(tmp_path):
    target = tmp_path / "not" / "yet" / ".venv"
    assert disk_space.existing_parent(target) == tmp_path
    disk_space.require_free(target, 0)
    assert not target.exists()


def test_too_little_space_stops_with_the_folder_and_the_shortfall(tmp_path):
    with pytest.raises(SystemExit, match=r"needs about 1000000\.0 GiB of free disk, but only .* GiB are free"):
        disk_space.require_free(tmp_path / ".venv", 1e6)


def test_negative_need_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="need_gib"):
        disk_space.require_free(tmp_path, -1)


def test_make_env_stops_before_pip_when_the_disk_is_short(tmp_path):
    """The Makefile runs the check before creating a new environment, and nothing is created."""
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["make", "--no-print-directory", "env", f"VENV={venv}", "VENV_GIB=1000000", f"PYTHON={sys.executable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "needs about 1000000.0 GiB of free disk" in proc.stdout + proc.stderr
    assert not venv.exists()
