"""Mobility on real loopback UDP sockets: a call moves to a new address, and only after a check.

Bob talks to alice through a small NAT on loopback (:class:`Nat`): bob sends to its
inside port, alice sees bob at its outside port. ``rebind`` gives bob a new outside
port mid-call (a NAT whose mapping changed, or a phone with a new address): alice then
receives bob's datagrams from an address she has never sent to. The tests show that
media moves there only once that address answered an authenticated check of alice's,
that a spoofed or replayed datagram from a new address moves nothing, and that media
stops going to an address that no longer answers (consent). Timing bounds are scaled
by ``PQCALL_TEST_TIMEOUT_SCALE``; the gaps printed are measured on a loaded machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable

import pytest

from pqcall.media.audio import ToneSource
from pqcall.server.relay import MediaRelay
from pqcall.transport.consent import ConsentFreshness
from pqcall.transport.mobility import Mobility, PathSwitched
from pqcall.transport.path_choice import PathChoice, PathCounters, PathKind
from pqcall.transport.path_messages import (
    Address,
    MessageType,
    PathMessage,
    PathRole,
    path_check_key,
)
from pqcall.transport.relay_wire import RelayTarget
from pqcall.transport.session import MediaSession, MediaSettings
from tests.transport.test_session import (
    CALLEE_TONE_HZ,
    CALLER_TONE_HZ,
    LOOPBACK,
    TIMEOUT_SCALE,
    MemorySink,
    dominant_hz,
    rms,
    run,
)
from tests.utils import handshake_pair, keys_of

pytestmark = pytest.mark.slow  # real-time calls of 3-5 s each

CALLER_KEYS, CALLEE_KEYS = keys_of(handshake_pair())
GAP_BOUND_S = 2.5 * TIMEOUT_SCALE  # the peer's silence (1 s) starts the re-check at worst
MOVER_GAP_BOUND_S = 1.5 * TIMEOUT_SCALE  # the phone that moved nominates at once
POLL_S = 0.01


class _Side(asyncio.DatagramProtocol):
    def __init__(self, received: Callable[[bytes, Address], None]) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._received(data, (str(addr[0]), int(addr[1])))


class Nat:
    """Bob's NAT: bob sends to :attr:`inside`; alice sees him at :attr:`outside`."""

    def __init__(self, alice: Address, bob: Address) -> None:
        self.alice, self.bob = alice, bob
        self._inside: asyncio.DatagramTransport | None = None
        self._outside: asyncio.DatagramTransport | None = None
        self.from_alice: list[tuple[float, int]] = []  # (time, size) at the outside port
        self.from_bob: list[bytes] = []  # what bob sent towards alice
        self.blocked = False  # drop everything both ways (the direct path is down)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._inside, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_inside), local_addr=LOOPBACK
        )
        await self.rebind()

    async def rebind(self) -> Address:
        """A new outside port; the old one is gone (what alice sends there is lost)."""
        if self._outside is not None:
            self._outside.close()
        loop = asyncio.get_running_loop()
        self._outside, _ = await loop.create_datagram_endpoint(
            lambda: _Side(self._from_outside), local_addr=LOOPBACK
        )
        return self.outside

    @property
    def inside(self) -> Address:
        assert self._inside is not None
        host, port = self._inside.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    @property
    def outside(self) -> Address:
        assert self._outside is not None
        host, port = self._outside.get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def _from_inside(self, data: bytes, addr: Address) -> None:
        if self.blocked:
            return
        if addr == self.bob and self._outside is not None and not self._outside.is_closing():
            self.from_bob.append(data)
            self._outside.sendto(data, self.alice)

    def _from_outside(self, data: bytes, addr: Address) -> None:
        if self.blocked:
            return
        if addr == self.alice and self._inside is not None and not self._inside.is_closing():
            self.from_alice.append((asyncio.get_running_loop().time(), len(data)))
            self._inside.sendto(data, self.bob)

    def close(self) -> None:
        for transport in (self._inside, self._outside):
            if transport is not None:
                transport.close()


