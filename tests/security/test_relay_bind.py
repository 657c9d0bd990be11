"""Nobody can replay or steal a party's relay binding (issue 17 part 3).

Before bind version 2 a bind was its token in clear: replaying alice's bind from
another address moved bob's media to the attacker and dropped alice's. Now a bind
carries a counter and a MAC under the grant's key, and a new address is bound only
after it answers a challenge (``pqcall.transport.relay_wire``). First the pure table on a
fake clock, then a relayed call on real loopback sockets with an attacker who saw every
bind alice sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pqcall.server.relay import MediaRelay
from pqcall.server.relay_table import (
    CHALLENGE_TIMEOUT_S,
    DropReason,
    Outgoing,
    RelayTable,
    Role,
)
from pqcall.transport.connect import open_media_socket
from pqcall.transport.relay_wire import (
    ACK_MAGIC,
    ACK_PEER_BOUND,
    BIND_MAGIC,
    CHALLENGE_MAGIC,
    MAGIC_LENGTH,
    RelayAck,
    RelayAnswer,
    RelayBind,
    RelayChallenge,
    RelayTarget,
    grant_keys,
)
from tests.server.test_relay import counting_tokens
from tests.transport.test_connect import both, closed_port, talk
from tests.transport.test_session import run

ALICE = ("192.0.2.1", 4000)
BOB = ("198.51.100.2", 5000)
EVE = ("203.0.113.3", 6000)
RELAY_AT = ("127.0.0.1", 5001)
MEDIA = b"\x90" + bytes(40)
TEST_NET = ("192.0.2.1", 9)


def is_challenge(out: Outgoing | None) -> bool:
    return out is not None and out.data[:MAGIC_LENGTH] == CHALLENGE_MAGIC


class Phone:
    """One party's grant, speaking to a pure table."""

    def __init__(self, table: RelayTable, token: bytes) -> None:
        self.table = table
        self.target = RelayTarget(RELAY_AT, token)

    def bind(self, addr: Any, now: float) -> Outgoing | None:
        """Bind from ``addr``, answering a challenge: the ack, or None."""
        out = self.table.receive_datagram(self.target.bind, addr, now)
        if not is_challenge(out):
            return out
        assert out is not None and out.address == addr
        reply = self.target.answer(out.data, RELAY_AT)
        assert reply is not None
        return self.table.receive_datagram(reply, addr, now)


def call() -> tuple[RelayTable, Phone, Phone]:
    """A table with one call, alice bound at ALICE and bob at BOB."""
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    alice = Phone(table, allocation.caller_token)
    bob = Phone(table, allocation.callee_token)
    assert alice.bind(ALICE, 0.0) is not None
    assert bob.bind(BOB, 0.0) == Outgoing(RelayAck(True).serialize(), BOB, is_forward=False)
    return table, alice, bob


def assert_media_flows(table: RelayTable, now: float) -> None:
    assert table.receive_datagram(MEDIA, ALICE, now) == Outgoing(MEDIA, BOB, True)
    assert table.receive_datagram(MEDIA, BOB, now) == Outgoing(MEDIA, ALICE, True)


# the pure table


def test_a_replayed_bind_from_another_address_is_refused_and_counted():
    table, alice, _ = call()
    seen = alice.target.bind  # a keepalive eve observed on the wire...
    assert table.receive_datagram(seen, ALICE, 1.0) is not None
    assert table.receive_datagram(seen, EVE, 1.1) is None  # ...sent again from eve's address
    stats = table.stats()
    assert stats.dropped[DropReason.REPLAYED] == 1
    assert stats.challenges == 2  # alice's and bob's first binds: none for eve
    assert table.bound_address("c1", Role.CALLER) == ALICE
    assert_media_flows(table, 1.2)


def test_a_stale_counter_is_refused_even_from_the_bound_address():
    table, alice, _ = call()
    old = alice.target.bind
    assert alice.bind(ALICE, 1.0) is not None  # a newer keepalive arrives first
    assert table.receive_datagram(old, ALICE, 1.1) is None
    assert table.stats().dropped[DropReason.REPLAYED] == 1
    assert alice.bind(ALICE, 1.2) == Outgoing(RelayAck(True).serialize(), ALICE, False)


