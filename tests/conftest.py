"""Shared fixtures: the handbook data set (read-only, beside the repository) and temp folders."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HANDBOOK_DIR = REPO_ROOT.parent / "shared" / "data" / "fraud-detection-handbook-simulated"


@pytest.fixture(scope="session")
def handbook_dir() -> Path:
    """The handbook data folder; tests that need it are skipped where it is absent."""
    if not (HANDBOOK_DIR / "transactions.parquet").is_file():
        pytest.skip(f"handbook data not found at {HANDBOOK_DIR}")
    return HANDBOOK_DIR
