"""Shared fixtures: every test gets its own cache and results folder, never ~/.cache."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    """Point the cache and results folders at a per-test temporary directory."""
    base = tmp_path_factory.mktemp("cvbook")
    monkeypatch.setenv("CVBOOK_CACHE", str(base / "cache"))
    monkeypatch.setenv("CVBOOK_RESULTS", str(base / "results"))
    return base


@pytest.fixture()
def real_mvtec():
    """A function ``(parent, category) -> root`` finding a real MVTec-layout category in the data
    directory (``$CVBOOK_DATA/<parent>/<category>/train/good``); the test is skipped when absent."""
    from utils import config

    def find(parent: str, category: str) -> Path:
        base = config.data_dir()
        if base is None:
            pytest.skip("no data directory: set CVBOOK_DATA to run the real-data tests")
        root = (base / parent).resolve()
        if not (root / category / "train" / "good").is_dir():
            pytest.skip(f"data directory has no {Path(parent, category, 'train', 'good')}")
        return root

    return find
