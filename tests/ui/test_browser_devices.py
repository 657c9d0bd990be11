"""The device panel in a real browser: the processing switches, the device rescan, the disguise.

Uses the browser fixtures of ``conftest.py`` (a server, ``pqcall ui`` for alice
and bob, headless Chromium). Unticking a switch reaches the phone's options for
the next call and survives a reload; "Look for new devices" answers without
error; "Disguise my voice" (issue 23) survives a reload and, in the next call,
alice's page says her voice is disguised and bob's says "alice's voice is disguised".
"""

from __future__ import annotations

import os

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import expect

from .conftest import UiWorld
from .test_browser import (
    CALL_SETUP_MS,
    IN_CALL,
    add_contact,
    call,
    expect_history,
    expect_no_page_errors,
    expect_ringing,
)


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


def test_voice_disguise_chosen_then_shown_to_both_sides_of_the_call(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    choice = alice.get_by_test_id("voice-disguise")
    expect(choice).to_have_value("off")
    with alice.expect_response("**/api/devices") as answer:
        choice.select_option("low")
    assert answer.value.ok
    alice.reload()
    expect(alice.get_by_test_id("voice-disguise")).to_have_value("low")

    add_contact(alice, "bob")
    call(alice, "bob")
    expect_ringing(alice, bob)
    bob.get_by_test_id("accept").click()
    for page in (alice, bob):
        expect(page.get_by_test_id("call-state")).to_have_text(IN_CALL, timeout=CALL_SETUP_MS)
    expect(bob.get_by_test_id("peer-disguised")).to_be_visible()
    expect(bob.get_by_test_id("peer-disguised")).to_have_text("alice's voice is disguised")
    expect(alice.get_by_test_id("own-disguised")).to_be_visible()
    expect(alice.get_by_test_id("own-disguised")).to_have_text("Your voice is disguised")
    expect(alice.get_by_test_id("peer-disguised")).to_be_hidden()  # bob chose none
    expect(bob.get_by_test_id("own-disguised")).to_be_hidden()

    alice.get_by_test_id("hangup").click()
    expect_history(alice, "bob", "outgoing", "answered")
    expect(alice.get_by_test_id("own-disguised")).to_be_hidden()
    expect_no_page_errors(world)
