"""Group calls in the browser UI: four ``pqcall ui`` pages in Chromium, a real server.

Uses the browser fixtures of ``conftest.py`` (a ``pqcall server`` process,
``pqcall ui`` processes, headless Chromium); carol and dave are registered here
besides alice and bob. Alice plays a tone, the others silence.

- Alice ticks bob and carol and starts a group call; it rings on both pages
  (banner, tab title), both join; alice adds dave during the call and dave joins.
- Every page shows the same group code; each roster shows every person's name,
  state, trust badge (bob verified on alice's page, the others not) and mute state.
- The speaking indicator is on for alice (the tone) and off for the silent
  members; when alice mutes, every page shows her muted and her indicator goes off,
  and on again when she unmutes.
- Carol leaves: the others' rosters say so. An invitation declined shows as
  declined on the inviter's page; invited again, the same page rings again.
  The keys A, D, M and H join, decline, mute and leave as on the 1:1 screen.
- An invitation nobody answers rings out: the invitee's page says it missed it,
  the inviter's roster says "no answer".

``PQCALL_SCREENSHOTS`` (``scripts/screenshots.py``) also saves
``group-call.png`` there: bob's page in the four-person call.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

if not os.environ.get("PQCALL_TEST_BROWSER"):
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
from playwright.sync_api import Locator, Page, expect

from pqcall.client.home import Home
from tests.harness import TIMEOUT_SCALE

from .conftest import UiWorld, _register
from .test_browser import DASH, add_contact, expect_no_page_errors

JOIN_MS = 30_000 * TIMEOUT_SCALE  # from "Join" to every key held and the code shown
SPEAKING_MS = 10_000 * TIMEOUT_SCALE  # for the indicator to follow the audio (and mute)
RING_OUT_S = 4.0  # the server's ring timeout in the ring-out test
RUNG_OUT_MS = 20_000 * TIMEOUT_SCALE  # from the invitation to "no answer" on every page
GROUP_CODE = re.compile(r"^\d{3} \d{3} \d{3} \d{3}$")


def register(world: UiWorld, *names: str) -> None:
    """Register more users on the world's server (alice and bob are already)."""
    with ThreadPoolExecutor(max_workers=1) as thread:  # Playwright's loop runs in this thread
        for name in names:
            world.homes[name] = world.base / name
            thread.submit(_register, Home(world.homes[name]), name, world.server_url).result()


def verify(page: Page, name: str) -> None:
    """Mark ``name`` verified through the safety-number panel."""
    page.get_by_test_id(f"safety-{name}").click()
    page.get_by_test_id("verify-contact").click()
    expect(page.get_by_test_id(f"badge-{name}")).to_have_text("verified")


def start_group(page: Page, *names: str) -> None:
    """Tick ``names`` in the Group call card and start the call."""
    start = page.get_by_test_id("group-call")
    expect(start).to_be_disabled()
    for name in names:
        page.get_by_test_id(f"group-pick-{name}").check()
    expect(start).to_be_enabled()
    start.click()
    expect(page.get_by_test_id("group-panel")).to_be_visible()


def expect_invited(page: Page, inviter: str) -> None:
    """``page`` rings for a group invitation from ``inviter``."""
    banner = page.get_by_test_id("group-incoming")
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("role", "alertdialog")
    expect(banner.get_by_test_id("group-incoming-from")).to_have_text(inviter)
    expect(banner).to_have_attribute("data-sound", "on")  # the ring plays
    expect(page).to_have_title(f"{inviter} invites you to a group call {DASH} pqcall")


def member(page: Page, name: str) -> Locator:
    """``name``'s row in the roster on ``page``."""
    return page.get_by_test_id("group-roster").get_by_test_id(f"member-{name}")


def expect_joined(page: Page, *names: str) -> None:
    for name in names:
        expect(member(page, name)).to_have_attribute("data-state", "joined", timeout=JOIN_MS)


