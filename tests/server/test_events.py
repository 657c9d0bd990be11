"""The push WebSocket: authentication, resume and ack, several phones, heartbeats, presence,
retention; and the storage underneath (a seq is never reused)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from pqcall.server.presence import rounded_last_seen
from pqcall.server.storage import Storage
from pqcall.server.storage.database import alembic_config, create_engine
from pqcall.signaling.messages import (
    EVENT_CALL_ACCEPTED,
    EVENT_CALL_INCOMING,
    EVENT_CALL_MISSED,
    EVENT_PRESENCE,
    Event,
)
from tests.harness import run_async, wait_until

from .conftest import RunningServer
from .pushclient import (
    QUIET_S,
    EventSocket,
    accept,
    hangup,
    initiate,
    log_in,
    register_and_login,
)

HEARTBEAT_S = 0.2
SWEEP_S = 0.05
WEEK_S = 7 * 24 * 3600.0


@pytest.fixture
def server(
    start_server: Callable[..., AbstractContextManager[RunningServer]],
) -> Iterator[RunningServer]:
    """A server with fast heartbeats and sweeps."""
    with start_server(heartbeat_interval_s=HEARTBEAT_S, sweep_interval_s=SWEEP_S) as running:
        yield running


def presence_of(client, name: str) -> dict[str, object]:
    users = client.get("/presence", params={"names": name}).json()["users"]
    return dict(users[0])


def backlog(server: RunningServer, token: str, resume: int | None = None) -> list[dict[str, Any]]:
    """The stored events a phone connecting now receives before ``ready``."""
    socket = EventSocket(server, token, resume=resume)
    socket.close()
    return socket.backlog


# ---------------------------------------------------------------- connecting


@pytest.mark.parametrize(
    ("token", "via", "resume", "code", "reason"),
    [
        pytest.param(
            None,
            "header",
            None,
            4401,
            "missing token (Authorization header or token parameter)",
            id="no-token",
        ),
        pytest.param("A" * 43, "header", None, 4401, "bearer token is not valid", id="bad-token"),
        pytest.param(
            "A" * 43, "query", None, 4401, "bearer token is not valid", id="bad-query-token"
        ),
        pytest.param("x!", "query", None, 4401, "bearer token is not valid", id="not-base64"),
        pytest.param(
            "good", "header", "-1", 4400, "resume must be a non-negative integer", id="resume"
        ),
        pytest.param(
            "good", "query", "1e3", 4400, "resume must be a non-negative integer", id="resume-2"
        ),
    ],
)
def test_refused_connections_are_closed_with_a_reason(
    server, account, token, via, resume, code, reason
):
    alice = account("alice")
    if token == "good":
        token = alice.token
    socket = EventSocket(server, token, via=via, resume=resume, wait_ready=False)
    assert socket.wait_closed() == (code, reason)


def test_token_in_the_query_for_browsers(server, account):
    alice = account("alice")
    socket = EventSocket(server, alice.token, via="query")
    assert socket.heartbeat_s == HEARTBEAT_S
    assert presence_of(alice.client, "alice")["online"] is True
    socket.close()


def test_expired_token_closes_the_connection(server, account):
    alice = account("alice")
    socket = EventSocket(server, alice.token)
    server.clock.advance(3600 + 1)
    assert socket.wait_closed() == (4401, "bearer token has expired; log in again")


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("not json", id="not-json"),
        pytest.param('{"ack": -1}', id="negative"),
        pytest.param('{"ack": true}', id="bool"),
        pytest.param('{"ack": 1, "more": 2}', id="extra"),
        pytest.param('{"type": "hello"}', id="unknown"),
        pytest.param('{"ack": 1' + " " * 2000 + "}", id="long"),
    ],
)
def test_bad_messages_close_the_connection(server, account, message):
    alice = account("alice")
    socket = EventSocket(server, alice.token)
    socket.ws.send(message)
    code, reason = socket.wait_closed()
    assert code == 4400
    assert reason in (
        'expected {"ack": <seq>} or {"type": "pong"}',
        "message is not valid JSON",
        "message is too long",
    )


# ---------------------------------------------------------------- resume and ack


def test_resume_gets_exactly_the_missed_events_and_ack_deletes_them(server, account):
    alice, bob = account("alice"), account("bob")
    calls = [initiate(alice.client, "bob")[0] for _ in range(3)]

    # bob was offline: all three, in order, before "ready"
    first = EventSocket(server, bob.token)
    assert [e["type"] for e in first.backlog] == [EVENT_CALL_INCOMING] * 3
    assert [e["payload"]["call_id"] for e in first.backlog] == calls
    seqs = [e["seq"] for e in first.backlog]
    assert seqs == sorted(seqs)
    for event in first.backlog:
        Event.model_validate(event)
    first.close()

    # resume after the first: the other two
    resumed = EventSocket(server, bob.token, resume=seqs[0])
    assert [e["seq"] for e in resumed.backlog] == seqs[1:]
    # acknowledging the second deletes the first two, for every later connection
    resumed.ack(seqs[1])
    resumed.close()
    wait_until(lambda: len(backlog(server, bob.token)) == 1, "the ack")
    again = EventSocket(server, bob.token, resume=0)
    assert [e["seq"] for e in again.backlog] == seqs[2:]

    # live events follow the backlog on the same connection
    accept(bob.client, calls[0])
    live = again.expect(EVENT_CALL_ACCEPTED)
    assert live["seq"] > seqs[2]
    again.ack(live["seq"])
    again.close()
    wait_until(lambda: backlog(server, bob.token) == [], "the ack of everything")

    # a seq is never reused, even after the newest events were deleted
    hangup(alice.client, calls[1])
    fresh = EventSocket(server, bob.token, resume=live["seq"])
    assert [e["type"] for e in fresh.backlog] == [EVENT_CALL_MISSED]
    assert fresh.backlog[0]["seq"] > live["seq"]
    fresh.close()


def test_events_reach_every_phone_of_an_account(server, account):
    alice, bob = account("alice"), account("bob")
    phones = [EventSocket(server, bob.token) for _ in range(3)]
    call_id, _ = initiate(alice.client, "bob")
    for phone in phones:
        assert phone.expect(EVENT_CALL_INCOMING)["payload"]["call_id"] == call_id
    phones[0].close()
    accept(bob.client, call_id)
    for phone in phones[1:]:
        assert phone.expect(EVENT_CALL_ACCEPTED)["payload"]["state"] == "active"
        phone.close()


def test_ack_beyond_what_was_delivered_keeps_the_rest(server, account):
    alice, bob = account("alice"), account("bob")
    socket = EventSocket(server, bob.token)
    socket.ack(10**15)  # nothing delivered yet: nothing to forget
    initiate(alice.client, "bob")
    event = socket.expect(EVENT_CALL_INCOMING)
    socket.close()
    assert [e["seq"] for e in backlog(server, bob.token)] == [event["seq"]]


# ---------------------------------------------------------------- heartbeats and presence


def test_heartbeat_drops_a_dead_connection(server, account):
    alice, bob = account("alice"), account("bob")
    initiate(alice.client, "bob")  # makes them contacts
    watcher = EventSocket(server, bob.token)
    assert [e["type"] for e in watcher.backlog] == [EVENT_CALL_INCOMING]

    # a phone that answers its pings stays connected
    deadline = time.monotonic() + 4 * HEARTBEAT_S
    while time.monotonic() < deadline:
        with pytest.raises(TimeoutError):
            watcher.next_event(timeout=HEARTBEAT_S / 2)

    # one that does not is dropped after two unanswered pings, and goes offline
    silent = EventSocket(server, alice.token)
    started = time.monotonic()
    assert watcher.expect(EVENT_PRESENCE)["payload"]["online"] is True
    offline = watcher.expect(EVENT_PRESENCE)["payload"]  # the watcher answers its pings
    assert (offline["username"], offline["online"]) == ("alice", False)
    assert time.monotonic() - started < 3 * HEARTBEAT_S + 1
    assert silent.wait_closed() == (4408, "no answer to two pings")
    assert presence_of(bob.client, "alice")["online"] is False
    watcher.close()


def test_presence_goes_to_contacts_only(server, account):
    # contacts: those alice called (a stranger who rang her is not: tests/security)
    alice, bob, carol = account("alice"), account("bob"), account("carol")
    call_id, _ = initiate(alice.client, "bob")
    hangup(alice.client, call_id)
    bob_events, carol_events = EventSocket(server, bob.token), EventSocket(server, carol.token)
    bob_events.backlog.clear()
    server.clock.advance(10)
    assert presence_of(bob.client, "alice")["online"] is False

    alice_phone = EventSocket(server, alice.token)
    online = bob_events.expect(EVENT_PRESENCE, ignore=(EVENT_CALL_MISSED,))["payload"]
    assert online == {
        "username": "alice",
        "online": True,
        "last_seen": rounded_last_seen(server.clock.now),
    }
    assert presence_of(bob.client, "alice") == online

    # a second phone of alice changes nothing; closing the last one does
    second_phone = EventSocket(server, alice.token)
    alice_phone.close()
    bob_events.assert_quiet()
    server.clock.advance(5)
    second_phone.close()
    offline = bob_events.expect(EVENT_PRESENCE)["payload"]
    assert offline == {
        "username": "alice",
        "online": False,
        "last_seen": rounded_last_seen(server.clock.now),
    }
    carol_events.assert_quiet(QUIET_S)
    bob_events.close()
    carol_events.close()


def test_stopping_the_server_closes_connections(start_server):
    with start_server() as running:
        _, token = register_and_login(running, "alice")
        socket = EventSocket(running, token)
        assert running.app.state.context.extras["events"].connection_count == 1
    assert socket.wait_closed()[0] == 1012  # "service restart": reconnect with resume


# ---------------------------------------------------------------- retention


def test_unacknowledged_events_expire_after_a_week(server, account):
    alice, bob = account("alice"), account("bob")
    old, _ = initiate(alice.client, "bob")
    hangup(alice.client, old)
    server.clock.advance(WEEK_S - 60)
    with server.client(log_in(server, alice.identity, "alice")) as alice_client:  # new token
        recent, _ = initiate(alice_client, "bob")
        hangup(alice_client, recent)
    server.clock.advance(120)
    token = log_in(server, bob.identity, "bob")

    # the old call's events are more than a week old now; the recent ones stay
    wait_until(lambda: len(backlog(server, token)) == 2, "the retention pass")
    kept = backlog(server, token)
    assert [e["type"] for e in kept] == [EVENT_CALL_INCOMING, EVENT_CALL_MISSED]
    assert {e["payload"]["call_id"] for e in kept} == {recent}


@run_async
async def test_trim_keeps_the_newest_events_per_account(db_url):
    storage = await Storage.open(db_url)
    try:
        alice = await storage.accounts.create_account("alice", b"i", b"b", 1, 0.0)
        bob = await storage.accounts.create_account("bob", b"j", b"b", 1, 0.0)
        alice_seqs = [
            await storage.events.add_event(alice.id, "t", {"n": n}, 0.0) for n in range(5)
        ]
        bob_seqs = [await storage.events.add_event(bob.id, "t", {"n": n}, 0.0) for n in range(2)]
        assert await storage.events.trim_events(3) == 2
        assert [e.seq for e in await storage.events.events_after(alice.id, 0)] == alice_seqs[2:]
        assert [e.seq for e in await storage.events.events_after(bob.id, 0)] == bob_seqs
        assert await storage.events.trim_events(3) == 0
    finally:
        await storage.close()


@run_async
async def test_event_seq_survives_the_upgrade_and_is_never_reused(db_url):
    # a database of the first schema, with events in it
    engine = create_engine(db_url)
    try:
        async with engine.begin() as connection:

            def upgrade_to_first(sync_connection: object) -> None:
                command.upgrade(alembic_config(sync_connection), "0001")  # type: ignore[arg-type]

            await connection.run_sync(upgrade_to_first)
    finally:
        await engine.dispose()
    storage = await Storage.open(db_url, migrate=False)
    try:
        # written by hand: today's create_account also writes tables of later revisions
        async with storage.engine.begin() as connection:
            alice_id = (
                await connection.execute(
                    text(
                        "INSERT INTO accounts (username, identity, created_at)"
                        " VALUES ('alice', :identity, 0) RETURNING id"
                    ),
                    {"identity": b"i"},
                )
            ).scalar_one()
        alice = await storage.accounts.get_account(alice_id)
        assert alice is not None
        seqs = [await storage.events.add_event(alice.id, "t", {"n": n}, 0.0) for n in range(3)]
        await storage.events.delete_events_through(alice.id, seqs[0])
    finally:
        await storage.close()

    storage = await Storage.open(db_url)  # migrates to the newest schema
    try:
        kept = await storage.events.events_after(alice.id, 0)
        assert [(e.seq, e.payload) for e in kept] == [(seqs[1], {"n": 1}), (seqs[2], {"n": 2})]
        assert await storage.events.delete_events_through(alice.id, seqs[-1]) == 2
        assert await storage.events.add_event(alice.id, "t", {}, 0.0) > seqs[-1]
    finally:
        await storage.close()
