"""Relay allocations that outlive the relay: the table's snapshot/restore on a fake
clock, then the UDP relay on loopback with a real store (SQLite; PostgreSQL too when
``PQCALL_TEST_DATABASE_URL`` is set), closed and started again
on the same port and database (the process-level SIGKILL tests are in
tests/e2e/test_relay_restart.py).
"""

from __future__ import annotations

import asyncio
import time

from pqcall.server.relay import MediaRelay
from pqcall.server.relay_store import RelayStore
from pqcall.server.relay_table import DropReason, Outgoing, RelayTable, ReleaseReason, Role
from pqcall.transport.relay_wire import ACK_PEER_BOUND, CHALLENGE_MAGIC, MAGIC_LENGTH
from tests.harness import open_udp_peer as open_phone
from tests.server.test_relay import (
    ALICE,
    BOB,
    EVE,
    MEDIA,
    QUIET_S,
    ack,
    answer,
    bind,
    bind_via,
    bound_phones,
    bound_table,
    counting_tokens,
    run,
    target,
    wait_until,
)

WALL = 1_000_000.0  # the wall clock at the fake clock's 0


def restarted(table: RelayTable, now: float, **options: object) -> RelayTable:
    """A new table holding what ``table`` would have stored at ``now``."""
    fresh = RelayTable(token_source=counting_tokens(), **options)  # type: ignore[arg-type]
    for call_id in table.changed():
        stored = table.snapshot(call_id, now, WALL + now)
        if stored is not None:
            assert fresh.restore(stored, now=0.0, wall_now=WALL + now)
    return fresh


def test_a_restored_allocation_forwards_between_the_stored_addresses_at_once():
    table, _ = bound_table()
    fresh = restarted(table, now=5.0)
    assert fresh.receive_datagram(MEDIA, ALICE, now=0.1) == Outgoing(MEDIA, BOB, True)
    assert fresh.receive_datagram(MEDIA, BOB, now=0.1) == Outgoing(MEDIA, ALICE, True)
    assert fresh.bound_address("c1", Role.CALLER) == ALICE
    assert fresh.allocation("c1") is not None
    assert fresh.allocation("c1").caller_token == b""  # type: ignore[union-attr]  # no secrets


def test_the_store_holds_bind_keys_not_grant_secrets():
    table, allocation = bound_table()
    stored = table.snapshot("c1", now=1.0, wall_now=WALL + 1.0)
    assert stored is not None
    kept = repr(stored).encode() + stored.caller.key + stored.callee.key + stored.caller.grant_id
    assert allocation.caller_token not in kept and allocation.callee_token not in kept
    assert stored.caller.address == ALICE and stored.callee.address == BOB
    assert stored.expires_at == WALL + table.allocation("c1").expires_at  # type: ignore[union-attr]


def test_a_bind_replayed_after_a_restart_binds_nothing():
    table, allocation = bound_table()
    old = bind(allocation.caller_token)  # seen on the wire before the stored answer
    # the answer stored the counter of the bind before it; later keepalives were not stored
    assert table.receive_datagram(bind(allocation.caller_token), ALICE, now=0.5) is not None
    later = bind(allocation.caller_token)  # captured after the last stored state
    fresh = restarted(table, now=1.0)
    # a stale counter is a replay, even from the bound address
    assert fresh.receive_datagram(old, ALICE, now=0.1) is None
    assert fresh.stats().dropped[DropReason.REPLAYED] == 1
    # a captured bind with a counter above the stored one: a challenge, never an ack
    out = fresh.receive_datagram(later, EVE, now=0.2)
    assert out is not None and out.data[:MAGIC_LENGTH] == CHALLENGE_MAGIC
    assert out.address == EVE
    forged = bytearray(answer(allocation.caller_token, out.data))
    forged[-1] ^= 1  # eve has no key: her answer cannot authenticate
    assert fresh.receive_datagram(bytes(forged), EVE, now=0.3) is None
    assert fresh.bound_address("c1", Role.CALLER) == ALICE
    assert fresh.receive_datagram(MEDIA, EVE, now=0.4) is None
    assert fresh.receive_datagram(MEDIA, BOB, now=0.4) == Outgoing(MEDIA, ALICE, True)


def test_a_restored_party_is_challenged_even_at_its_bound_address_until_it_answers():
    table, allocation = bound_table()
    fresh = restarted(table, now=1.0)
    out = fresh.receive_datagram(bind(allocation.caller_token), ALICE, now=0.1)
    assert out is not None and out.data[:MAGIC_LENGTH] == CHALLENGE_MAGIC
    ok = fresh.receive_datagram(answer(allocation.caller_token, out.data), ALICE, now=0.2)
    assert ok == Outgoing(ack(ACK_PEER_BOUND), ALICE, is_forward=False)
    keepalive = fresh.receive_datagram(bind(allocation.caller_token), ALICE, now=0.3)
    assert keepalive == Outgoing(ack(ACK_PEER_BOUND), ALICE, is_forward=False)


def test_restored_allocations_expire_as_before():
    table, _ = bound_table(idle_timeout_s=30.0, max_lifetime_s=100.0)
    # lifetime: 100 s from allocation at t=0; restored at t=90 it has 10 s left
    fresh = restarted(table, now=90.0, idle_timeout_s=30.0, max_lifetime_s=100.0)
    assert fresh.handle_timer(9.0) == []
    ended = fresh.handle_timer(10.0)
    assert [(e.call_id, e.reason) for e in ended] == [("c1", ReleaseReason.LIFETIME)]
    # idle: counted from the restart
    table2, _ = bound_table(idle_timeout_s=30.0)
    fresh2 = restarted(table2, now=20.0, idle_timeout_s=30.0)
    assert fresh2.handle_timer(29.0) == []
    assert [e.reason for e in fresh2.handle_timer(30.0)] == [ReleaseReason.IDLE]
    # expired before the restart: not restored at all
    table3, _ = bound_table(max_lifetime_s=100.0)
    stored = table3.snapshot("c1", now=1.0, wall_now=WALL + 1.0)
    assert stored is not None
    assert not RelayTable(token_source=counting_tokens()).restore(stored, 0.0, WALL + 100.0)