def expect_same_code(pages: list[Page], members: int) -> str:
    """Every page shows the code of the same roster (``members`` people); returns it."""
    for page in pages:
        expect(page.get_by_test_id("group-state")).to_have_text(
            f"{members} in the call", timeout=JOIN_MS
        )
    codes: set[str] = set()
    for page in pages:
        code = page.get_by_test_id("group-code")
        expect(code).to_have_text(GROUP_CODE, timeout=JOIN_MS)
        codes.add(code.text_content() or "")
    # a page may have shown the code of the roster before the last join: wait for one code
    deadline_ms = JOIN_MS
    while len(codes) > 1 and deadline_ms > 0:
        pages[0].wait_for_timeout(500)
        deadline_ms -= 500
        codes = {p.get_by_test_id("group-code").text_content() or "" for p in pages}
    assert len(codes) == 1, f"the pages show different group codes: {codes}"
    return codes.pop()


def expect_speaking(page: Page, name: str, speaking: bool) -> None:
    expect(member(page, name)).to_have_attribute(
        "data-speaking", str(speaking).lower(), timeout=SPEAKING_MS
    )


def test_group_call_started_extended_muted_and_left(world: UiWorld, tmp_path: Path) -> None:
    register(world, "carol", "dave")
    alice = world.open("alice", audio_in="tone:440")
    bob = world.open("bob", audio_in="silence")
    carol = world.open("carol", audio_in="silence")
    dave = world.open("dave", audio_in="silence")
    for name in ("bob", "carol", "dave"):
        add_contact(alice, name)
    verify(alice, "bob")

    start_group(alice, "bob", "carol")
    for page in (bob, carol):
        expect_invited(page, "alice")
        expect(page.get_by_test_id("group-incoming-with")).to_contain_text(
            "bob" if page is carol else "carol"
        )
    expect(member(alice, "bob")).to_have_attribute("data-state", "invited")
    expect(member(alice, "bob").get_by_test_id("member-state-bob")).to_have_text("ringing…")
    bob.get_by_test_id("group-accept").click()
    carol.get_by_test_id("group-accept").click()
    for page in (alice, bob, carol):
        expect(page.get_by_test_id("group-incoming")).to_be_hidden()
        expect_joined(page, "alice", "bob", "carol")
    first_code = expect_same_code([alice, bob, carol], 3)

    # a third person added during the call
    alice.get_by_test_id("group-invite-name").fill("dave")
    alice.get_by_test_id("group-invite").click()
    expect_invited(dave, "alice")
    expect(member(bob, "dave")).to_have_attribute("data-state", "invited")
    dave.get_by_test_id("group-accept").click()
    pages = [alice, bob, carol, dave]
    for page in pages:
        expect_joined(page, "alice", "bob", "carol", "dave")
    code = expect_same_code(pages, 4)
    assert code != first_code  # a new roster, a new code

    # trust badges: alice compared bob's safety number, nobody else compared anyone's
    expect(member(alice, "bob").get_by_test_id("trust-bob")).to_have_text("verified")
    expect(member(alice, "carol").get_by_test_id("trust-carol")).to_contain_text("not verified")
    expect(member(bob, "carol").get_by_test_id("trust-carol")).to_contain_text("not verified")
    expect(member(bob, "alice").get_by_test_id("trust-alice")).to_contain_text("not verified")
    expect(member(alice, "alice")).to_contain_text("(you)")

    # speaking: alice's tone lights her indicator on the others' pages, silence does not
    for page in (bob, carol, dave):
        expect_speaking(page, "alice", True)
    for name in ("carol", "dave"):
        expect_speaking(bob, name, False)
    expect_speaking(alice, "bob", False)
    shots = os.environ.get("PQCALL_SCREENSHOTS")
    if shots:
        bob.get_by_test_id("group-panel").scroll_into_view_if_needed()
        bob.evaluate("document.activeElement?.blur()")
        bob.screenshot(path=str(Path(shots) / "group-call.png"))

    # mute: every page shows alice muted; her silence turns her indicator off
    for page in pages:
        expect(member(page, "alice").get_by_test_id("muted-alice")).to_be_hidden()
    alice.get_by_test_id("group-mute").click()
    expect(alice.get_by_test_id("group-mute")).to_have_attribute("aria-pressed", "true")
    for page in pages:
        expect(member(page, "alice")).to_have_attribute("data-muted", "true", timeout=SPEAKING_MS)
        expect(member(page, "alice").get_by_test_id("muted-alice")).to_be_visible()
    for page in (bob, carol, dave):
        expect_speaking(page, "alice", False)
    alice.keyboard.press("m")  # the shortcut of Mute/Unmute
    expect(alice.get_by_test_id("group-mute")).to_have_attribute("aria-pressed", "false")
    for page in (bob, dave):
        expect(member(page, "alice")).to_have_attribute("data-muted", "false", timeout=SPEAKING_MS)
        expect_speaking(page, "alice", True)

    # carol leaves: the others' rosters say so; her page says how it ended
    carol.get_by_test_id("group-leave").click()
    expect(carol.get_by_test_id("group-panel")).to_be_hidden()
    expect(carol.get_by_test_id("group-last")).to_have_text(
        "You left the group call with alice, bob and dave."
    )
    for page in (alice, bob, dave):
        expect(member(page, "carol")).to_have_attribute("data-state", "left", timeout=JOIN_MS)
        expect(member(page, "carol").get_by_test_id("member-state-carol")).to_have_text("left")
        expect(page.get_by_test_id("group-state")).to_have_text("3 in the call", timeout=JOIN_MS)
    expect_same_code([alice, bob, dave], 3)
    expect_no_page_errors(world)


