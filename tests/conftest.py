"""Shared fixtures: the optional ../shared/data set and temporary output folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDSAM3_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The curated ../shared/data folder; tests using it skip cleanly where it is absent."""
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip(f"shared data set not found at {SHARED_DATA} (set MEDSAM3_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO
