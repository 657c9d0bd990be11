"""Event order and acks with several writers (issue 18's ordering bug).

- One account's events commit in seq order even when two processes (here: two
  engines on one PostgreSQL) write them at once: a phone that saw seq n never
  sees a smaller seq of its own appear later. Shown to fail without the
  per-account lock (``order_lock = False``: the old insertion path).
- An ack deletes only what the connection delivered: an event stored by
  another process and not pushed here survives the ack of a later one (the old
  "delete through n" lost it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from sqlalchemy import insert, select

from pqcall.server.storage import Storage
from pqcall.server.storage.models import events
from tests.harness import run_async, scaled, wait_until

from .conftest import PG_ENV, RunningServer, reset_postgresql
from .pushclient import EventSocket, initiate, register_and_login

HOLD_S = scaled(1.0)  # how long B keeps its transaction open at most, waiting for A


async def _late_commit_order(url: str, *, order_lock: bool) -> tuple[int, int, bool]:
    """Writer B inserts for one account and holds its transaction open; writer A inserts
    meanwhile; then B commits. B's seq, A's seq, and whether A committed before B."""
    node_a, node_b = await Storage.open(url), await Storage.open(url, migrate=False)
    try:
        for node in (node_a, node_b):
            node.events.order_lock = order_lock
        account = await node_a.accounts.create_account("bob", b"i" * 32, b"b", 1, 0.0)
        b_inserted = asyncio.Event()

        async def writer_a() -> int:
            await b_inserted.wait()
            return await node_a.events.add_event(account.id, "a", {}, 1.0)

        task = asyncio.create_task(writer_a())
        async with node_b.transaction() as connection:
            (seq_b,) = await node_b.events.add_events(connection, [(account.id, "b", {})], 1.0)
            b_inserted.set()
            # A runs now: it commits first unless it must wait for B
            await asyncio.wait({task}, timeout=HOLD_S)
            a_committed_first = task.done()
        return seq_b, await task, a_committed_first
    finally:
        await node_a.close()
        await node_b.close()


@pytest.fixture
def pg_url(pg_session_url: str | None) -> str:
    """An empty PostgreSQL database (SQLite has one writer and one server process: no race)."""
    if pg_session_url is None:
        pytest.skip(f"{PG_ENV} not set")
    reset_postgresql(pg_session_url)
    return pg_session_url


@pytest.mark.postgres
def test_one_accounts_events_commit_in_seq_order_across_processes(pg_url: str) -> None:
    db_url = pg_url

    @run_async
    async def check() -> None:
        seq_b, seq_a, a_committed_first = await _late_commit_order(db_url, order_lock=True)
        assert not a_committed_first  # A waited for B's commit ...
        assert seq_a > seq_b  # ... so commit order is seq order

    check()


@pytest.mark.postgres
def test_without_the_lock_a_smaller_seq_commits_later(pg_url: str) -> None:
    """The old path: the test above would fail on it (B's smaller seq commits after A's)."""
    db_url = pg_url

    @run_async
    async def check() -> None:
        seq_b, seq_a, a_committed_first = await _late_commit_order(db_url, order_lock=False)
        assert a_committed_first and seq_b < seq_a  # a smaller seq committed later: the bug

    check()


@pytest.fixture
def server(
    start_server: Callable[..., AbstractContextManager[RunningServer]],
) -> Iterator[RunningServer]:
    with start_server() as running:
        yield running


def test_an_ack_keeps_an_earlier_event_this_connection_did_not_deliver(
    server: RunningServer,
) -> None:
    _, alice_token = register_and_login(server, "alice")
    _, bob_token = register_and_login(server, "bob")
    storage = server.app.state.context.storage
    hub = server.app.state.context.extras["events"]
    bob = storage.accounts

    async def other_process_stores_one() -> int:
        account = await bob.get_account_by_name("bob")
        async with storage.engine.begin() as connection:  # stored, never pushed here
            result = await connection.execute(
                insert(events)
                .values(account_id=account.id, type="other.node", payload={}, created_at=0.0)
                .returning(events.c.seq)
            )
            return int(result.scalar_one())

    async def stored_seqs() -> list[int]:
        async with storage.engine.connect() as connection:
            found = await connection.execute(select(events.c.seq).order_by(events.c.seq))
            return [int(seq) for seq in found.scalars()]

    def on_server(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, hub.loop).result(10)

    bob_push = EventSocket(server, bob_token)
    earlier = on_server(other_process_stores_one())
    with server.client(alice_token) as alice:
        _, answer = initiate(alice, "bob")
        assert answer.status_code == 201
    incoming = bob_push.expect("call.incoming")
    assert incoming["seq"] > earlier
    bob_push.ack(incoming["seq"])
    wait_until(lambda: incoming["seq"] not in on_server(stored_seqs()), "the ack's delete")
    assert on_server(stored_seqs()) == [earlier]  # the old "delete through n" took it too
    bob_push.close()
    again = EventSocket(server, bob_token, resume=0)
    assert [event["seq"] for event in again.backlog] == [earlier]
    again.close()