def chosen(peer: Address, relay: RelayTarget | None = None) -> PathChoice:
    """A direct path to ``peer``, as path selection would have chosen it."""
    offered = None if relay is None else relay.address
    return PathChoice(PathKind.DIRECT, peer, None, peer, offered, 0.0, PathCounters().snapshot())


class Phones:
    """Alice and bob in a call through bob's NAT, each with mobility."""

    alice: MediaSession
    bob: MediaSession
    nat: Nat
    alice_mobility: Mobility
    bob_mobility: Mobility

    def __init__(self) -> None:
        self.alice_hears, self.bob_hears = MemorySink(), MemorySink()
        self.bob_addresses = frozenset({"192.0.2.10"})  # what bob's interface watch reads

    async def start(
        self,
        *,
        bob_watches: bool = False,
        consent: Callable[[], ConsentFreshness] | None = None,
        relay: tuple[RelayTarget, RelayTarget] | None = None,
    ) -> None:
        settings = MediaSettings(media_timeout_s=10.0)
        self.alice = MediaSession(
            CALLER_KEYS,
            ToneSource(CALLER_TONE_HZ),
            self.alice_hears,
            settings=settings,
            side_channel=lambda *args: self.alice_mobility.side_channel(*args),
        )
        await self.alice.open(LOOPBACK)
        self.bob = MediaSession(
            CALLEE_KEYS,
            ToneSource(CALLEE_TONE_HZ),
            self.bob_hears,
            settings=settings,
            side_channel=lambda *args: self.bob_mobility.side_channel(*args),
        )
        await self.bob.open(LOOPBACK)
        self.nat = Nat(self.alice.local_address, self.bob.local_address)
        await self.nat.start()
        alice_relay, bob_relay = (None, None) if relay is None else relay
        self.alice_mobility = Mobility(
            CALLER_KEYS,
            chosen(self.nat.outside, alice_relay),
            [self.nat.outside],
            addresses=None,
            consent=None if consent is None else consent(),
            relay=alice_relay,
        )
        self.bob_mobility = Mobility(
            CALLEE_KEYS,
            chosen(self.nat.inside, bob_relay),
            [self.nat.inside],
            addresses=(lambda: self.bob_addresses) if bob_watches else None,
            watch_interval_s=0.05,
            relay=bob_relay,
        )
        self.alice.connect(self.nat.outside)
        self.bob.connect(self.nat.inside)
        self.alice_mobility.attach(self.alice)
        self.bob_mobility.attach(self.bob)

    async def close(self) -> None:
        for mobility in (self.alice_mobility, self.bob_mobility):
            await mobility.close()
        await self.alice.close()
        await self.bob.close()
        self.nat.close()


