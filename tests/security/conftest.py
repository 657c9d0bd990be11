"""Fixtures for the attack tests: the browser ones reuse ``tests/ui``'s world."""

from tests.ui.conftest import browser, pytest_runtest_call, ring_timeout_s, world

__all__ = ["browser", "pytest_runtest_call", "ring_timeout_s", "world"]
