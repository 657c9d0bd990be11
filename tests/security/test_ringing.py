"""Issue 20 finding 2: ringing as a denial of service.

Before the fix, a call still ringing was the phone's current call: every other
caller got *busy* and the victim could not place a call, so a stranger who
rang again every 45 s kept the victim busy forever. These tests play mallory
against real phones on a real server: her ringing call must not block alice's
call or bob's own; bob can block her; her unanswered calls stop ringing after
a few; and strangers can be silenced.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pqcall.client.call import Call
from pqcall.client.phone import Phone
from pqcall.client.phone_callstate import CallState
from pqcall.client.ringlimit import RING_LIMIT_UNANSWERED
from pqcall.exceptions import CallError
from tests.client.test_phone import (
    STATE_TIMEOUT_S,
    phones,
    server_with_relay,
    wait_state,
)
from tests.harness import run_async
from tests.server.conftest import RunningServer

QUIET_S = 1.0  # how long a phone that must not ring is watched

__all__ = ["server_with_relay"]  # the fixture, for pytest


async def rings(phone: Phone) -> Call:
    """The next call that rings on ``phone``."""
    return await asyncio.wait_for(phone.next_incoming(), STATE_TIMEOUT_S)


async def stays_silent(phone: Phone) -> None:
    """``phone`` does not ring for a while."""
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(phone.next_incoming(), QUIET_S)


def last_record(phone: Phone) -> dict[str, object]:
    records = phone.history.list(1)
    assert records, "nothing recorded"
    return records[0]


@run_async
async def test_a_ringing_call_does_not_make_bob_busy_for_alice(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    names = ("alice", "bob", "mallory")
    async with phones(server_with_relay, tmp_path, *names) as (alice, bob, mallory):
        spam = await mallory.call("bob")
        ringing_spam = await rings(bob)
        call = await alice.call("bob")
        waiting = await rings(bob)  # rings too, as a waiting call
        assert waiting.peer == "alice" and waiting.state is CallState.INCOMING
        assert bob.ringing_calls == [ringing_spam, waiting]
        assert bob.current_call is ringing_spam  # the one shown first; bob chooses
        await waiting.accept()
        assert await wait_state(call, CallState.ACTIVE) is CallState.ACTIVE
        # answering declines the other ringing call as busy
        assert await wait_state(spam, CallState.BUSY) is CallState.BUSY
        assert await wait_state(ringing_spam, CallState.BUSY) is CallState.BUSY
        assert bob.current_call is waiting and bob.ringing_calls == []
        await call.hangup()
        assert await wait_state(waiting, CallState.ENDED) is CallState.ENDED
        results = {(r["peer"], r["result"]) for r in bob.history.list()}
        assert ("mallory", "busy") in results and ("alice", "ended") in results


@run_async
async def test_bob_can_place_a_call_while_mallory_rings(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    names = ("alice", "bob", "mallory")
    async with phones(server_with_relay, tmp_path, *names) as (alice, bob, mallory):
        spam = await mallory.call("bob")
        await rings(bob)
        call = await bob.call("alice")  # not "already in a call"
        incoming = await rings(alice)
        # placing a call stops the ringing: mallory hears busy
        assert await wait_state(spam, CallState.BUSY) is CallState.BUSY
        await incoming.accept()
        assert await wait_state(call, CallState.ACTIVE) is CallState.ACTIVE
        # during a call, a new caller still gets busy (no call waiting in a call)
        again = await mallory.call("bob")
        assert await wait_state(again, CallState.BUSY) is CallState.BUSY
        with pytest.raises(CallError, match="already in a call"):
            await bob.call("mallory")
        await call.hangup()


@run_async
async def test_a_blocked_caller_never_rings(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    names = ("alice", "bob", "mallory")
    async with phones(server_with_relay, tmp_path, *names) as (alice, bob, mallory):
        assert bob.screening.block("Mallory")
        spam = await mallory.call("bob")
        await stays_silent(bob)
        # mallory sees a call nobody answers (not a refusal that gives the block away)
        assert spam.state is CallState.OUTGOING
        record = last_record(bob)
        assert record["peer"] == "mallory" and record["result"] == "blocked"
        # the event coming again (a reconnect) is not recorded twice
        await spam.hangup()
        assert len([r for r in bob.history.list() if r["peer"] == "mallory"]) == 1
        # alice still rings, and after unblocking so does mallory
        call = await alice.call("bob")
        assert (await rings(bob)).peer == "alice"
        await call.hangup()
        assert bob.screening.unblock("mallory")
        again = await mallory.call("bob")
        assert (await rings(bob)).peer == "mallory"
        await again.hangup()


@run_async
async def test_repeated_unanswered_rings_are_limited(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    names = ("alice", "bob", "mallory")
    async with phones(server_with_relay, tmp_path, *names) as (alice, bob, mallory):
        for _ in range(RING_LIMIT_UNANSWERED):
            spam = await mallory.call("bob")
            await (await rings(bob)).reject()
            assert await wait_state(spam, CallState.REJECTED) is CallState.REJECTED
        spam = await mallory.call("bob")
        assert await wait_state(spam, CallState.BUSY) is CallState.BUSY
        await stays_silent(bob)
        record = last_record(bob)
        assert record["peer"] == "mallory" and record["result"] == "busy"
        assert "went unanswered" in str(record["reason"])
        # others still ring
        call = await alice.call("bob")
        assert (await rings(bob)).peer == "alice"
        await call.hangup()


@run_async
async def test_silenced_strangers_do_not_ring(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    names = ("alice", "bob", "mallory")
    async with phones(server_with_relay, tmp_path, *names) as (alice, bob, mallory):
        await bob.lookup("alice")  # alice is a contact (pinned)
        bob.screening.set_silence_strangers(True)
        spam = await mallory.call("bob")
        await stays_silent(bob)
        assert spam.state is CallState.OUTGOING  # no answer, as if nobody picked up
        record = last_record(bob)
        assert record["peer"] == "mallory" and record["result"] == "missed"
        assert record["reason"] == "silenced: not a contact"
        assert bob.contacts.get("mallory") is None  # a silenced stranger is not pinned
        await spam.hangup()
        call = await alice.call("bob")
        assert (await rings(bob)).peer == "alice"
        await call.hangup()
        # the phone's own switch (pqcall listen --silence-strangers) does the same
        bob.screening.set_silence_strangers(False)
        bob.screen.silence_strangers = True
        spam = await mallory.call("bob")
        await stays_silent(bob)
        await spam.hangup()