async def longest_gap(session: MediaSession, seconds: float) -> float:
    """Watch ``session`` for ``seconds``; the longest time no datagram from the peer counted."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    last_count, last_at, gap = session.snapshot().packets_received, loop.time(), 0.0
    while loop.time() < end:
        await asyncio.sleep(POLL_S)
        count, now = session.snapshot().packets_received, loop.time()
        if count != last_count:
            gap = max(gap, now - last_at)
            last_count, last_at = count, now
    return max(gap, loop.time() - last_at)


def hears(sink: MemorySink, hz: float) -> None:
    tail = sink.tail(0.4)
    assert rms(tail) > 0.25, "no tone at the end"
    assert dominant_hz(tail) == pytest.approx(hz, abs=4)


def test_a_new_address_of_the_peer_is_used_after_it_answers_a_check():
    """Bob's NAT maps him to a new port and bob does not know: alice's media goes to the
    dead port and bob's arrives from an unknown one. Alice's silence starts a re-check;
    the new port answers her check; media moves there, both ways, no new keys."""

    async def main() -> None:
        phones = Phones()
        await phones.start()
        try:
            await asyncio.sleep(1.0)
            old = phones.alice.peer_address
            new = await phones.nat.rebind()
            gap_alice, gap_bob = await asyncio.gather(
                longest_gap(phones.alice, 3.5 * TIMEOUT_SCALE),
                longest_gap(phones.bob, 3.5 * TIMEOUT_SCALE),
            )
            print(  # noqa: T201  (pytest -s: the measured gaps, under load)
                f"\nNAT rebinding, bob unaware: alice heard nothing for {gap_alice:.2f} s,"
                f" bob for {gap_bob:.2f} s; alice {old} -> {phones.alice.peer_address}"
            )
            assert phones.alice.peer_address == new != old
            assert phones.alice_mobility.monitor.stats.switches == 1
            assert phones.bob.peer_address == phones.nat.inside  # bob's side did not change
            assert gap_alice <= GAP_BOUND_S and gap_bob <= GAP_BOUND_S
            hears(phones.alice_hears, CALLEE_TONE_HZ)
            hears(phones.bob_hears, CALLER_TONE_HZ)
            assert phones.alice.end_reason is None and phones.bob.end_reason is None
        finally:
            await phones.close()

    run(main)


def test_the_phone_that_moved_nominates_its_new_address_at_once():
    """Bob's interface watch sees his address change when his port changes: he re-checks
    and nominates at once, alice checks his new address and moves, well before either
    side's silence (1 s) would have started a re-check."""

    async def main() -> None:
        phones = Phones()
        await phones.start(bob_watches=True)
        try:
            await asyncio.sleep(1.0)
            new = await phones.nat.rebind()
            phones.bob_addresses = frozenset({"192.0.2.11"})
            gap_alice, gap_bob = await asyncio.gather(
                longest_gap(phones.alice, 2.5 * TIMEOUT_SCALE),
                longest_gap(phones.bob, 2.5 * TIMEOUT_SCALE),
            )
            print(  # noqa: T201
                f"\nbob moved and knows it: alice heard nothing for {gap_alice:.2f} s,"
                f" bob for {gap_bob:.2f} s"
            )
            assert phones.alice.peer_address == new
            alice_stats = phones.alice_mobility.monitor.stats
            assert alice_stats.validations >= 1  # alice checked bob's new port before moving
            assert alice_stats.switches == 1
            assert phones.bob_mobility.monitor.stats.rechecks >= 1
            assert gap_alice <= MOVER_GAP_BOUND_S and gap_bob <= MOVER_GAP_BOUND_S
            hears(phones.alice_hears, CALLEE_TONE_HZ)
            hears(phones.bob_hears, CALLER_TONE_HZ)
        finally:
            await phones.close()

    run(main)


def test_spoofed_and_replayed_datagrams_from_a_new_address_move_nothing():
    """From a stranger's address: garbage, a replayed media datagram, and path messages
    that authenticate (a CHECK and a NOMINATE under the call's path key, as replays of
    bob's would). Alice answers and checks that address, the stranger cannot answer the
    check, so alice's media stays on bob's address and never reaches the stranger."""

    async def main() -> None:
        phones = Phones()
        await phones.start()
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        stranger, _ = await loop.create_datagram_endpoint(
            lambda: _Side(lambda data, addr: got.append(data)), local_addr=LOOPBACK
        )
        try:
            await asyncio.sleep(0.5)
            bob_at = phones.alice.peer_address
            assert bob_at == phones.nat.outside
            key = path_check_key(CALLEE_KEYS)
            alice_at = phones.alice.local_address
            for kind in (MessageType.CHECK, MessageType.NOMINATE) * 5:
                forged = PathMessage(kind, PathRole.CONTROLLED, secrets.token_bytes(12), alice_at)
                stranger.sendto(forged.serialize(key), alice_at)
                stranger.sendto(os.urandom(128), alice_at)
                await asyncio.sleep(0.05)
            # replays of media datagrams bob sent (captured on the NAT's way to alice)
            for datagram in phones.nat.from_bob[-5:]:
                stranger.sendto(datagram, alice_at)
            received = phones.alice.snapshot().packets_received
            await asyncio.sleep(1.0)
            assert phones.alice.peer_address == bob_at
            stats = phones.alice_mobility.monitor.stats
            assert stats.switches == 0
            assert stats.unvalidated_nominations == 5
            assert stats.validations >= 1
            # what the stranger got: answers and alice's checks, 40 bytes each, no media
            assert got and all(len(d) == 40 for d in got)
            kinds = {PathMessage.parse(d, key).kind for d in got}
            assert kinds == {MessageType.RESPONSE, MessageType.CHECK}
            assert phones.alice.snapshot().packets_received > received + 40  # bob's media
            assert phones.alice.foreign_datagrams >= 10  # the garbage and the replays
            hears(phones.bob_hears, CALLER_TONE_HZ)
            hears(phones.alice_hears, CALLEE_TONE_HZ)
        finally:
            stranger.close()
            await phones.close()

    run(main)


