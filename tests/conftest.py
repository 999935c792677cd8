"""Shared fixtures: the real-data folder and temporary output folders."""

from __future__ import annotations

import multiprocessing.process
import socket
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


@pytest.fixture
def offline(monkeypatch):
    """Record (and refuse) any network connection or worker process; the test fails at teardown
    if there was one, even where the library swallowed the error (usage statistics do)."""
    attempts: list[str] = []

    def no_net(*args, **kwargs):
        attempts.append(f"network: {args[1:] or kwargs}")
        raise ConnectionRefusedError("network access attempted in an offline test")

    def no_process(self, *args, **kwargs):
        attempts.append(f"process: {self!r}")
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(socket.socket, "connect", no_net)
    monkeypatch.setattr(socket, "create_connection", no_net)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_process)
    try:
        import requests
        monkeypatch.setattr(requests.Session, "request", no_net)
    except ImportError:
        pass
    yield attempts
    assert attempts == []
