"""The browser UI in a real browser: two ``pqcall ui`` pages calling each other.

Each test gets a fresh ``pqcall server`` and fresh alice and bob homes (see
``conftest.py``), starts ``pqcall ui`` for them with WAV files for audio,
and drives both pages in headless Chromium through the ``data-testid`` values
of the DOM contract: a call answered (same SAS on both pages, statistics that
move, mute, hang up, history), a call rejected, a call missed, and a changed
key that blocks the call. The pictures in ``docs/screenshots/`` come from
``test_screenshots.py`` (``scripts/screenshots.py`` regenerates them).
"""

from __future__ import annotations

import os
import re
import time

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import Page, expect

from pqcall.client.contacts import Contacts
from pqcall.client.home import Home
from pqcall.crypto.identity import IdentityPrivateKey
from tests.harness import TIMEOUT_SCALE

from .conftest import UiWorld

CALL_SETUP_MS = 20_000 * TIMEOUT_SCALE  # from accept to "active" on both pages
STATS_CHANGE_S = 6.0 * TIMEOUT_SCALE  # live statistics must move within this
MISSED_RING_TIMEOUT_S = 3.0  # the server's ring timeout in the missed-call test
MISSED_MS = 20_000 * TIMEOUT_SCALE  # from the call to "missed" on both pages
QUIET_S = 2.0  # how long a call that must not ring is watched for
SAS = re.compile(r"^\d{3} \d{3}$")
DASH = "\N{EN DASH}"  # between the state and "pqcall" in the tab's title
IN_CALL = "In call"  # the call panel's state line once the call is up
RING_TIMER = re.compile(r"^\d+:\d\d$")  # counts from the first ring
SAFETY_NUMBER = re.compile(r"\d{5}\s+\d{5}")
DIGIT = re.compile(r"\d")
STATS = ("stat-rtt", "stat-loss", "stat-jitter", "stat-bitrate", "stat-mos")


def add_contact(page: Page, name: str) -> None:
    """Search for ``name`` and add them; their row shows their key saved.

    (Not online: the server shows someone's presence only after they called us
    or answered our call, issue 20 finding 8; a call rings whatever it shows.)
    """
    page.get_by_test_id("contact-search").fill(name)
    page.get_by_test_id("contact-add").click()
    row = page.get_by_test_id(f"contact-{name}")
    expect(row).to_be_visible()
    expect(row.get_by_test_id(f"badge-{name}")).to_have_text("key saved")


def call(page: Page, name: str) -> None:
    """Press the call button in ``name``'s contact row."""
    page.get_by_test_id(f"contact-{name}").get_by_test_id(f"call-{name}").click()


