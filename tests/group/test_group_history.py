"""Group calls in the history (decision 0632): declined, busy, joined and left.

A real server and phones in one process. Each phone's ``history.jsonl`` must
hold one record per group call: ``rejected`` (the shared word ``declined``) for
an invite declined, ``busy`` for one answered busy, and for a call joined and
left ``ended`` with ``answered_unix``, the members and a duration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pqcall.client.call_outcome import outcome_word
from pqcall.client.phone import Phone
from tests.harness import eventually, run_async, scaled

from ..server.conftest import RunningServer, make_settings, run_server
from .test_group_phones import KEYS_TIMEOUT_S, everyone_has_keys, invited_call, new_phone

TALK_S = 1.5


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'server.db'}", tmp_path / "data")
    with run_server(replace(settings, relay_port=0)) as running:
        yield running


def group_records(phone: Phone, call_id: str) -> list[dict[str, Any]]:
    return [r for r in phone.history.list() if r.get("call_id") == call_id]


@pytest.mark.slow
@run_async
async def test_declined_busy_and_joined_group_calls_are_in_the_history(
    server: RunningServer, tmp_path: Path
) -> None:
    started: list[Phone] = []
    try:
        for name, auto in (("alice", True), ("bob", True), ("carol", True), ("dave", False)):
            started.append(await new_phone(server, tmp_path, name, auto_answer=auto))
        alice, bob, carol, dave = started
        other = await carol.group_call(["dave"])  # carol is in a call: busy for alice's
        daves_other = await invited_call(dave)  # ringing at dave's
        call = await alice.group_call(["bob", "carol"])
        bobs = await invited_call(bob)
        await daves_other.decline()  # dave declines carol's call
        await eventually(lambda: everyone_has_keys([call, bobs]), timeout_s=KEYS_TIMEOUT_S)
        await asyncio.sleep(TALK_S)
        await bobs.leave()
        await eventually(lambda: bobs.is_ended, timeout_s=scaled(5.0), what="bob left")
        await call.leave()
        await other.leave()

        # dave declined carol's invite: a declined group record, carol the inviter
        await eventually(
            lambda: group_records(dave, daves_other.call_id), timeout_s=scaled(5.0), what="dave"
        )
        (declined,) = group_records(dave, daves_other.call_id)
        assert declined["group"] is True and declined["peer"] == "carol", declined
        assert declined["direction"] == "incoming" and declined["result"] == "rejected"
        assert outcome_word(declined) == "declined"
        assert declined["duration_s"] == 0.0 and declined["answered_unix"] is None
        assert {"carol", "dave"} <= set(declined["members"]), declined

        # carol was in her own call: alice's invite was answered busy, and is in her history
        await eventually(
            lambda: group_records(carol, call.call_id), timeout_s=scaled(5.0), what="carol"
        )
        (busy,) = group_records(carol, call.call_id)
        assert busy["result"] == "busy" and busy["peer"] == "alice", busy
        assert outcome_word(busy) == "busy"

        # bob joined and left: answered, with the members and how long he was in
        await eventually(lambda: group_records(bob, call.call_id), timeout_s=scaled(5.0))
        (joined,) = group_records(bob, call.call_id)
        assert joined["group"] is True and joined["peer"] == "alice", joined
        assert joined["direction"] == "incoming" and outcome_word(joined) == "answered"
        assert {"alice", "bob"} <= set(joined["members"]), joined
        assert TALK_S <= joined["duration_s"] < TALK_S + scaled(15.0), joined
        assert joined["answered_unix"] >= joined["started_unix"]

        # alice placed it: outgoing, answered, the invitees as the peer
        await eventually(lambda: group_records(alice, call.call_id), timeout_s=scaled(5.0))
        (placed,) = group_records(alice, call.call_id)
        assert placed["direction"] == "outgoing" and placed["peer"] == "bob, carol", placed
        assert outcome_word(placed) == "answered" and placed["duration_s"] >= TALK_S
        # carol's own call, declined by its only invitee: still a call she placed and was in
        await eventually(lambda: group_records(carol, other.call_id), timeout_s=scaled(5.0))
        assert outcome_word(group_records(carol, other.call_id)[0]) == "answered"
    finally:
        for phone in started:
            await phone.close()
