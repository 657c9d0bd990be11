"""Issue 20 finding 6: a malicious server replays an old signed offer to make a phone ring.

The server carries every offer, so it can push one again later as a new
``call.incoming``: the offer's signature still verifies, and the callee's phone
would ring "alice (verified) is calling". These tests play that server (they
hand the replayed event to the phone's event handler, where the server's push
arrives) against real phones on a real server: a replay of a call the phone
already rang for, also after the phone restarts, and an offer alice signed an
hour ago under a call id the server makes up.
"""

from __future__ import annotations

import asyncio
import secrets
import stat
import time
from pathlib import Path

import pytest

from pqcall.client.home import Home
from pqcall.client.offers import SEEN_OFFERS_NAME
from pqcall.client.phone import Phone
from pqcall.crypto.handshake import OFFER_MAX_AGE_S, CallerHandshake
from pqcall.signaling.messages import EVENT_CALL_INCOMING, Event, b64encode
from tests.client.test_phone import (
    PASSPHRASE,
    STATE_TIMEOUT_S,
    new_phone,
    phones,
    server_with_relay,
)
from tests.harness import run_async
from tests.server.conftest import RunningServer

QUIET_S = 1.0  # how long a phone that must not ring is watched

__all__ = ["server_with_relay"]  # the fixture, for pytest


def spy_on_events(phone: Phone) -> list[Event]:
    """The events the server pushes to ``phone`` from now on, as a recording server keeps them."""
    seen: list[Event] = []
    handle = phone._handle

    async def recording(event: Event) -> None:
        seen.append(event)
        await handle(event)

    phone._handle = recording  # type: ignore[method-assign]
    return seen


async def push_again(phone: Phone, event: Event, **payload: object) -> None:
    """Push ``event`` once more as if new (fresh ``seq`` and time), payload fields replaced."""
    replayed = event.model_copy(
        update={
            "seq": event.seq + 1000,
            "created": time.time(),
            "payload": {**event.payload, **payload},
        }
    )
    await phone._handle(replayed)


async def does_not_ring(phone: Phone) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(phone.next_incoming(), QUIET_S)


@run_async
async def test_a_replayed_offer_does_not_ring_again(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        pushed = spy_on_events(bob)
        await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await incoming.reject()
        (original,) = [event for event in pushed if event.type == EVENT_CALL_INCOMING]
        # minutes later the server pushes alice's signed offer again
        await push_again(bob, original)
        await does_not_ring(bob)
        seen = tmp_path / "bob" / SEEN_OFFERS_NAME
        assert stat.S_IMODE(seen.stat().st_mode) == 0o600
    # the phone restarts: it still remembers the call id
    async with contextlib_closing(await new_phone(server_with_relay, tmp_path, "bob")) as bob:
        await bob.wait_connected(STATE_TIMEOUT_S)
        await push_again(bob, original)
        await does_not_ring(bob)


@run_async
async def test_an_old_signed_offer_does_not_ring(
    server_with_relay: RunningServer, tmp_path: Path
) -> None:
    async with phones(server_with_relay, tmp_path, "alice", "bob") as (alice, bob):
        pushed = spy_on_events(bob)
        await alice.call("bob")
        incoming = await asyncio.wait_for(bob.next_incoming(), STATE_TIMEOUT_S)
        await incoming.reject()
        (original,) = [event for event in pushed if event.type == EVENT_CALL_INCOMING]
        # an offer alice really signed, recorded an hour ago, under a call id made up now
        call_id = secrets.token_hex(16)
        recorded = CallerHandshake(
            call_id=bytes.fromhex(call_id),
            our_name="alice",
            our_identity=Home(tmp_path / "alice").unlock(PASSPHRASE).identity,
            their_name="bob",
            their_identity=bob.identity,
        ).offer(now=time.time() - 2 * OFFER_MAX_AGE_S)
        await push_again(bob, original, call_id=call_id, offer=b64encode(recorded))
        await does_not_ring(bob)
        warning = bob.warnings.get_nowait()
        assert warning.peer == "alice"
        assert "stale offer" in warning.message


class contextlib_closing:  # noqa: N801  (reads as contextlib.closing, for a Phone)
    def __init__(self, phone: Phone) -> None:
        self.phone = phone

    async def __aenter__(self) -> Phone:
        return self.phone

    async def __aexit__(self, *exc: object) -> None:
        await self.phone.close()