def expect_ringing(alice: Page, bob: Page) -> None:
    """Alice's page rings out (with cancel); bob's shows the incoming banner."""
    panel = alice.get_by_test_id("call-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("call-state")).to_have_text("Ringing bob…")
    expect(panel.get_by_test_id("call-timer")).to_have_text(RING_TIMER)
    expect(panel.get_by_test_id("call-peer")).to_contain_text("bob")
    expect(alice.get_by_test_id("cancel")).to_be_visible()
    incoming = bob.get_by_test_id("incoming")
    expect(incoming).to_be_visible()
    expect(incoming).to_have_attribute("role", "alertdialog")
    expect(incoming).to_contain_text("alice")
    expect(incoming.get_by_test_id("accept")).to_be_visible()
    expect(incoming.get_by_test_id("reject")).to_be_visible()


def expect_history(page: Page, peer: str, direction: str, result: str) -> None:
    """The newest history row is the call with ``peer``: its direction, result, duration."""
    expect(page.get_by_test_id("call-panel")).to_be_hidden()
    row = page.get_by_test_id("history").get_by_test_id("history-row").first
    expect(row).to_contain_text(peer)
    expect(row).to_contain_text(re.compile(direction, re.IGNORECASE))
    expect(row).to_contain_text(re.compile(result, re.IGNORECASE))
    expect(row).to_contain_text(DIGIT)  # the duration


def stats_text(page: Page) -> tuple[str, ...]:
    return tuple(page.get_by_test_id(testid).text_content() or "" for testid in STATS)


def expect_stats_change(page: Page) -> None:
    """The statistics are shown with numbers, and change within a few seconds."""
    expect(page.get_by_test_id("stat-rtt")).to_contain_text(DIGIT)
    expect(page.get_by_test_id("quality")).to_have_text(re.compile(r"^(good|fair|poor)$"))
    expect(page.get_by_test_id("level-meter")).to_be_attached()
    first = stats_text(page)
    deadline = time.monotonic() + STATS_CHANGE_S
    while stats_text(page) == first:
        assert time.monotonic() < deadline, f"statistics did not change in time: {first}"
        page.wait_for_timeout(200)


def expect_no_page_errors(world: UiWorld) -> None:
    for ui in world.uis.values():
        assert not ui.page_errors, f"uncaught errors in {ui.name}'s page: {ui.page_errors}"


def test_call_answered_muted_and_hung_up(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    add_contact(alice, "bob")
    expect(alice.get_by_test_id("call-panel")).to_be_hidden()

    call(alice, "bob")
    expect_ringing(alice, bob)

    bob.get_by_test_id("accept").click()
    for page in (alice, bob):
        expect(page.get_by_test_id("call-state")).to_have_text(IN_CALL, timeout=CALL_SETUP_MS)
        expect(page.get_by_test_id("incoming")).to_be_hidden()
        expect(page.get_by_test_id("sas")).to_have_text(SAS)
        expect(page.get_by_test_id("path")).to_have_text(re.compile(r"^(direct|relay)$"))
        expect(page.get_by_test_id("mute")).to_have_attribute("aria-pressed", "false")
    alice_sas = alice.get_by_test_id("sas").text_content()
    assert alice_sas == bob.get_by_test_id("sas").text_content()
    expect(alice.get_by_test_id("call-peer")).to_contain_text("bob")
    expect(bob.get_by_test_id("call-peer")).to_contain_text("alice")
    expect_stats_change(alice)
    expect_stats_change(bob)
    expect(alice.get_by_test_id("call-timer")).to_contain_text(DIGIT)

    alice.get_by_test_id("mute").click()
    expect(alice.get_by_test_id("mute")).to_have_attribute("aria-pressed", "true")
    expect(alice.get_by_test_id("call-state")).to_have_text(IN_CALL)

    # the SAS read aloud matches: bob becomes a verified contact
    alice.get_by_test_id("sas-match").click()
    expect(alice.get_by_test_id("badge-bob")).to_have_text("verified")
    expect(alice.get_by_test_id("call-state")).to_have_text(IN_CALL)

    bob.get_by_test_id("hangup").click()
    expect_history(alice, "bob", "outgoing", "answered")
    expect_history(bob, "alice", "incoming", "answered")
    expect_no_page_errors(world)


def test_call_rejected(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    add_contact(alice, "bob")
    call(alice, "bob")
    expect_ringing(alice, bob)

    bob.get_by_test_id("reject").click()
    expect(bob.get_by_test_id("incoming")).to_be_hidden()
    expect_history(alice, "bob", "outgoing", "declined")
    expect_history(bob, "alice", "incoming", "declined")
    expect_no_page_errors(world)


@pytest.mark.parametrize("ring_timeout_s", [MISSED_RING_TIMEOUT_S])
def test_call_missed(world: UiWorld) -> None:
    alice = world.open("alice")
    bob = world.open("bob")
    add_contact(alice, "bob")
    call(alice, "bob")
    expect_ringing(alice, bob)

    # nobody answers: the server gives up after its ring timeout
    expect(bob.get_by_test_id("incoming")).to_be_hidden(timeout=MISSED_MS)
    expect(alice.get_by_test_id("call-panel")).to_be_hidden(timeout=MISSED_MS)
    expect_history(alice, "bob", "outgoing", "no answer")
    expect_history(bob, "alice", "incoming", "missed")
    expect(bob.get_by_test_id("missed-count")).to_have_text("1")
    expect_no_page_errors(world)


def test_key_change_blocks_the_call(world: UiWorld) -> None:
    # alice once pinned another key for bob: the server's key for him is a change
    pinned = Contacts(Home(world.homes["alice"]).contacts_path)
    pinned.check("bob", IdentityPrivateKey.generate().public_key())
    alice = world.open("alice")
    bob = world.open("bob")
    expect(alice.get_by_test_id("contact-bob")).to_be_visible()

    warning = alice.get_by_test_id("key-warning")
    if not warning.is_visible():  # shown on load, or when alice tries to call
        call(alice, "bob")
    expect(warning).to_be_visible()
    expect(warning).to_have_attribute("role", "alertdialog")
    expect(warning).to_contain_text("bob")
    expect(warning).to_contain_text(SAFETY_NUMBER)
    expect(warning.get_by_test_id("accept-key")).to_be_visible()
    expect(warning.get_by_test_id("dismiss-key-warning")).to_be_visible()

    # no call was placed: nothing rings at bob's
    bob.wait_for_timeout(QUIET_S * 1000)
    expect(bob.get_by_test_id("incoming")).to_be_hidden()
    expect(alice.get_by_test_id("call-panel")).to_be_hidden()

    # dismissing keeps the contact marked; calling again warns again
    warning.get_by_test_id("dismiss-key-warning").click()
    expect(warning).to_be_hidden()
    expect(alice.get_by_test_id("badge-bob")).to_have_text("KEY CHANGED")
    call(alice, "bob")
    expect(warning).to_be_visible()
    bob.wait_for_timeout(QUIET_S * 1000)
    expect(bob.get_by_test_id("incoming")).to_be_hidden()

    # accepting the new key saves it: the badge says so
    warning.get_by_test_id("accept-key").click()
    expect(warning).to_be_hidden()
    expect(alice.get_by_test_id("badge-bob")).to_have_text("key saved")
    expect_no_page_errors(world)
