"""The browser UI is usable with the keyboard alone, at 200% zoom, and by name.

Issue 6, item 7 ("keyboard-usable, readable at 200% zoom") and item 5
("missed calls visible on return"), checked in headless Chromium with the
fixtures of ``conftest.py``: an unlock, a call answered and a hang-up with keys
only; the setup screen, the ready screen, the ringing and the call at a
640x400 CSS-pixel viewport (a 1280x800 window at 200% zoom) without sideways
scrolling; every input, select and button on the setup, unlock and ready
screens with an accessible name (checked along the way); a missed call counted
on the page until it is marked seen, also after a reload.
"""

from __future__ import annotations

import os

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import Page, expect

from tests.cli.helpers import PASSPHRASE

from .conftest import UiWorld
from .test_browser import (
    CALL_SETUP_MS,
    IN_CALL,
    MISSED_MS,
    MISSED_RING_TIMEOUT_S,
    add_contact,
    call,
    expect_history,
    expect_no_page_errors,
    expect_ringing,
)

ZOOMED = (640, 400)  # CSS pixels of a 1280x800 window at 200% zoom
MAX_TABS = 40  # Tab presses allowed to reach a control

ACTIVE_TESTID = "document.activeElement?.dataset?.testid ?? null"

# Overflow sideways: the document is wider than the window.
OVERFLOW = "document.documentElement.scrollWidth - document.documentElement.clientWidth"

# Every input, select, textarea and button in the document that has no
# accessible name, as "tag#id" strings (hidden inputs do not count).
UNNAMED = """() => {
  const named = (el) => {
    if ((el.getAttribute("aria-label") || "").trim()) return true;
    const ids = (el.getAttribute("aria-labelledby") || "").split(/\\s+/).filter(Boolean);
    if (ids.some((id) => (document.getElementById(id)?.textContent || "").trim())) return true;
    if (el.tagName === "BUTTON") return (el.textContent || "").trim() !== "";
    if (el.closest("label") && (el.closest("label").textContent || "").trim()) return true;
    return el.id !== "" && [...document.querySelectorAll("label[for]")].some(
      (label) => label.htmlFor === el.id && (label.textContent || "").trim());
  };
  return [...document.querySelectorAll("input, select, textarea, button")]
    .filter((el) => el.type !== "hidden" && !named(el))
    .map((el) => `${el.tagName.toLowerCase()}#${el.id || "?"}[${el.dataset.testid || ""}]`);
}"""


def active_testid(page: Page) -> str | None:
    value = page.evaluate(ACTIVE_TESTID)
    return value if isinstance(value, str) else None


def tab_to(page: Page, testid: str) -> None:
    """Press Tab until the control ``testid`` has the focus (it may have it already)."""
    for _ in range(MAX_TABS):
        if active_testid(page) == testid:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{MAX_TABS} Tab presses did not reach {testid}")


def expect_focus(page: Page, testid: str) -> None:
    """The control ``testid`` gets the keyboard focus (soon)."""
    page.wait_for_function(f"{ACTIVE_TESTID} === {testid!r}")


def expect_no_overflow(page: Page, where: str) -> None:
    overflow = page.evaluate(OVERFLOW)
    assert overflow <= 0, f"{where}: the page scrolls sideways by {overflow} CSS pixels"


def expect_fits(page: Page, testid: str) -> None:
    """``testid`` is visible and, scrolled to, wholly inside the window."""
    control = page.get_by_test_id(testid)
    expect(control).to_be_visible()
    control.scroll_into_view_if_needed()
    expect(control).to_be_in_viewport(ratio=1)


def expect_all_named(page: Page, where: str) -> None:
    unnamed = page.evaluate(UNNAMED)
    assert unnamed == [], f"{where}: controls without an accessible name: {unnamed}"


