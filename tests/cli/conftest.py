"""Fixtures shared by the in-process CLI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..server.conftest import RunningServer, make_settings, run_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real signaling server in this process (SQLite in ``tmp_path``)."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(settings) as running:
        yield running
