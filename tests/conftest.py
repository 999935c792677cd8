"""Shared fixtures: the real-data folder and temporary output folders."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = (PROJECT_ROOT / ".." / "shared" / "data" / "real").resolve()


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Path to ``../shared/data/real``; skips the test with a reason when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not available at {REAL_DATA} (tests that need it are skipped)")
    return REAL_DATA


def real_path(*parts: str) -> Path:
    """A path under the real-data folder, skipping the calling test when it is missing."""
    path = REAL_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data file not available: {path}")
    return path
