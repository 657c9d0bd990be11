"""The media relay: its pure table on a fake clock, then the UDP wrapper on loopback.

Timing bounds only ever allow more slack on slow machines: scale them with
``PQCALL_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.exceptions import LocalProtocolError
from pqcall.server.relay import MediaRelay
from pqcall.server.relay_table import (
    DropReason,
    Outgoing,
    RelayFull,
    RelayTable,
    ReleaseReason,
    Role,
)
from pqcall.transport.relay_wire import (
    ACK_MAGIC,
    ACK_PEER_BOUND,
    ACK_PEER_WAITING,
    BIND_MAGIC,
    CHALLENGE_MAGIC,
    MAGIC_LENGTH,
    RelayTarget,
)
from tests.harness import TIMEOUT_SCALE, eventually, run_bounded
from tests.harness import UdpPeer as Phone  # a UDP endpoint that keeps what it receives
from tests.harness import open_udp_peer as open_phone

TIMEOUT_S = 10.0 * TIMEOUT_SCALE  # a whole socket test, start to close
QUIET_S = 0.1 * TIMEOUT_SCALE  # how long to wait for a datagram that must not arrive
POLL_S = 0.001

ALICE = ("192.0.2.1", 4000)  # the caller's address
BOB = ("198.51.100.2", 5000)  # the callee's address
EVE = ("203.0.113.3", 6000)  # a stranger
MEDIA = b"\x90" + bytes(40)  # stands for an SFrame packet

T = TypeVar("T")


def counting_tokens() -> Callable[[int], bytes]:
    """A deterministic token source: 1, 2, 3... as big-endian bytes."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


RELAY_AT = ("127.0.0.1", 5001)  # the relay, as phones of the pure-table tests address it
_targets: dict[tuple[bytes, Any], RelayTarget] = {}  # one bind counter per grant and relay


def target(token: bytes, relay: Any = RELAY_AT) -> RelayTarget:
    """The phone's side of ``token``'s grant (its bind counter grows across calls)."""
    return _targets.setdefault((token, relay), RelayTarget(relay, token))


def bind(token: bytes) -> bytes:
    """A fresh bind of ``token``'s grant (the next counter)."""
    return target(token).bind


def answer(token: bytes, challenge: bytes, relay: Any = RELAY_AT) -> bytes:
    """The grant's answer to ``challenge`` (asserts that it authenticates)."""
    data = target(token, relay).answer(challenge, relay)
    assert data is not None
    return data


def bind_via(table: RelayTable, token: bytes, addr: Any, now: float) -> Outgoing | None:
    """A bind from ``addr`` and, if the table challenges, the answer: the ack (or None)."""
    out = table.receive_datagram(bind(token), addr, now=now)
    if out is None or out.data[:MAGIC_LENGTH] != CHALLENGE_MAGIC:
        return out
    assert out.address == addr
    return table.receive_datagram(answer(token, out.data), addr, now=now)


def ack(state: int) -> bytes:
    return ACK_MAGIC + bytes([state])


def bound_table(**options: Any) -> tuple[RelayTable, Any]:
    """A table with call "c1" allocated at t=0 and both parties bound."""
    table = RelayTable(token_source=counting_tokens(), **options)
    allocation = table.allocate("c1", now=0.0)
    bind_via(table, allocation.caller_token, ALICE, now=0.0)
    bind_via(table, allocation.callee_token, BOB, now=0.0)
    return table, allocation


# the pure table


def test_allocation_carries_two_distinct_tokens_and_its_limits():
    table = RelayTable(token_source=counting_tokens(), idle_timeout_s=30, max_lifetime_s=600)
    allocation = table.allocate("c1", now=5.0)
    assert allocation.call_id == "c1"
    assert allocation.caller_token == (1).to_bytes(16, "big")
    assert allocation.callee_token == (2).to_bytes(16, "big")
    assert allocation.token(Role.CALLEE) == allocation.callee_token
    assert (allocation.created_at, allocation.expires_at) == (5.0, 605.0)
    assert allocation.idle_timeout_s == 30
    assert allocation.max_lifetime_s == 600