def test_media_stops_going_to_an_address_that_stops_answering():
    """Bob's NAT forgets him (every datagram to the old port is lost): after the consent
    timeout alice sends bob's old address only her 40-byte consent checks, no media."""

    async def main() -> None:
        phones = Phones()
        await phones.start(consent=lambda: ConsentFreshness(interval_s=0.2, timeout_s=1.0))
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(0.5)
            lost_at = loop.time()
            phones.nat.bob = ("127.0.0.1", 9)  # the NAT forwards nothing from bob any more
            old = phones.alice.peer_address
            await asyncio.sleep(1.0 * TIMEOUT_SCALE + 1.5)
            events = phones.alice_mobility.monitor.stats
            assert events.consent_lost == 1
            assert phones.alice.peer_address == old  # nowhere else to go
            cutoff = lost_at + 1.3 * TIMEOUT_SCALE
            late = [size for at, size in phones.nat.from_alice if at > cutoff]
            assert late, "alice stopped checking too"
            assert set(late) == {40}, f"media went on to an address without consent: {late}"
        finally:
            await phones.close()

    run(main)


def test_switch_events_name_the_old_and_the_new_address():
    event = PathSwitched(("127.0.0.1", 1), ("127.0.0.1", 2), "acked")
    assert event.old != event.new and event.reason == "acked"


async def until(predicate: Callable[[], bool], within_s: float) -> float:
    """Wait until ``predicate`` holds; the seconds it took (fails after ``within_s``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        assert loop.time() - start < within_s, "not reached in time"
        await asyncio.sleep(POLL_S)
    return loop.time() - start


def test_direct_then_relay_then_direct_again():
    """The direct path goes down both ways: both phones' re-checks find nothing, both
    bind to the pqcall relay (a real MediaRelay) and the call goes on through it; the
    direct path comes back: the re-check on the relay finds it and the call returns."""

    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as server:
            grant = server.allocate("call-1")
            relay = server.address
            phones = Phones()
            await phones.start(
                relay=(
                    RelayTarget(relay, grant.caller_token),
                    RelayTarget(relay, grant.callee_token),
                )
            )
            try:
                await asyncio.sleep(1.0)
                direct_alice, direct_bob = phones.alice.peer_address, phones.bob.peer_address
                phones.nat.blocked = True
                to_relay = await until(
                    lambda: phones.alice.peer_address == relay == phones.bob.peer_address,
                    8.0 * TIMEOUT_SCALE,
                )
                gap_relay = await longest_gap(phones.alice, 1.0)
                hears(phones.alice_hears, CALLEE_TONE_HZ)
                hears(phones.bob_hears, CALLER_TONE_HZ)
                phones.nat.blocked = False
                back = await until(
                    lambda: (
                        phones.alice.peer_address == direct_alice
                        and phones.bob.peer_address == direct_bob
                    ),
                    10.0 * TIMEOUT_SCALE,
                )
                gap_back = await longest_gap(phones.alice, 1.0)
                print(  # noqa: T201
                    f"\ndirect -> relay after {to_relay:.2f} s of a dead direct path;"
                    f" relay -> direct {back:.2f} s after it came back;"
                    f" longest gaps once moved {gap_relay:.2f} s / {gap_back:.2f} s"
                )
                assert gap_relay < 0.5 and gap_back < 0.5
                hears(phones.alice_hears, CALLEE_TONE_HZ)
                hears(phones.bob_hears, CALLER_TONE_HZ)
                assert phones.alice.end_reason is None and phones.bob.end_reason is None
                assert phones.alice_mobility.monitor.stats.switches == 2
            finally:
                await phones.close()

    run(main)
