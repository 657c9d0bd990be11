"""Group call lifecycle with the library: invitations that are declined, busy, or ring out.

A real server (its clock moved past the 1:1 ring timeout by hand) and phones in
one process; the roster each member sees must name every invitee's outcome, and
the call must go on.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pqcall.cli import runtime
from pqcall.cli.group import state_text, take_group
from pqcall.cli.output import Console
from pqcall.cli.runtime import Interrupt, LineReader
from pqcall.client.group_call import GroupCall
from pqcall.client.group_summary import group_summary
from pqcall.client.phone import Phone
from pqcall.server.group_service import RING_OUT_CHECK_S
from pqcall.server.settings import DEFAULT_RING_TIMEOUT_S
from tests.harness import eventually, run_async, scaled

from ..server.conftest import RunningServer, make_settings, run_server
from .test_group_phones import KEYS_TIMEOUT_S, everyone_has_keys, invited_call, new_phone


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    assert settings.ring_timeout_s == DEFAULT_RING_TIMEOUT_S  # the 1:1 calls' ring timeout
    with run_server(replace(settings, relay_port=0)) as running:
        yield running


def states(call: GroupCall) -> dict[str, str]:
    return {p["name"]: p["state"] for p in group_summary(call)["participants"]}


async def invite_to(phone: Phone, call_id: str) -> GroupCall:
    while True:
        call = await invited_call(phone)
        if call.call_id == call_id:
            return call


@pytest.mark.slow
@run_async
async def test_declined_busy_and_unanswered_are_shown_and_the_call_goes_on(
    server: RunningServer, tmp_path: Path
) -> None:
    started: list[Phone] = []
    try:
        for name, auto in (
            ("alice", True),
            ("bob", True),
            ("carol", True),
            ("dave", False),
            ("mallory", False),
        ):
            started.append(await new_phone(server, tmp_path, name, auto_answer=auto))
        alice, bob, carol, dave, mallory = started
        await carol.group_call(["mallory"])  # carol is in another call: busy for alice's
        call = await alice.group_call(["bob", "carol", "dave", "mallory"])
        bobs = await invite_to(bob, call.call_id)
        daves = await invite_to(dave, call.call_id)
        mallorys = await invite_to(mallory, call.call_id)
        assert daves.state == "invited" and mallorys.state == "invited"  # ringing
        # mallory's CLI asks "join? [y/N]" and nobody types (stdin open, empty)
        read_end, write_end = os.pipe()
        out, err = io.StringIO(), io.StringIO()
        console = Console(json_mode=True, out=out, err=err)
        asking = asyncio.ensure_future(
            take_group(
                mallorys,
                argparse.Namespace(json=True),
                console,
                Interrupt(),
                LineReader(read_end),
            )
        )
        await daves.decline()
        await eventually(
            lambda: states(call).get("carol") == "busy" and states(call).get("dave") == "declined",
            timeout_s=scaled(10.0),
            what="busy and declined in alice's roster",
        )
        await eventually(lambda: everyone_has_keys([call, bobs]), timeout_s=KEYS_TIMEOUT_S)
        # nobody answers mallory's phone: after the ring timeout she is "no answer" everywhere
        server.clock.advance(DEFAULT_RING_TIMEOUT_S - 5)
        await asyncio.sleep(3 * RING_OUT_CHECK_S)
        assert states(call)["mallory"] == "invited" and mallorys.state == "invited"
        server.clock.advance(6)
        await eventually(
            lambda: states(call).get("mallory") == "no_answer",
            timeout_s=scaled(10.0),
            what="mallory rang out in alice's roster",
        )
        await eventually(lambda: states(bobs).get("mallory") == "no_answer", timeout_s=scaled(5))
        await eventually(lambda: mallorys.is_ended, timeout_s=scaled(5.0), what="ringing stops")
        assert mallorys.reason == "no answer"
        try:
            assert await asyncio.wait_for(asking, scaled(5.0)) == runtime.EXIT_FAILED
        finally:
            os.close(read_end)
            os.close(write_end)
        assert "group call from alice: no answer" in err.getvalue(), err.getvalue()
        record = json.loads(out.getvalue())
        assert record["group"] is True and record["reason"] == "no answer", record
        seen = {p["name"]: p["state"] for p in record["participants"]}
        assert seen == {"alice": "joined", "bob": "joined", "carol": "busy", "dave": "declined"}
        assert state_text(states(call)["mallory"]) == "no answer"  # the CLI's roster line
        assert states(call) == {
            "bob": "joined",
            "carol": "busy",
            "dave": "declined",
            "mallory": "no_answer",
        }
        # the call goes on: both still hold each other's key and keep hearing each other
        assert call.state == "active" and bobs.state == "active"
        before = group_summary(call)["participants"][0]["packets_received"]
        await asyncio.sleep(scaled(1.0))
        assert group_summary(call)["participants"][0]["packets_received"] > before
        assert everyone_has_keys([call, bobs])
        await bobs.leave()
        await call.leave()
    finally:
        for phone in started:
            await phone.close()


@pytest.mark.slow
@run_async
async def test_a_blocked_inviter_does_not_ring(server: RunningServer, tmp_path: Path) -> None:
    started: list[Phone] = []
    try:
        for name in ("alice", "bob", "carol"):  # all answering machines: they join at once
            started.append(await new_phone(server, tmp_path, name, auto_answer=True))
        alice, bob, carol = started
        assert bob.screening.block("alice")
        call = await alice.group_call(["bob", "carol"])
        await invite_to(carol, call.call_id)  # carol's phone rings (and joins)
        with pytest.raises(TimeoutError):  # bob's does not, though it answers everything
            await asyncio.wait_for(bob.next_group_invite(), scaled(2.0))
        await eventually(
            lambda: states(call).get("carol") == "joined", timeout_s=scaled(10.0), what="carol"
        )
        assert states(call)["bob"] == "invited"  # left to ring out on the server
        assert call.call_id not in bob._groups
    finally:
        for phone in reversed(started):
            await phone.close()