def test_allocate_is_idempotent_while_live():
    table = RelayTable(token_source=counting_tokens())
    assert table.allocate("c1", now=0.0) is table.allocate("c1", now=1.0)
    assert table.stats().allocations_total == 1


def test_bind_is_acked_with_the_peer_state():
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    first = bind_via(table, allocation.caller_token, ALICE, now=0.0)
    assert first == Outgoing(ack(ACK_PEER_WAITING), ALICE, is_forward=False)
    second = bind_via(table, allocation.callee_token, BOB, now=0.0)
    assert second == Outgoing(ack(ACK_PEER_BOUND), BOB, is_forward=False)
    again = table.receive_datagram(bind(allocation.caller_token), ALICE, now=1.0)  # keepalive
    assert again == Outgoing(ack(ACK_PEER_BOUND), ALICE, is_forward=False)
    assert table.bound_address("c1", Role.CALLER) == ALICE
    assert table.stats().binds == 3
    assert table.stats().challenges == 2  # the first bind of each address, not the keepalive


def test_the_party_that_bound_first_is_told_at_once_when_the_other_binds():
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    bind_via(table, allocation.caller_token, ALICE, now=0.0)
    assert table.notices() == []
    bind_via(table, allocation.callee_token, BOB, now=0.1)
    assert table.notices() == [Outgoing(ack(ACK_PEER_BOUND), ALICE, is_forward=False)]
    assert table.notices() == []  # handed out once
    bind_via(table, allocation.callee_token, BOB, now=0.2)  # a keepalive: nothing new
    bind_via(table, allocation.caller_token, ("192.0.2.1", 4444), now=0.3)  # a move
    assert table.notices() == []


def test_media_is_forwarded_both_ways_unchanged():
    table, _ = bound_table()
    assert table.receive_datagram(MEDIA, ALICE, now=0.1) == Outgoing(MEDIA, BOB, is_forward=True)
    assert table.receive_datagram(b"x" * 200, BOB, now=0.1) == Outgoing(
        b"x" * 200, ALICE, is_forward=True
    )
    stats = table.stats()
    assert (stats.packets_forwarded, stats.bytes_forwarded) == (2, len(MEDIA) + 200)
    assert stats.packets_dropped == 0


def test_media_before_the_peer_binds_is_dropped():
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    bind_via(table, allocation.caller_token, ALICE, now=0.0)
    assert table.receive_datagram(MEDIA, ALICE, now=0.0) is None
    assert table.stats().dropped[DropReason.UNBOUND_PEER] == 1


def test_strangers_are_dropped_and_counted():
    table, _ = bound_table()
    assert table.receive_datagram(MEDIA, EVE, now=0.1) is None
    assert table.receive_datagram(bind(bytes(16)), EVE, now=0.1) is None  # unknown grant
    assert table.receive_datagram(BIND_MAGIC, EVE, now=0.1) is None
    assert table.receive_datagram(BIND_MAGIC + b"\x02short", EVE, now=0.1) is None
    dropped = table.stats().dropped
    assert dropped[DropReason.UNKNOWN_ADDRESS] == 1
    assert dropped[DropReason.BAD_BIND] == 3


def test_one_address_cannot_bind_both_parties():
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    bind_via(table, allocation.caller_token, ALICE, now=0.0)
    assert bind_via(table, allocation.callee_token, ALICE, now=0.0) is None
    assert table.bound_address("c1", Role.CALLEE) is None
    assert table.stats().dropped[DropReason.BAD_BIND] == 1


