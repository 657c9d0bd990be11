"""The call screen in a real browser (issue 21): shortcuts, the tab, history, keys, missed calls.

Uses the fixtures of ``conftest.py`` (a ``pqcall server``, ``pqcall ui`` for
alice and bob, headless Chromium). Each test drives the pages as a person
would and checks what the page says:

- the single-key shortcuts (A accept, D decline, M mute, H hang up, ? lists
  them), never taken from a key typed into a field;
- the tab's title and icon while ringing and in a call, restored after;
- "Ringing bob… 0:07" while the call rings out; the peer's mute shown;
- a call placed again from a history row ("Call back");
- your own key's fingerprint in the account area;
- the safety-number panel after a key change: the NEW number, "no longer
  verified — compare and accept", and accepting it there;
- a call missed while the phone was away, counted by the badge when it comes back;
- a received file saying its signature checked and where it was saved;
- the "click to enable ringing" hint when the browser keeps the page silent
  (Chromium's rule simulated: headless Chromium lets any page play sound).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import Page, expect

from pqcall.client.contacts import Contacts
from pqcall.client.home import Home
from pqcall.crypto.identity import IdentityPrivateKey
from tests.cli.helpers import PASSPHRASE
from tests.harness import TIMEOUT_SCALE

from .conftest import UiWorld
from .test_browser import (
    CALL_SETUP_MS,
    DASH,
    IN_CALL,
    MISSED_MS,
    MISSED_RING_TIMEOUT_S,
    QUIET_S,
    SAFETY_NUMBER,
    add_contact,
    call,
    expect_history,
    expect_no_page_errors,
    expect_ringing,
)

TICK_MS = 4_000 * TIMEOUT_SCALE  # a timer shown in whole seconds moves within this
FILE_MS = 30_000 * TIMEOUT_SCALE  # a small file sent, or received and checked
# Chromium's autoplay rule (Web Audio starts only after a click or key press on
# the page), which headless Chromium does not apply whatever --autoplay-policy
# says: a context starts suspended and resumes only once a real (trusted)
# pointer or key event reached the page. (Playwright's evaluate() counts as a
# user activation, so navigator.userActivation cannot tell.)
SILENT_UNTIL_CLICKED = """(() => {
  let gesture = false;
  for (const type of ["pointerdown", "keydown"]) {
    window.addEventListener(type, (e) => { if (e.isTrusted) gesture = true; }, true);
  }
  const Real = window.AudioContext;
  window.AudioContext = class extends Real {
    constructor(...args) { super(...args); super.suspend(); }
    resume() { return gesture ? super.resume() : new Promise(() => {}); }
  };
})();"""
UNLOCK_JSON = """(passphrase) => fetch("/api/unlock", {method: "POST", headers: {
  "X-Pqcall-Token": sessionStorage.getItem("pqcall-token"), "Content-Type": "application/json"},
  body: JSON.stringify({passphrase})}).then((r) => r.status)"""
SAFETY_JSON = """(name) => fetch(`/api/contacts/${name}/safety-number`, {
  headers: {"X-Pqcall-Token": sessionStorage.getItem("pqcall-token")}}).then((r) => r.json())"""


def press(page: Page, key: str) -> None:
    """Press ``key`` with the focus on no field (a shortcut, not typing)."""
    page.evaluate("document.activeElement?.blur()")
    page.keyboard.press(key)


def favicon(page: Page) -> Any:
    return page.locator("#favicon")


def expect_idle_tab(page: Page) -> None:
    expect(page).to_have_title("pqcall")
    expect(favicon(page)).to_have_attribute("data-state", "idle")


def test_shortcuts_tab_title_and_peer_mute(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    expect_idle_tab(alice)
    add_contact(alice, "bob")
    call(alice, "bob")
    expect_ringing(alice, bob)

    # ringing: the tabs say who and how long
    expect(bob).to_have_title(f"alice is calling {DASH} pqcall")
    expect(favicon(bob)).to_have_attribute("data-state", "ringing")
    expect(favicon(bob)).to_have_attribute("href", re.compile(r"^data:image/svg\+xml,"))
    expect(alice).to_have_title(re.compile(rf"^Ringing bob… \d+:\d\d {DASH} pqcall$"))
    timer = alice.get_by_test_id("call-timer")
    first = timer.text_content() or ""
    expect(timer).not_to_have_text(first, timeout=TICK_MS)  # it counts the ringing

    # ? lists the shortcuts; Escape closes the list
    press(bob, "?")
    shortcuts = bob.get_by_test_id("shortcuts")
    expect(shortcuts).to_be_visible()
    for what in ("accept", "decline", "mute", "hang up"):
        expect(shortcuts).to_contain_text(what)
    bob.keyboard.press("Escape")
    expect(shortcuts).to_be_hidden()

    # a key typed into a field is text, not a shortcut
    search = bob.get_by_test_id("contact-search")
    search.focus()
    bob.keyboard.type("a")
    expect(search).to_have_value("a")
    bob.wait_for_timeout(QUIET_S * 1000)
    expect(bob.get_by_test_id("incoming")).to_be_visible()
    search.fill("")

    # A answers
    press(bob, "a")
    for page in (alice, bob):
        expect(page.get_by_test_id("call-state")).to_have_text(IN_CALL, timeout=CALL_SETUP_MS)
    expect(alice).to_have_title(re.compile(rf"^In call with bob \d+:\d\d {DASH} pqcall$"))
    expect(bob).to_have_title(re.compile(rf"^In call with alice \d+:\d\d {DASH} pqcall$"))
    expect(favicon(alice)).to_have_attribute("data-state", "call")
    expect(alice.get_by_test_id("hangup")).to_have_css("background-color", "rgb(179, 38, 30)")

    # M mutes: alice's button is pressed, bob's page says alice muted
    press(alice, "m")
    expect(alice.get_by_test_id("mute")).to_have_attribute("aria-pressed", "true")
    expect(alice).to_have_title(re.compile(rf"\(muted\) {DASH} pqcall$"))
    expect(bob.get_by_test_id("peer-muted")).to_be_visible()
    expect(bob.get_by_test_id("peer-muted")).to_have_text("alice muted their microphone")
    press(alice, "m")
    expect(alice.get_by_test_id("mute")).to_have_attribute("aria-pressed", "false")
    expect(bob.get_by_test_id("peer-muted")).to_be_hidden()

    # H hangs up; the tabs are as before
    press(bob, "h")
    expect_history(alice, "bob", "outgoing", "answered")
    expect_history(bob, "alice", "incoming", "answered")
    expect_idle_tab(alice)
    expect_idle_tab(bob)
    expect_no_page_errors(world)


def test_decline_with_d_call_back_from_history_and_own_key(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    add_contact(alice, "bob")
    call(alice, "bob")
    expect_ringing(alice, bob)
    press(bob, "d")
    expect_history(alice, "bob", "outgoing", "declined")
    expect_history(bob, "alice", "incoming", "declined")

    # bob calls alice back from the row of her call
    row = bob.get_by_test_id("history").get_by_test_id("history-row").first
    row.get_by_role("button", name="Call alice back").click()
    expect(alice.get_by_test_id("incoming")).to_contain_text("bob")
    expect(alice).to_have_title(f"bob is calling {DASH} pqcall")
    expect(bob.get_by_test_id("call-state")).to_have_text("Ringing alice…")
    # H does not touch a call that rings here (it is not ours to cancel); D declines it
    press(alice, "h")
    alice.wait_for_timeout(QUIET_S * 1000)
    expect(alice.get_by_test_id("incoming")).to_be_visible()
    press(alice, "d")
    expect_history(bob, "alice", "outgoing", "declined")
    expect_history(alice, "bob", "incoming", "declined")
    expect_idle_tab(alice)

    # alice's own key, as bob's phone saved it
    saved = Contacts(Home(world.homes["bob"]).contacts_path).get("alice")
    assert saved is not None
    alice.get_by_test_id("my-key").locator("summary").click()
    expect(alice.get_by_test_id("my-fingerprint")).to_have_text(saved.fingerprint)
    expect_no_page_errors(world)


def test_safety_panel_after_a_key_change_shows_the_new_number(world: UiWorld) -> None:
    # alice saved and verified another key for bob: the server's key for him is a change
    contacts = Contacts(Home(world.homes["alice"]).contacts_path)
    contacts.check("bob", IdentityPrivateKey.generate().public_key())
    contacts.mark_verified("bob")
    alice = world.open("alice")
    world.open("bob")
    expect(alice.get_by_test_id("badge-bob")).to_have_text("verified")
    warning = alice.get_by_test_id("key-warning")
    if not warning.is_visible():  # shown on load, or when alice tries to call
        call(alice, "bob")
    expect(warning.get_by_test_id("safety-number")).to_have_text(SAFETY_NUMBER)
    warning.get_by_test_id("dismiss-key-warning").click()
    expect(warning).to_be_hidden()

    numbers = alice.evaluate(SAFETY_JSON, "bob")
    new, old = numbers["changed_safety_number"], numbers["safety_number"]
    assert new and old and new != old, numbers
    alice.get_by_test_id("safety-bob").click()
    panel = alice.locator("#safety")
    expect(panel.get_by_test_id("safety-number")).to_have_text(new)
    expect(panel.get_by_test_id("safety-changed")).to_be_visible()
    expect(panel.get_by_test_id("safety-changed")).to_contain_text(
        "no longer verified — compare and accept"
    )
    expect(panel.get_by_test_id("verify-contact")).to_be_hidden()
    expect(alice.get_by_test_id("badge-bob")).to_have_text("KEY CHANGED")

    # accepted from the panel: the key is saved, the contact can be verified again
    panel.get_by_test_id("safety-accept-key").click()
    expect(alice.get_by_test_id("badge-bob")).to_have_text("key saved")
    expect(panel.get_by_test_id("safety-changed")).to_be_hidden()
    expect(panel.get_by_test_id("verify-contact")).to_have_text("Mark as verified")
    expect(panel.get_by_test_id("verify-contact")).to_be_enabled()
    expect(panel.get_by_test_id("safety-number")).to_have_text(new)
    expect_no_page_errors(world)


@pytest.mark.parametrize("ring_timeout_s", [MISSED_RING_TIMEOUT_S])
def test_call_missed_while_away_is_counted_on_return(world: UiWorld) -> None:
    alice = world.open("alice")  # bob's phone is not running
    add_contact(alice, "bob")
    call(alice, "bob")
    expect(alice.get_by_test_id("call-state")).to_have_text("Ringing bob…")
    expect(alice.get_by_test_id("call-panel")).to_be_hidden(timeout=MISSED_MS)
    expect_history(alice, "bob", "outgoing", "no answer")

    bob = world.open("bob")  # bob comes back: the server tells his phone what it missed
    count = bob.get_by_test_id("missed-count")
    expect(count).to_have_text("1", timeout=MISSED_MS)
    expect(count).to_be_visible()
    expect_history(bob, "alice", "incoming", "missed")
    expect(bob.get_by_test_id("history-result").first).to_contain_text("offline")
    expect(bob).to_have_title(f"1 missed call {DASH} pqcall")
    bob.get_by_test_id("missed-seen").click()
    expect(count).to_be_hidden()
    expect(bob).to_have_title("pqcall")
    expect_no_page_errors(world)


def test_ring_blocked_by_the_browser_asks_for_a_click(world: UiWorld) -> None:
    alice = world.open("alice")
    # a page nobody clicked on or typed into, unlocked through the API, not the form
    bob = world.open("bob", unlock=False)
    bob.context.add_init_script(SILENT_UNTIL_CLICKED)
    bob.reload()
    expect(bob.get_by_test_id("unlock-passphrase")).to_be_visible()
    assert bob.evaluate(UNLOCK_JSON, PASSPHRASE) == 200
    expect(bob.get_by_test_id("connection")).to_have_text("online")
    add_contact(alice, "bob")
    call(alice, "bob")
    incoming = bob.get_by_test_id("incoming")
    expect(incoming).to_be_visible()
    expect(bob.get_by_test_id("ring-blocked")).to_be_visible()
    expect(incoming).to_have_attribute("data-sound", "blocked")

    bob.get_by_test_id("ring-enable").click()
    expect(bob.get_by_test_id("ring-blocked")).to_be_hidden()
    expect(incoming).to_have_attribute("data-sound", "on")
    bob.get_by_test_id("reject").click()
    expect_history(alice, "bob", "outgoing", "declined")
    expect_no_page_errors(world)


def test_received_file_says_the_signature_checked_and_where_it_was_saved(
    world: UiWorld, tmp_path: Path
) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    report = tmp_path / "report.txt"
    report.write_bytes(b"quarterly numbers\n" * 1000)
    alice.get_by_test_id("file-to").fill("bob")
    alice.get_by_test_id("file-input").set_input_files(str(report))
    alice.get_by_test_id("file-send").click()
    sent = alice.get_by_test_id("transfer-row").first
    expect(sent).to_contain_text("Sent report.txt: done", timeout=FILE_MS)

    row = bob.get_by_test_id("inbox-row").first
    expect(row).to_contain_text("From alice", timeout=FILE_MS)
    # the size on the server (padded ciphertext), in decimal units as the CLI prints sizes
    expect(row).to_contain_text(re.compile(r"From alice \d+\.\d+ kB"))
    row.get_by_role("button", name="Receive the file from alice").click()
    details = row.locator(".received-details")
    expect(details).to_be_visible(timeout=FILE_MS)
    saved = world.homes["bob"] / "received" / "report.txt"
    expect(details).to_have_text(
        f"Signature checked: signed by alice (key saved, not verified). Saved in {saved}"
    )
    assert saved.read_bytes() == report.read_bytes()
    expect_no_page_errors(world)