def test_call_answered_and_hung_up_with_the_keyboard(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob", unlock=False)
    expect(bob.get_by_test_id("unlock-passphrase")).to_be_visible()
    expect_all_named(bob, "unlock screen")

    # bob unlocks: the focus starts in the passphrase field, Enter submits
    expect_focus(bob, "unlock-passphrase")
    bob.keyboard.type(PASSPHRASE)
    bob.keyboard.press("Enter")
    expect(bob.get_by_test_id("connection")).to_have_text("online")

    # alice adds bob and calls him: type, Enter, Tab to the call button, Enter
    alice.get_by_test_id("contact-search").focus()
    alice.keyboard.type("bob")
    alice.keyboard.press("Enter")
    expect(alice.get_by_test_id("contact-bob")).to_be_visible()
    expect_all_named(alice, "ready screen with a contact")
    tab_to(alice, "call-bob")
    alice.keyboard.press("Enter")
    expect_ringing(alice, bob)

    # bob's page rings with the focus on Accept: Enter answers
    expect_focus(bob, "accept")
    bob.keyboard.press("Enter")
    for page in (alice, bob):
        expect(page.get_by_test_id("call-state")).to_have_text(IN_CALL, timeout=CALL_SETUP_MS)

    # and Tab to Hang up, Enter ends it
    tab_to(bob, "hangup")
    bob.keyboard.press("Enter")
    expect_history(bob, "alice", "incoming", "answered")
    expect_history(alice, "bob", "outgoing", "answered")
    expect_no_page_errors(world)


def test_readable_at_200_percent_zoom(world: UiWorld) -> None:
    world.homes["carol"] = world.base / "carol"  # no account yet: the setup screen
    carol = world.open(
        "carol", unlock=False, viewport=ZOOMED, device_scale_factor=2, sample="alice"
    )
    expect(carol.get_by_test_id("setup-name")).to_be_visible()
    expect_all_named(carol, "setup screen")
    expect_no_overflow(carol, "the setup screen")
    expect_fits(carol, "setup-submit")

    alice = world.open("alice", viewport=ZOOMED, device_scale_factor=2)
    bob = world.open("bob", viewport=ZOOMED, device_scale_factor=2)
    add_contact(alice, "bob")
    expect_no_overflow(alice, "alice's ready screen with a contact")
    expect_no_overflow(bob, "bob's ready screen")

    call(alice, "bob")
    expect_ringing(alice, bob)
    expect_no_overflow(bob, "bob's page ringing")
    expect(bob.get_by_test_id("accept")).to_be_in_viewport(ratio=1)  # no scrolling to answer
    expect(bob.get_by_test_id("reject")).to_be_in_viewport(ratio=1)

    bob.get_by_test_id("accept").click()
    for page, who in ((alice, "alice"), (bob, "bob")):
        expect(page.get_by_test_id("call-state")).to_have_text(IN_CALL, timeout=CALL_SETUP_MS)
        for testid in ("sas", "sas-match", "hangup"):
            expect_fits(page, testid)
        expect_no_overflow(page, f"{who}'s page in the call")
    bob.get_by_test_id("hangup").click()
    expect_history(alice, "bob", "outgoing", "answered")
    expect_no_page_errors(world)


@pytest.mark.parametrize("ring_timeout_s", [MISSED_RING_TIMEOUT_S])
def test_missed_call_shown_until_seen(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    add_contact(alice, "bob")
    call(alice, "bob")
    expect_ringing(alice, bob)
    expect(bob.get_by_test_id("incoming")).to_be_hidden(timeout=MISSED_MS)

    count = bob.get_by_test_id("missed-count")
    expect(count).to_have_text("1")
    expect(count).to_be_visible()
    bob.reload()  # bob comes back to the page later: still there
    expect(bob.get_by_test_id("me")).to_have_text("bob")
    expect(count).to_have_text("1")
    expect(count).to_be_visible()
    expect_history(bob, "alice", "incoming", "missed")

    bob.get_by_test_id("missed-seen").click()
    expect(count).to_be_hidden()
    bob.reload()
    expect(bob.get_by_test_id("me")).to_have_text("bob")
    expect(bob.get_by_test_id("history-row").first).to_be_visible()
    expect(count).to_be_hidden()
    expect_no_page_errors(world)