def test_rebinding_moves_a_party_and_forgets_the_old_address():
    table, allocation = bound_table()
    new_alice = ("192.0.2.1", 4444)
    assert bind_via(table, allocation.caller_token, new_alice, now=1.0) == Outgoing(
        ack(ACK_PEER_BOUND), new_alice, is_forward=False
    )
    assert table.receive_datagram(MEDIA, BOB, now=1.0) == Outgoing(MEDIA, new_alice, True)
    assert table.receive_datagram(MEDIA, ALICE, now=1.0) is None
    stats = table.stats()
    assert stats.rebinds == 1
    assert stats.dropped[DropReason.UNKNOWN_ADDRESS] == 1


def test_a_bind_shaped_packet_without_a_live_token_is_media_from_a_bound_party():
    table, _ = bound_table()
    lookalike = bind(b"\xff" * 16)  # an SFrame packet may start with b"PQRB" by chance
    assert table.receive_datagram(lookalike, ALICE, now=0.1) == Outgoing(lookalike, BOB, True)


def test_a_newer_call_takes_an_address_over():
    table, _ = bound_table()
    second = table.allocate("c2", now=1.0)
    bind_via(table, second.caller_token, ALICE, now=1.0)
    assert table.bound_address("c1", Role.CALLER) is None
    assert table.bound_address("c2", Role.CALLER) == ALICE
    assert table.receive_datagram(MEDIA, BOB, now=1.0) is None  # c1's caller is gone
    assert table.stats().dropped[DropReason.UNBOUND_PEER] == 1


def test_release_stops_forwarding_and_invalidates_the_tokens():
    table, allocation = bound_table()
    assert table.release("c1")
    assert not table.release("c1")
    assert table.receive_datagram(MEDIA, ALICE, now=0.1) is None
    assert table.receive_datagram(bind(allocation.caller_token), ALICE, now=0.1) is None
    stats = table.stats()
    assert stats.allocations_active == 0
    assert stats.released[ReleaseReason.RELEASED] == 1
    assert stats.dropped[DropReason.UNKNOWN_ADDRESS] == 1
    assert stats.dropped[DropReason.BAD_BIND] == 1


def test_idle_allocations_expire_on_the_timer():
    table, _ = bound_table(idle_timeout_s=10.0)
    table.receive_datagram(MEDIA, ALICE, now=4.0)  # activity postpones expiry
    assert table.get_timer() == 14.0
    assert table.handle_timer(now=13.9) == []
    assert len(table) == 1
    ended = table.handle_timer(now=14.0)
    assert [(e.call_id, e.reason) for e in ended] == [("c1", ReleaseReason.IDLE)]
    assert table.get_timer() is None
    assert table.stats().released[ReleaseReason.IDLE] == 1


def test_an_expired_allocation_forwards_nothing_even_before_the_timer():
    table, _ = bound_table(idle_timeout_s=10.0)
    assert table.receive_datagram(MEDIA, ALICE, now=10.0) is None
    assert table.stats().released[ReleaseReason.IDLE] == 1


def test_lifetime_ends_even_a_busy_allocation():
    table, _ = bound_table(idle_timeout_s=10.0, max_lifetime_s=25.0)
    for now in range(1, 25):
        assert table.receive_datagram(MEDIA, ALICE, now=float(now)) is not None
    assert table.get_timer() == 25.0
    assert table.receive_datagram(MEDIA, ALICE, now=25.0) is None
    assert table.stats().released[ReleaseReason.LIFETIME] == 1


def test_timer_sweeps_are_coalesced():
    table = RelayTable(token_source=counting_tokens(), idle_timeout_s=10.0)  # 1 s resolution
    table.allocate("c1", now=0.0)
    assert table.get_timer() == 10.0
    assert table.handle_timer(now=9.8) == []
    assert table.get_timer() == pytest.approx(10.8)  # not 10.0: at most one sweep a second
    assert [e.call_id for e in table.handle_timer(now=10.8)] == ["c1"]