def test_changed_names_made_bound_and_ended_allocations_once():
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    assert table.changed() == ["c1"]
    assert table.changed() == []
    bind_via(table, allocation.caller_token, ALICE, now=0.0)
    assert table.changed() == ["c1"]
    table.receive_datagram(bind(allocation.caller_token), ALICE, now=0.1)  # keepalive
    assert table.changed() == []
    table.release("c1")
    assert table.changed() == ["c1"]
    assert table.snapshot("c1", 0.2, WALL) is None


# the UDP relay with a SQLite store


def test_relay_restarted_on_its_database_relays_on_without_a_new_bind(db_url: str):
    url = db_url  # SQLite, and PostgreSQL when PQCALL_TEST_DATABASE_URL is set

    async def main() -> None:
        store = await RelayStore.open(url)
        relay = MediaRelay("127.0.0.1", 0, store=store)
        await relay.start()
        address = relay.address
        caller, callee = await bound_phones(relay)
        seen = target(relay.allocation("c1").callee_token, address).bind  # type: ignore[union-attr]
        caller.send(b"before", address)
        await wait_until(lambda: callee.received == [b"before"])
        await relay.close()  # writes what is pending; the rows stay
        await store.close()

        store = await RelayStore.open(url)
        again = MediaRelay(*address, store=store)
        await again.start()
        assert again.restored == 1
        assert again.allocation("c1") is None  # no grant secrets to hand out again
        eve = await open_phone()
        eve.send(seen, address)  # a bind of bob's seen before the restart, sent by eve
        await wait_until(lambda: bool(eve.received))
        assert [d[:MAGIC_LENGTH] for d in eve.received] == [CHALLENGE_MAGIC]  # no ack
        eve.send(MEDIA, address)
        await asyncio.sleep(QUIET_S)
        assert again.stats().dropped[DropReason.UNKNOWN_ADDRESS] == 1
        assert again.stats().binds == 0
        caller.send(b"after", address)
        callee.send(b"back", address)
        await wait_until(lambda: callee.received[-1:] == [b"after"])
        await wait_until(lambda: caller.received[-1:] == [b"back"])
        assert again.release("c1")
        await again.close()
        assert await store.load_live(time.time()) == []  # the hang-up deleted the row
        await store.close()
        for phone in (caller, callee, eve):
            phone.close()

    run(main)


def test_restored_allocations_still_expire_and_their_rows_go_once_used(db_url: str):
    async def main() -> None:
        store = await RelayStore.open(db_url)
        relay = MediaRelay("127.0.0.1", 0, store=store, idle_timeout_s=0.5)
        await relay.start()
        caller, callee = await bound_phones(relay)
        await relay.close()
        for used in (False, True):
            again = MediaRelay(*relay.address, store=store, idle_timeout_s=0.5)
            await again.start()
            assert again.restored == 1
            if used:  # media through it after the restart
                caller.send(MEDIA, again.address)
                await wait_until(lambda: callee.received[-1:] == [MEDIA])
            await wait_until(lambda: again.stats().allocations_active == 0)  # noqa: B023
            assert again.stats().released[ReleaseReason.IDLE] == 1
            await again.close()
            rows = await store.load_live(time.time())
            # unused here, it may be another relay's: its row stays (until its lifetime)
            assert [row.call_id for row in rows] == ([] if used else ["c1"])
        await store.close()
        for phone in (caller, callee):
            phone.close()

    run(main)


def test_a_relay_finds_an_allocation_another_process_stored(db_url: str):
    """What a separate ``pqcall relay`` does: the server wrote the row, the relay
    looks the grant up when a bind names it, and drops it when the row goes."""
    url = db_url

    async def main() -> None:
        store = await RelayStore.open(url)
        writer = RelayTable(token_source=__import__("secrets").token_bytes)
        allocation = writer.allocate("c9", now=0.0)
        stored = writer.snapshot("c9", 0.0, time.time())
        assert stored is not None
        await store.put(stored)
        relay = MediaRelay("127.0.0.1", 0, store=store, follow_store=True)
        await relay.start()
        assert relay.restored == 1  # rows present at start are restored
        await relay.close()
        relay = MediaRelay("127.0.0.1", 0, store=store, follow_store=True)
        await store.delete(["c9"])
        await relay.start()
        assert relay.restored == 0
        await store.put(stored)  # written after the relay started: found by its bind
        phone = await open_phone()
        token = allocation.caller_token
        while not phone.received:  # the phone resends binds until answered
            phone.send(target(token, relay.address).bind, relay.address)
            await asyncio.sleep(QUIET_S)
        assert phone.received[-1][:MAGIC_LENGTH] == CHALLENGE_MAGIC
        phone.send(answer(token, phone.received[-1], relay.address), relay.address)
        await wait_until(lambda: relay.stats().binds == 1)  # the answer bound it
        await store.delete(["c9"])  # the server's hang-up
        await wait_until(lambda: relay.stats().allocations_active == 0)
        await relay.close()
        await store.close()
        phone.close()

    run(main)