def test_a_forged_mac_is_refused_without_an_answer():
    table, alice, _ = call()
    keys = alice.target.keys
    forged = RelayBind(keys.grant_id, 10**6).serialize(grant_keys(bytes(16)).key)
    assert table.receive_datagram(forged, EVE, 1.0) is None
    flipped = bytearray(alice.target.bind)
    flipped[-1] ^= 1
    assert table.receive_datagram(bytes(flipped), EVE, 1.0) is None
    stats = table.stats()
    assert stats.dropped[DropReason.BAD_BIND] == 2
    assert stats.challenges == 2
    # a forged bind does not burn the counter: alice's next bind still works
    assert alice.bind(ALICE, 1.1) is not None


def test_a_bind_seen_and_never_delivered_only_earns_a_challenge_eve_cannot_answer():
    table, alice, _ = call()
    captured = alice.target.bind  # eve held it back: its counter is fresh
    out = table.receive_datagram(captured, EVE, 1.0)
    assert is_challenge(out) and out is not None and out.address == EVE
    assert len(out.data) < len(captured)  # no amplification
    assert table.bound_address("c1", Role.CALLER) == ALICE  # nothing moved yet
    assert_media_flows(table, 1.0)
    nonce = out.data[5:21]
    grant_id = alice.target.keys.grant_id
    # eve answers with the nonce but without the key
    guessed = RelayAnswer(grant_id, nonce).serialize(grant_keys(bytes(16)).key)
    assert table.receive_datagram(guessed, EVE, 1.1) is None
    # alice's genuine answer to some other nonce, replayed by eve, does not fit either
    other = RelayChallenge(bytes(16)).serialize(alice.target.keys)
    genuine = alice.target.answer(other, RELAY_AT)
    assert genuine is not None
    assert table.receive_datagram(genuine, EVE, 1.2) is None
    assert table.stats().dropped[DropReason.BAD_ANSWER] == 2
    assert table.bound_address("c1", Role.CALLER) == ALICE
    assert_media_flows(table, 1.3)


def test_the_move_happens_only_after_the_answer_from_the_new_address():
    table, alice, _ = call()
    moved = ("192.0.2.1", 4444)  # alice's NAT picked a new port
    out = table.receive_datagram(alice.target.bind, moved, 1.0)
    assert is_challenge(out) and out is not None
    assert table.bound_address("c1", Role.CALLER) == ALICE
    reply = alice.target.answer(out.data, RELAY_AT)
    assert reply is not None
    # the right answer from the wrong address moves nothing
    assert table.receive_datagram(reply, EVE, 1.1) is None
    assert table.bound_address("c1", Role.CALLER) == ALICE
    assert table.receive_datagram(reply, moved, 1.2) == Outgoing(
        ACK_MAGIC + bytes([ACK_PEER_BOUND]), moved, False
    )
    assert table.bound_address("c1", Role.CALLER) == moved
    assert table.receive_datagram(MEDIA, BOB, 1.3) == Outgoing(MEDIA, moved, True)
    # the same answer again (a replay) answers no challenge: refused, nothing moves
    assert table.receive_datagram(reply, moved, 1.4) is None
    assert table.bound_address("c1", Role.CALLER) == moved
    stats = table.stats()
    assert stats.rebinds == 1
    assert stats.dropped[DropReason.BAD_ANSWER] == 2


def test_a_late_answer_is_refused():
    table, alice, _ = call()
    moved = ("192.0.2.1", 4444)
    out = table.receive_datagram(alice.target.bind, moved, 1.0)
    assert out is not None
    reply = alice.target.answer(out.data, RELAY_AT)
    assert reply is not None
    assert table.receive_datagram(reply, moved, 1.0 + CHALLENGE_TIMEOUT_S) is None
    assert table.bound_address("c1", Role.CALLER) == ALICE
    assert table.stats().dropped[DropReason.BAD_ANSWER] == 1


