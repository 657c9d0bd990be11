"""The pictures in ``docs/screenshots/``, taken from real pages in Chromium.

Idle (contacts and a history with "Call back"), ringing, in a call with the
peer muted, reconnecting (the peer's process stopped for a moment), and a
changed key (the warning, and the safety-number panel with the new number).
Each state is checked before it is pictured, so this is also a test.

``scripts/screenshots.py`` runs it with ``PQCALL_SCREENSHOTS=docs/screenshots``
to regenerate the pictures; otherwise (``make test``) they go to the test's
temporary folder and the checkout is left alone. Viewport 1000x700 CSS pixels.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import Locator, Page, expect

from pqcall.client.contacts import Contacts
from pqcall.client.home import Home
from pqcall.crypto.identity import IdentityPrivateKey
from tests.harness import TIMEOUT_SCALE

from .conftest import UiWorld
from .test_browser import (
    CALL_SETUP_MS,
    DASH,
    DIGIT,
    IN_CALL,
    SAFETY_NUMBER,
    add_contact,
    call,
    expect_history,
    expect_no_page_errors,
    expect_ringing,
)

SCREENSHOTS_ENV = "PQCALL_SCREENSHOTS"
"""Folder the pictures go to (scripts/screenshots.py sets docs/screenshots)."""
RECONNECTING_MS = 8_000 * TIMEOUT_SCALE  # the page says "reconnecting" within 2 s; slack for load
RECOVERED_MS = 15_000 * TIMEOUT_SCALE  # audio flows again after the peer's process resumes


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shoot(page: Page, folder: Path, name: str, *, scroll_to: Locator | None = None) -> None:
    """Save the viewport as ``NAME.png``: from the top, or with ``scroll_to`` in view."""
    if scroll_to is None:
        page.evaluate("window.scrollTo(0, 0)")  # from the header down, as a person sees it
    else:
        scroll_to.scroll_into_view_if_needed()
    page.evaluate("document.activeElement?.blur()")  # no focus ring in the picture
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert path.stat().st_size > 0


def test_call_screens(world: UiWorld, out: Path) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    add_contact(alice, "bob")
    call(alice, "bob")  # one declined call first: the history has a row
    expect_ringing(alice, bob)
    bob.get_by_test_id("reject").click()
    expect_history(alice, "bob", "outgoing", "declined")

    call(alice, "bob")
    expect_ringing(alice, bob)
    expect(bob).to_have_title(f"alice is calling {DASH} pqcall")
    shoot(bob, out, "ringing")

    bob.get_by_test_id("accept").click()
    for page in (alice, bob):
        expect(page.get_by_test_id("call-state")).to_have_text(IN_CALL, timeout=CALL_SETUP_MS)
    expect(alice.get_by_test_id("stat-rtt")).to_contain_text(DIGIT)
    bob.get_by_test_id("mute").click()
    expect(alice.get_by_test_id("peer-muted")).to_be_visible()
    expect(alice.get_by_test_id("peer-muted")).to_have_text("bob muted their microphone")
    shoot(alice, out, "in-call")
    bob.get_by_test_id("mute").click()
    expect(alice.get_by_test_id("peer-muted")).to_be_hidden()

    # bob's phone stops for a moment: alice's page says so, then hears him again
    reconnecting = alice.get_by_test_id("reconnecting")
    bob_pid = world.uis["bob"].process.pid
    os.kill(bob_pid, signal.SIGSTOP)
    try:
        expect(reconnecting).to_be_visible(timeout=RECONNECTING_MS)
        expect(reconnecting).to_contain_text("No audio from bob")
        expect(alice).to_have_title(f"Reconnecting to bob… {DASH} pqcall")
        shoot(alice, out, "reconnecting")
    finally:
        os.kill(bob_pid, signal.SIGCONT)
    expect(reconnecting).to_be_hidden(timeout=RECOVERED_MS)

    # (on a loaded machine the pause may outlast the peer-unreachable limit: the call then ended)
    if alice.get_by_test_id("hangup").is_visible():
        alice.get_by_test_id("hangup").click()
    expect_history(alice, "bob", "outgoing", "answered|failed: connection lost")
    expect(alice).to_have_title("pqcall")
    shoot(alice, out, "idle")
    expect_no_page_errors(world)


def test_key_changed_screens(world: UiWorld, out: Path) -> None:
    # alice saved and verified another key for bob: the server's key for him is a change
    contacts = Contacts(Home(world.homes["alice"]).contacts_path)
    contacts.check("bob", IdentityPrivateKey.generate().public_key())
    contacts.mark_verified("bob")
    alice = world.open("alice")
    warning = alice.get_by_test_id("key-warning")
    if not warning.is_visible():  # shown on load, or when alice tries to call
        call(alice, "bob")
    expect(warning.get_by_test_id("safety-number")).to_have_text(SAFETY_NUMBER)
    shoot(alice, out, "key-changed")

    warning.get_by_test_id("dismiss-key-warning").click()
    alice.get_by_test_id("safety-bob").click()
    panel = alice.locator("#safety")
    expect(panel.get_by_test_id("safety-changed")).to_be_visible()
    expect(panel.get_by_test_id("safety-changed")).to_contain_text("no longer verified")
    expect(panel.get_by_test_id("safety-number")).to_have_text(SAFETY_NUMBER)
    shoot(alice, out, "key-changed-panel", scroll_to=panel)
    expect_no_page_errors(world)
