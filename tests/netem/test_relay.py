"""The impairment relay on real loopback UDP sockets.

Statistical bounds are a few standard deviations wide (each comment derives its own). Timing
bounds only ever allow more slack on slow machines: scale them with
``PQCALL_TEST_TIMEOUT_SCALE``.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import pytest

from pqcall.exceptions import LocalProtocolError
from pqcall.netem import (
    Address,
    Direction,
    Impairment,
    ImpairmentModel,
    ImpairmentRelay,
)

TIMEOUT_SCALE = float(os.environ.get("PQCALL_TEST_TIMEOUT_SCALE", "1"))
TIMEOUT_S = 20.0 * TIMEOUT_SCALE  # a whole relay test, start to close
LATENESS_SLACK_S = 0.010 * TIMEOUT_SCALE  # event-loop latency allowed on top of a drawn delay
PACKET = struct.Struct("!Id")  # sequence number, send time (loop clock, seconds)
FLOW_BATCH = 50  # datagrams sent before waiting for the relay, well under a socket buffer
POLL_S = 0.001

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one relay test in a fresh event loop, bounded by the scaled timeout."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), TIMEOUT_S)

    return asyncio.run(bounded())


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(POLL_S)


class Endpoint(asyncio.DatagramProtocol):
    """A UDP endpoint that stamps each datagram it receives with the loop time."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[bytes, float]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.received.append((data, asyncio.get_running_loop().time()))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return (host, port)

    def send(self, data: bytes, to: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    def send_numbered(self, number: int, to: Address) -> None:
        self.send(PACKET.pack(number, asyncio.get_running_loop().time()), to)

    def numbers(self) -> list[int]:
        return [PACKET.unpack(data)[0] for data, _ in self.received]

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


async def endpoint() -> Endpoint:
    _, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        Endpoint, local_addr=("127.0.0.1", 0)
    )
    return protocol


