"""The device panel in a real browser: the processing switches and the device rescan.

Uses the browser fixtures of ``conftest.py`` (a server, ``pqcall ui`` for alice,
headless Chromium). Unticking a switch reaches the phone's options for the
next call and survives a reload; "Look for new devices" answers without error.
"""

from __future__ import annotations

import os

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import expect

from .conftest import UiWorld


def test_processing_switches_and_rescan(world: UiWorld) -> None:
    alice = world.open("alice")
    for testid in ("echo-cancel", "noise-suppression", "auto-gain"):
        expect(alice.get_by_test_id(testid)).to_be_checked()
    for testid in ("echo-cancel", "auto-gain", "devices-rescan"):
        with alice.expect_response("**/api/devices") as answer:
            alice.get_by_test_id(testid).click()
        assert answer.value.ok
    alice.reload()
    expect(alice.get_by_test_id("echo-cancel")).not_to_be_checked()
    expect(alice.get_by_test_id("auto-gain")).not_to_be_checked()
    expect(alice.get_by_test_id("noise-suppression")).to_be_checked()
    assert not world.uis["alice"].page_errors
