"""A server restarted mid-ring or mid-call loses nothing: accounts, tokens, calls, pending events.

Each test stops the uvicorn server and starts a new one on the same database
(and the same fake clock, so no timeout fires by accident).
"""

from __future__ import annotations

import pytest

from .conftest import FakeClock
from .pushclient import (
    EventSocket,
    accept,
    confirm,
    hangup,
    initiate,
    register_and_login,
)

# persistence end to end: on both databases (db_url), where the other server tests use SQLite
pytestmark = pytest.mark.usefixtures("db_url")


def test_restart_mid_ring(start_server):
    clock = FakeClock()
    with start_server(clock=clock) as first:
        _, alice = register_and_login(first, "alice")
        _, bob = register_and_login(first, "bob")
        with first.client(alice) as client:
            call_id, answer = initiate(client, "bob")
        assert answer.status_code == 201

    with start_server(clock=clock) as second:
        # the callee's phone comes online after the restart: the call is still ringing for it
        bob_events = EventSocket(second, bob)
        [incoming] = bob_events.backlog
        assert incoming["type"] == "call.incoming"
        assert incoming["payload"]["call_id"] == call_id
        with second.client(bob) as bob_client, second.client(alice) as alice_client:
            pending = bob_client.get("/call/pending/bob").json()["calls"]
            assert [call["call_id"] for call in pending] == [call_id]
            history = alice_client.get("/calls/history").json()["calls"]  # her token still works
            assert [(call["call_id"], call["state"]) for call in history] == [(call_id, "ringing")]
            alice_events = EventSocket(second, alice)
            assert accept(bob_client, call_id).status_code == 200
            assert alice_events.expect("call.accepted")["payload"]["call_id"] == call_id
            status = bob_client.get(f"/call/status/{call_id}").json()
        assert status["state"] == "active"
        assert status["offer"] is not None
        bob_events.close()
        alice_events.close()


def test_restart_mid_call(start_server):
    clock = FakeClock()
    with start_server(clock=clock) as first:
        _, alice = register_and_login(first, "alice")
        _, bob = register_and_login(first, "bob")
        alice_events, bob_events = EventSocket(first, alice), EventSocket(first, bob)
        with first.client(alice) as alice_client, first.client(bob) as bob_client:
            call_id, _ = initiate(alice_client, "bob")
            assert accept(bob_client, call_id).status_code == 200
            assert confirm(alice_client, call_id).status_code == 200
        for event_type in ("call.incoming", "call.accepted"):
            bob_events.expect(event_type)
        seen = {
            "alice": alice_events.expect("call.accepted")["seq"],
            "bob": bob_events.expect("call.confirmed")["seq"],
        }
    for events in (alice_events, bob_events):
        assert events.wait_closed()[0] == 1012

    with start_server(clock=clock) as second:
        # both phones reconnect where they left off: nothing new, the call still active
        alice_events = EventSocket(second, alice, resume=seen["alice"])
        bob_events = EventSocket(second, bob, resume=seen["bob"])
        for events in (alice_events, bob_events):  # (presence aside: who left first)
            assert [e for e in events.backlog if e["type"] != "presence"] == []
        with second.client(alice) as alice_client, second.client(bob) as bob_client:
            status = alice_client.get(f"/call/status/{call_id}").json()
            assert status["state"] == "active"
            assert status["offer"] is not None and status["confirm"] is not None
            ended = hangup(bob_client, call_id)
            assert ended.status_code == 200
        for events in (alice_events, bob_events):
            payload = events.expect("call.ended", ignore=("presence",))["payload"]
            assert (payload["reason"], payload["ended_by"]) == ("hangup", "callee")
            events.close()