def test_packet_rate_limit_per_direction():
    table, _ = bound_table(packets_per_s=50.0, burst_s=0.1)  # 5-packet burst
    forwarded = [table.receive_datagram(MEDIA, ALICE, now=1.0) is not None for _ in range(8)]
    assert forwarded == [True] * 5 + [False] * 3
    assert table.receive_datagram(MEDIA, BOB, now=1.0) is not None  # the other direction
    assert table.receive_datagram(MEDIA, ALICE, now=1.02) is not None  # one packet earned
    assert table.stats().dropped[DropReason.RATE_LIMITED] == 3


def test_byte_rate_limit_per_direction():
    table, _ = bound_table(bytes_per_s=100_000.0, burst_s=1.0)
    big = bytes(60_000)
    assert table.receive_datagram(big, ALICE, now=1.0) is not None
    assert table.receive_datagram(big, ALICE, now=1.0) is None  # 40 000 bytes left
    assert table.receive_datagram(bytes(40_000), ALICE, now=1.0) is not None
    assert table.receive_datagram(big, ALICE, now=1.6) is not None  # 60 000 earned
    stats = table.stats()
    assert stats.dropped[DropReason.RATE_LIMITED] == 1
    assert stats.bytes_forwarded == 160_000


def test_the_default_limits_carry_a_voice_call():
    table, _ = bound_table()
    now = 1.0
    for _ in range(50 * 60):  # a minute of 20 ms packets of 160 bytes, both ways
        now += 0.02
        assert table.receive_datagram(bytes(160), ALICE, now=now) is not None
        assert table.receive_datagram(bytes(160), BOB, now=now) is not None


def test_full_relay_refuses_new_allocations():
    table = RelayTable(token_source=counting_tokens(), max_allocations=2)
    table.allocate("c1", now=0.0)
    table.allocate("c2", now=0.0)
    with pytest.raises(RelayFull, match=r"relay is full \(2 calls\)"):
        table.allocate("c3", now=0.0)


def test_a_broken_token_source_is_refused():
    with pytest.raises(LocalProtocolError, match="token source repeated a token"):
        RelayTable(token_source=lambda n: bytes(n)).allocate("c1", now=0.0)
    with pytest.raises(LocalProtocolError, match="token source gave 8 bytes, not 16"):
        RelayTable(token_source=lambda n: bytes(8)).allocate("c1", now=0.0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"P",
        BIND_MAGIC,
        BIND_MAGIC + bytes(17),
        BIND_MAGIC + b"\x02" + bytes(40),
        BIND_MAGIC + b"\x02" + bytes(41),
        b"PQRR\x02" + bytes(48),
        b"PQRR",
        ACK_MAGIC + b"\x01",
        bytes(65_535),
    ],
    ids=[
        "empty",
        "one-byte",
        "magic-only",
        "long-bind",
        "short-v2",
        "zero-v2",
        "zero-answer",
        "answer-magic",
        "ack",
        "huge",
    ],
)
def test_no_datagram_raises(data):
    table, _ = bound_table()
    for addr in (ALICE, EVE):
        table.receive_datagram(data, addr, now=0.5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([ALICE, BOB, EVE, ("192.0.2.1", 4444)]),
            st.sampled_from(
                ["caller-bind", "callee-bind", "stray-bind", "media", "replay", "answer"]
            ),
            st.floats(min_value=0.0, max_value=0.05),
        ),
        max_size=60,
    )
)
def test_forwarding_only_ever_joins_the_two_bound_parties(steps):
    table = RelayTable(token_source=counting_tokens(), packets_per_s=100.0)
    allocation = table.allocate("c1", now=0.0)
    caller = RelayTarget(RELAY_AT, allocation.caller_token)
    callee = RelayTarget(RELAY_AT, allocation.callee_token)
    stray = RelayTarget(RELAY_AT, b"\xee" * 16)
    seen: list[bytes] = [MEDIA]  # every bind sent (replayed), then challenges seen
    challenges: list[tuple[bytes, RelayTarget]] = []
    handled = 0  # datagrams given to the table
    now = 0.0
    for addr, kind, gap_s in steps:
        now += gap_s
        if kind == "answer":  # whoever is at addr answers the last challenge (any grant's)
            if not challenges:
                continue
            data = challenges[-1][1].answer(challenges[-1][0], RELAY_AT) or MEDIA
        elif kind.endswith("bind"):
            phone = {"caller-bind": caller, "callee-bind": callee}.get(kind, stray)
            data = phone.bind
            seen.append(data)
        elif kind == "replay":
            data = seen[-1]
        else:
            data = MEDIA
        bound_before = (
            table.bound_address("c1", Role.CALLER),
            table.bound_address("c1", Role.CALLEE),
        )
        out = table.receive_datagram(data, addr, now=now)
        handled += 1
        bound_after = (
            table.bound_address("c1", Role.CALLER),
            table.bound_address("c1", Role.CALLEE),
        )
        if out is not None and out.is_forward:
            assert out.data == data
            assert None not in bound_before and bound_before[0] != bound_before[1]
            assert (addr, out.address) in (bound_before, bound_before[::-1])
        elif out is not None:
            assert out.address == addr
            if out.data[:MAGIC_LENGTH] == CHALLENGE_MAGIC:
                phone = caller if data[5:21] == caller.keys.grant_id else callee
                challenges.append((out.data, phone))
            else:  # an ack: addr is bound now, and only ever by a bind or answer of its grant
                assert addr in bound_after
        if bound_after != bound_before:  # only an answer to a challenge sent to addr moves
            assert kind == "answer" and addr in bound_after
    stats = table.stats()
    assert (
        stats.packets_forwarded + stats.packets_dropped + stats.binds + stats.challenges == handled
    )