def test_keepalives_from_the_bound_address_need_no_challenge():
    table, alice, _ = call()
    for i in range(5):
        out = table.receive_datagram(alice.target.bind, ALICE, 1.0 + i)
        assert out == Outgoing(RelayAck(True).serialize(), ALICE, False)
    assert table.stats().challenges == 2


def test_a_version_1_bind_gets_a_clear_refusal():
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    old = BIND_MAGIC + allocation.caller_token  # what a phone of the old format sends
    out = table.receive_datagram(old, ALICE, 0.0)
    assert out == Outgoing(RelayAck.refusal(), ALICE, False)
    assert len(out.data) < len(old)
    assert table.bound_address("c1", Role.CALLER) is None
    assert table.stats().dropped[DropReason.OLD_VERSION] == 1


def test_grant_ids_on_the_wire_do_not_reveal_the_secret():
    table = RelayTable(token_source=counting_tokens())
    allocation = table.allocate("c1", now=0.0)
    bind = RelayTarget(RELAY_AT, allocation.caller_token).bind
    assert allocation.caller_token not in bind
    assert grant_keys(allocation.caller_token).key not in bind


# a relayed call on loopback, with an attacker who saw alice's binds


def test_a_replayed_bind_during_a_relayed_call_is_refused_and_the_call_goes_on():
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            allocation = relay.allocate("call-1")
            seen: list[bytes] = []  # the binds a sniffer beside the relay saw
            receive = relay._datagram_received

            def sniff(data: bytes, addr: Any) -> None:
                if data[:MAGIC_LENGTH] == BIND_MAGIC:
                    seen.append(data)
                receive(data, addr)

            relay._datagram_received = sniff  # type: ignore[method-assign]
            caller = RelayTarget(relay.address, allocation.caller_token)
            callee = RelayTarget(relay.address, allocation.callee_token)
            a, b = open_media_socket(host="127.0.0.1"), open_media_socket(host="127.0.0.1")
            dead = [("127.0.0.1", closed_port()), TEST_NET]
            mine, its = await both(a, dead, b, dead, (caller, callee), direct_timeout_s=0.3)
            assert mine.peer == its.peer == relay.address
            alice_at = relay._table.bound_address("call-1", Role.CALLER)
            assert alice_at is not None and seen
            loop = asyncio.get_running_loop()
            eve, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            try:
                talking = asyncio.ensure_future(talk(a, mine, b, its))
                await asyncio.sleep(0.3)
                replayed = list(seen)  # alice's and bob's binds so far
                for data in replayed:  # each sent again from eve's address, mid-call
                    eve.sendto(data, relay.address)
                # and one alice made but eve held back: a challenge eve cannot answer
                held = caller.bind
                eve.sendto(held, relay.address)
                await talking  # both sides still hear each other's tone through the relay
            finally:
                eve.close()
            stats = relay.stats()
            assert stats.dropped[DropReason.REPLAYED] == len(replayed)
            assert stats.challenges >= 3  # alice, bob (more if a bind was resent), eve's held one
            assert relay._table.bound_address("call-1", Role.CALLER) == alice_at
            assert stats.packets_forwarded >= 2 * 50

    run(main)


@pytest.mark.parametrize("version", [1, 3])
def test_the_relay_refuses_other_versions_on_its_socket(version):
    async def main() -> None:
        async with MediaRelay("127.0.0.1", 0) as relay:
            allocation = relay.allocate("c1")
            loop = asyncio.get_running_loop()
            got: asyncio.Future[bytes] = loop.create_future()

            class Old(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    if not got.done():
                        got.set_result(data)

            transport, _ = await loop.create_datagram_endpoint(Old, local_addr=("127.0.0.1", 0))
            if version == 1:
                data = BIND_MAGIC + allocation.caller_token
            else:
                data = BIND_MAGIC + bytes([version]) + bytes(40)
            transport.sendto(data, relay.address)
            assert await asyncio.wait_for(got, 5.0) == RelayAck.refusal()
            transport.close()
            assert relay.stats().dropped[DropReason.OLD_VERSION] == 1

    run(main)