def test_group_invitation_declined_then_accepted_when_asked_again(world: UiWorld) -> None:
    register(world, "carol")
    alice = world.open("alice", audio_in="silence")
    bob = world.open("bob", audio_in="silence")
    carol = world.open("carol", audio_in="silence")
    add_contact(alice, "bob")
    add_contact(alice, "carol")
    start_group(alice, "bob", "carol")
    expect_invited(carol, "alice")
    carol.keyboard.press("d")  # the shortcut of Decline
    expect(carol.get_by_test_id("group-incoming")).to_be_hidden()
    expect(carol.get_by_test_id("group-panel")).to_be_hidden()
    expect(carol).to_have_title("pqcall")
    expect(member(alice, "carol")).to_have_attribute("data-state", "declined")
    expect(member(alice, "carol").get_by_test_id("member-state-carol")).to_have_text("declined")
    expect_invited(bob, "alice")
    bob.keyboard.press("a")  # the shortcut of Join
    expect_joined(alice, "bob")
    expect_same_code([alice, bob], 2)
    # invited again, carol's page rings again and she joins
    alice.get_by_test_id("group-invite-name").fill("carol")
    alice.get_by_test_id("group-invite").click()
    expect_invited(carol, "alice")
    carol.get_by_test_id("group-accept").click()
    expect_joined(alice, "bob", "carol")
    expect_same_code([alice, bob, carol], 3)
    # bob and carol leave, and alice, alone, is out of it too
    carol.get_by_test_id("group-leave").click()
    expect(member(alice, "carol")).to_have_attribute("data-state", "left", timeout=JOIN_MS)
    bob.keyboard.press("h")  # the shortcut of Leave
    expect(alice.get_by_test_id("group-panel")).to_be_hidden(timeout=JOIN_MS)
    expect(alice.get_by_test_id("group-last")).to_have_text(
        re.compile(r"^Group call with bob and carol ended \((the call ended|everyone else left)\)")
    )
    expect_no_page_errors(world)


@pytest.mark.parametrize("ring_timeout_s", [RING_OUT_S])
def test_group_invitation_nobody_answers_rings_out(world: UiWorld) -> None:
    register(world, "carol")
    alice = world.open("alice", audio_in="silence")
    bob = world.open("bob", audio_in="silence")
    add_contact(alice, "bob")
    add_contact(alice, "carol")
    start_group(alice, "bob", "carol")  # carol's phone is not even running
    expect_invited(bob, "alice")
    expect(bob.get_by_test_id("group-incoming")).to_be_hidden(timeout=RUNG_OUT_MS)
    expect(bob.get_by_test_id("group-last")).to_have_text(
        "Missed group call from alice (no answer)."
    )
    expect(bob).to_have_title(re.compile(f"^(1 missed call {DASH} )?pqcall$"))  # not ringing
    # nobody is left to talk to: alice's page leaves the call and says why
    expect(alice.get_by_test_id("group-panel")).to_be_hidden(timeout=RUNG_OUT_MS)
    expect(alice.get_by_test_id("group-last")).to_have_text(
        "Group call with bob and carol ended (bob: no answer; carol: no answer)."
    )
    expect_no_page_errors(world)