# the UDP wrapper on loopback


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one socket test in a fresh event loop, bounded by the scaled timeout."""
    return run_bounded(main(), TIMEOUT_S)


async def wait_until(predicate: Callable[[], bool]) -> None:
    await eventually(predicate, interval_s=POLL_S)


async def bind_phone(phone: Phone, token: bytes, relay: MediaRelay) -> None:
    """Bind ``phone`` with ``token``'s grant: the bind, then the answer to the challenge."""
    phone.send(target(token, relay.address).bind, relay.address)
    await wait_until(lambda: bool(phone.received))
    phone.send(answer(token, phone.received[-1], relay.address), relay.address)


async def bound_phones(relay: MediaRelay, call_id: str = "c1") -> tuple[Phone, Phone]:
    allocation = relay.allocate(call_id)
    caller, callee = await open_phone(), await open_phone()
    await bind_phone(caller, allocation.caller_token, relay)
    await wait_until(lambda: caller.received[-1:] == [ack(ACK_PEER_WAITING)])
    await bind_phone(callee, allocation.callee_token, relay)
    await wait_until(lambda: callee.received[-1:] == [ack(ACK_PEER_BOUND)])
    await wait_until(lambda: caller.received[-1:] == [ack(ACK_PEER_BOUND)])  # told at once
    caller.received.clear()
    callee.received.clear()
    return caller, callee


def test_relay_forwards_only_between_the_two_bound_parties():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            caller, callee = await bound_phones(relay)
            stranger = await open_phone()
            for i in range(5):
                caller.send(b"to-callee %d" % i, relay.address)
                callee.send(b"to-caller %d" % i, relay.address)
                stranger.send(b"intrusion %d" % i, relay.address)
            await wait_until(lambda: len(caller.received) == len(callee.received) == 5)
            await wait_until(lambda: relay.stats().dropped[DropReason.UNKNOWN_ADDRESS] == 5)
            await asyncio.sleep(QUIET_S)
            assert callee.received == [b"to-callee %d" % i for i in range(5)]
            assert caller.received == [b"to-caller %d" % i for i in range(5)]
            assert stranger.received == []
            stats = relay.stats()
            assert stats.packets_forwarded == 10
            assert stats.allocations_active == 1
            for phone in (caller, callee, stranger):
                phone.close()

    run(main)