async def send_stream(
    sender: Endpoint,
    to: Address,
    count: int,
    relay: ImpairmentRelay,
    direction: Direction,
    pause: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Send ``count`` numbered datagrams, never more than FLOW_BATCH ahead of the relay."""
    start = relay.stats(direction).received

    def relay_has(sent: int) -> Callable[[], bool]:
        return lambda: relay.stats(direction).received - start == sent

    for number in range(count):
        sender.send_numbered(number, to)
        if pause is not None:
            await pause()
        if (number + 1) % FLOW_BATCH == 0:
            await wait_until(relay_has(number + 1))
    await wait_until(relay_has(count))


async def drain(relay: ImpairmentRelay, direction: Direction, receiver: Endpoint) -> None:
    """Wait until every copy in flight has left the relay and reached the receiver."""

    def settled() -> bool:
        s = relay.stats(direction)
        return s.delivered == s.received - s.dropped + s.duplicated

    await wait_until(settled)
    await wait_until(lambda: len(receiver.received) == relay.stats(direction).delivered)


def test_pass_through_learns_peers_and_keeps_order():
    count = 300

    async def main() -> None:
        a, b = await endpoint(), await endpoint()
        async with ImpairmentRelay() as relay:
            b.send(b"hello", relay.address_b)  # B is learned; A is not, so this is ignored
            await wait_until(lambda: relay.ignored == 1)
            await send_stream(a, relay.address_a, count, relay, Direction.A_TO_B)
            await send_stream(b, relay.address_b, count, relay, Direction.B_TO_A)
            await drain(relay, Direction.A_TO_B, b)
            await drain(relay, Direction.B_TO_A, a)
            assert (relay.peer_a, relay.peer_b) == (a.address, b.address)
            assert b.numbers() == list(range(count))
            assert a.numbers() == list(range(count))
            for direction in Direction:
                stats = relay.stats(direction)
                assert (stats.received, stats.delivered, stats.dropped) == (count, count, 0)
                assert (stats.duplicated, stats.reordered, stats.overflowed) == (0, 0, 0)
        a.close()
        b.close()

    run(main)


def test_random_loss_rate():
    n, p = 2000, 0.10

    async def main() -> None:
        a, b = await endpoint(), await endpoint()
        relay = ImpairmentRelay(
            a_to_b=Impairment(loss=p, seed=2024), peer_a=a.address, peer_b=b.address
        )
        await relay.start()
        try:
            await send_stream(a, relay.address_a, n, relay, Direction.A_TO_B)
            await drain(relay, Direction.A_TO_B, b)
        finally:
            await relay.close()
            a.close()
            b.close()
        stats = relay.stats(Direction.A_TO_B)
        # loopback lost nothing, so what B misses is exactly what the relay dropped
        assert stats.received == n
        assert len(b.received) == n - stats.dropped
        assert b.numbers() == sorted(b.numbers())
        # Drops are Binomial(n, p): mean 200, sd sqrt(n p (1 - p)) = 13.4 datagrams. Five sd
        # (67 datagrams, i.e. 10% +- 3.4%) fail a correct relay with probability < 1e-6 for
        # any seed, and still catch a relay that never drops or drops twice as often.
        sd = math.sqrt(n * p * (1 - p))
        assert abs(stats.dropped - n * p) <= 5 * sd

    run(main)


def test_delay_and_jitter_are_measured_at_the_receiver():
    n, delay_ms, jitter_ms, seed = 300, 30.0, 10.0, 5
    settings = Impairment(delay_ms=delay_ms, jitter_ms=jitter_ms, seed=seed)

    async def main() -> list[float]:
        a, b = await endpoint(), await endpoint()
        async with ImpairmentRelay(settings, peer_a=a.address, peer_b=b.address) as relay:
            await send_stream(
                a, relay.address_a, n, relay, Direction.A_TO_B, pause=lambda: asyncio.sleep(0.003)
            )
            await drain(relay, Direction.A_TO_B, b)
        a.close()
        b.close()
        by_number = {PACKET.unpack(data): arrival for data, arrival in b.received}
        return [by_number[number, sent] - sent for number, sent in sorted(by_number)]

    measured = run(main)
    assert len(measured) == n

    # The relay draws exactly what the model draws from random.Random(seed), and can only add
    # event-loop latency: no datagram arrives before its drawn delay, few much after.
    model = ImpairmentModel(settings, random.Random(seed))
    drawn = [model.decide(now=0.0).deliver_at[0] for _ in range(n)]
    lateness = [m - d for m, d in zip(measured, drawn, strict=True)]
    assert min(lateness) >= -1e-6
    assert statistics.median(lateness) <= LATENESS_SLACK_S

    # Against the settings: the sample mean of n normal delays has sd jitter / sqrt(n) =
    # 0.58 ms and the sample sd has sd jitter / sqrt(2 n) = 0.41 ms; bounds are 5 of those,
    # plus event-loop slack on the upper side only (lateness can only add delay).
    mean_ms = statistics.fmean(measured) * 1000
    spread_ms = statistics.stdev(measured) * 1000
    slack_ms = LATENESS_SLACK_S * 1000
    assert delay_ms - 5 * 0.58 <= mean_ms <= delay_ms + 5 * 0.58 + slack_ms
    assert jitter_ms - 5 * 0.41 <= spread_ms <= jitter_ms + 5 * 0.41 + slack_ms


def test_duplicates_and_reordering_are_counted_and_observed():
    n, duplicate, reorder = 600, 0.10, 0.10
    settings = Impairment(duplicate=duplicate, reorder=reorder, reorder_ms=50, seed=99)

    async def main() -> None:
        a, b = await endpoint(), await endpoint()
        async with ImpairmentRelay(settings, peer_a=a.address, peer_b=b.address) as relay:
            await send_stream(
                a, relay.address_a, n, relay, Direction.A_TO_B, pause=lambda: asyncio.sleep(0.002)
            )
            await drain(relay, Direction.A_TO_B, b)
        a.close()
        b.close()
        stats = relay.stats(Direction.A_TO_B)

        # what B saw: a number seen before is a duplicate; one below the highest so far (and
        # not a copy of it) arrived out of order
        numbers = b.numbers()
        seen_twice = len(numbers) - len(set(numbers))
        out_of_order = sum(1 for i, number in enumerate(numbers) if i and number < max(numbers[:i]))
        assert sorted(set(numbers)) == list(range(n))
        assert seen_twice == stats.duplicated
        assert out_of_order == stats.reordered
        assert stats.delivered == n + stats.duplicated

        # Binomial(600, 0.1): sd 7.3; 5 sd = 37 around the mean of 60. A held datagram is
        # overtaken (reordered) only if another one arrives within its 50 ms hold, which the
        # 2 ms pacing makes near certain unless the loop stalls, so a loose lower bound only.
        sd = math.sqrt(n * 0.1 * 0.9)
        assert abs(stats.duplicated - n * duplicate) <= 5 * sd
        assert abs(stats.held - n * reorder) <= 5 * sd
        assert stats.reordered >= stats.held // 2

    run(main)


def test_each_direction_has_its_own_impairment_and_can_be_changed():
    n = 200

    async def main() -> None:
        a, b = await endpoint(), await endpoint()
        relay = ImpairmentRelay(a_to_b=Impairment(loss=1.0), peer_a=a.address, peer_b=b.address)
        async with relay:
            await send_stream(a, relay.address_a, n, relay, Direction.A_TO_B)
            await send_stream(b, relay.address_b, n, relay, Direction.B_TO_A)
            await drain(relay, Direction.B_TO_A, a)
            assert (len(b.received), len(a.received)) == (0, n)
            relay.set_impairment(Direction.A_TO_B, Impairment())
            assert relay.impairment(Direction.A_TO_B) == Impairment()
            await send_stream(a, relay.address_a, n, relay, Direction.A_TO_B)
            await drain(relay, Direction.A_TO_B, b)
            assert b.numbers() == list(range(n))
            assert relay.stats(Direction.A_TO_B).dropped == n
        a.close()
        b.close()

    run(main)


def test_foreign_sender_is_ignored():
    async def main() -> None:
        a, b, mallory = await endpoint(), await endpoint(), await endpoint()
        async with ImpairmentRelay(peer_a=a.address, peer_b=b.address) as relay:
            mallory.send(b"spoof", relay.address_a)
            a.send(b"real", relay.address_a)
            await wait_until(lambda: len(b.received) == 1)
            await wait_until(lambda: relay.ignored == 1)
            assert b.received[0][0] == b"real"
            assert relay.stats(Direction.A_TO_B).received == 1
        for e in (a, b, mallory):
            e.close()

    run(main)


def test_relay_lifecycle():
    async def main() -> None:
        relay = ImpairmentRelay()
        with pytest.raises(LocalProtocolError, match=r"^impairment relay is not started$"):
            _ = relay.address_a
        await relay.start()
        assert relay.address_a != relay.address_b
        assert relay.address_a[0] == "127.0.0.1"
        with pytest.raises(LocalProtocolError, match="can only be started once"):
            await relay.start()
        await relay.close()
        await relay.close()  # idempotent

    run(main)
