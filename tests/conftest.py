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