def test_relay_ignores_a_wrong_token():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            allocation = relay.allocate("c1")
            intruder = await open_phone()
            wrong = bytes(a ^ 1 for a in allocation.caller_token)
            intruder.send(target(wrong, relay.address).bind, relay.address)
            await wait_until(lambda: relay.stats().dropped[DropReason.BAD_BIND] == 1)
            await asyncio.sleep(QUIET_S)
            assert intruder.received == []  # no ack, no oracle
            assert relay.stats().binds == 0
            intruder.close()

    run(main)


def test_release_stops_forwarding():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            caller, callee = await bound_phones(relay)
            assert relay.release("c1")
            assert relay.allocation("c1") is None
            caller.send(MEDIA, relay.address)
            await wait_until(lambda: relay.stats().dropped[DropReason.UNKNOWN_ADDRESS] == 1)
            await asyncio.sleep(QUIET_S)
            assert callee.received == []
            caller.close()
            callee.close()

    run(main)


def test_idle_allocation_is_released_by_the_timer():
    idle_s = 0.2 * TIMEOUT_SCALE

    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0, idle_timeout_s=idle_s) as relay:
            caller, callee = await bound_phones(relay)
            await wait_until(lambda: relay.stats().allocations_active == 0)
            assert relay.stats().released[ReleaseReason.IDLE] == 1
            caller.send(MEDIA, relay.address)
            await asyncio.sleep(QUIET_S)
            assert callee.received == []
            caller.close()
            callee.close()

    run(main)


def test_rate_limit_drops_the_excess_and_counts_it():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0, packets_per_s=10.0, burst_s=1.0) as relay:
            caller, callee = await bound_phones(relay)
            loop = asyncio.get_running_loop()
            start = loop.time()
            for i in range(30):
                caller.send(b"packet %d" % i, relay.address)

            def handled() -> int:
                stats = relay.stats()
                return stats.packets_forwarded + stats.dropped[DropReason.RATE_LIMITED]

            await wait_until(lambda: handled() == 30)
            elapsed_s = loop.time() - start
            await wait_until(lambda: len(callee.received) == relay.stats().packets_forwarded)
            # the 10-packet burst, plus what 10/s earned while the datagrams were in flight
            assert 10 <= len(callee.received) <= 10 + 10 * elapsed_s + 1
            assert relay.stats().dropped[DropReason.RATE_LIMITED] == 30 - len(callee.received)
            assert callee.received[:10] == [b"packet %d" % i for i in range(10)]
            caller.close()
            callee.close()

    run(main)


def test_nat_rebinding_moves_the_party():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            caller, callee = await bound_phones(relay)
            moved = await open_phone()  # the caller's NAT picked a new port
            allocation = relay.allocation("c1")
            assert allocation is not None
            await bind_phone(moved, allocation.caller_token, relay)
            await wait_until(lambda: moved.received[1:] == [ack(ACK_PEER_BOUND)])
            callee.send(MEDIA, relay.address)
            await wait_until(lambda: moved.received[2:] == [MEDIA])
            assert caller.received == []
            for phone in (caller, callee, moved):
                phone.close()

    run(main)


def test_relay_misuse_is_a_local_error():
    async def main() -> None:
        relay = MediaRelay("127.0.0.1", 0)
        with pytest.raises(LocalProtocolError, match="media relay is not running"):
            relay.allocate("c1")
        with pytest.raises(LocalProtocolError, match="media relay is not started"):
            _ = relay.address
        await relay.start()
        with pytest.raises(LocalProtocolError, match="media relay can only be started once"):
            await relay.start()
        await relay.close()
        await relay.close()

    run(main)
