"""Fixtures for the attack tests, reused from the suites they attack.

The browser ones come from ``tests/ui`` (a server, ``pqcall ui`` processes,
Chromium), ``server`` from ``tests/cli`` (an in-process server on SQLite).
"""

from tests.cli.conftest import server
from tests.ui.conftest import browser, pytest_runtest_call, ring_timeout_s, world

__all__ = ["browser", "pytest_runtest_call", "ring_timeout_s", "server", "world"]
