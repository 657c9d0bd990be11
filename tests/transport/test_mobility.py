"""The path monitor's rules (transport/mobility.py) on a fake clock and an in-memory network.

Alice (caller) and bob (callee) each run a :class:`PathMonitor`; :class:`Net` delivers
what one sends to whoever is at the destination address, with the sender's address
as the source, and carries the answers back at once. Bob "moves" by being reachable
at a new address (and no longer at the old one).
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from pqcall.transport.mobility import (
    RECHECK_S,
    VALIDATION_FRESH_S,
    ConsentLost,
    ConsentRestored,
    MobilityEvent,
    PathMonitor,
    PathSwitched,
)
from pqcall.transport.path_choice import PathChoice, PathCounters, PathKind
from pqcall.transport.path_messages import (
    Address,
    MessageType,
    PathMessage,
    PathRole,
    path_check_key,
)
from pqcall.transport.relay_wire import RelayChallenge, RelayTarget
from tests.utils import MALLORY, handshake_pair, keys_of

CALLER_KEYS, CALLEE_KEYS = keys_of(handshake_pair())
MALLORY_KEYS, _ = keys_of(handshake_pair(call_id=b"call-2", caller_identity=MALLORY))
A = ("198.51.100.1", 5000)  # alice
B = ("203.0.113.7", 6000)  # bob, then
B2 = ("203.0.113.9", 6000)  # bob, after he moved
Z = ("192.0.2.66", 7000)  # a stranger
RELAY = ("192.0.2.1", 5001)


def tokens() -> object:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def monitor(
    keys: object,
    peer: Address,
    candidates: tuple[Address, ...] = (),
    relay: RelayTarget | None = None,
) -> PathMonitor:
    choice = PathChoice(PathKind.DIRECT, peer, None, peer, RELAY, 0.0, PathCounters().snapshot())
    return PathMonitor(keys, choice, candidates, token_source=tokens(), relay=relay)  # type: ignore[arg-type]


class Net:
    """Delivers datagrams between monitors by address; records everything sent."""

    def __init__(self) -> None:
        self.at: dict[Address, PathMonitor] = {}
        self.sent: list[tuple[Address, bytes, Address]] = []  # (from, data, to)
        self.drop: set[tuple[Address, Address]] = set()  # (from, to) pairs lost

    def flush(self, source: Address, datagrams: list[tuple[bytes, Address]], now: float) -> None:
        queue = deque((source, data, to) for data, to in datagrams)
        while queue:
            src, data, to = queue.popleft()
            self.sent.append((src, data, to))
            target = self.at.get(to)
            if target is None or (src, to) in self.drop:
                continue
            answers = target(data, src, now)
            assert answers is not None, "a path message was not taken"
            queue.extend((to, answer, dest) for answer, dest in answers)

    def tick(self, mon: PathMonitor, address: Address, now: float) -> None:
        mon.handle_timer(now)
        self.flush(address, mon.datagrams_to_send(now), now)

    def kinds_to(self, to: Address) -> list[MessageType]:
        key = path_check_key(CALLER_KEYS)
        return [PathMessage.parse(d, key).kind for _, d, dest in self.sent if dest == to]


def events(mon: PathMonitor) -> list[MobilityEvent]:
    found = []
    while (event := mon.next_event()) is not None:
        found.append(event)
    return found


def pair() -> tuple[Net, PathMonitor, PathMonitor]:
    net, alice, bob = Net(), monitor(CALLER_KEYS, B), monitor(CALLEE_KEYS, A)
    net.at = {A: alice, B: bob}
    alice.start(0.0)
    bob.start(0.0)
    return net, alice, bob


def test_the_mover_nominates_and_the_peer_moves_after_checking_the_new_address():
    net, alice, bob = pair()
    net.at = {A: alice, B2: bob}  # bob's address changed; he knows it
    bob.recheck(1.0, "address change")
    net.flush(B2, bob.datagrams_to_send(1.0), 1.0)
    assert alice.peer == B2
    assert events(alice) == [PathSwitched(B, B2, "nominated")]
    assert bob.peer == A and not bob.is_rechecking  # acked: the re-check is over
    assert net.kinds_to(B2)[:2] == [MessageType.RESPONSE, MessageType.CHECK]  # checked first
    assert alice.stats.switches == 1 and bob.stats.switches == 0


def test_a_nomination_from_an_address_that_does_not_answer_the_check_moves_nothing():
    net, alice, bob = pair()
    net.at = {A: alice, B2: bob}
    net.drop = {(A, B2)}  # nothing of alice's reaches bob's new address
    bob.recheck(1.0, "address change")
    for step in range(40):
        net.tick(bob, B2, 1.0 + step * 0.05)
    assert alice.peer == B
    assert alice.stats.switches == 0
    assert not any(isinstance(e, PathSwitched) for e in events(alice))
    # the nomination never got to alice (its check answers were lost); now send one
    nominate = PathMessage(MessageType.NOMINATE, PathRole.CONTROLLED, b"n" * 12, A)
    alice(nominate.serialize(path_check_key(CALLEE_KEYS)), B2, 3.0)
    assert alice.peer == B and alice.stats.unvalidated_nominations == 1


def test_replayed_and_forged_messages_from_a_stranger_move_nothing():
    net, alice, bob = pair()
    net.at = {A: alice, B: bob, B2: bob}
    bob.recheck(1.0, "peer silent")
    net.flush(B, bob.datagrams_to_send(1.0), 1.0)
    bobs = [d for src, d, to in net.sent if src == B and to == A]
    assert bobs, "bob sent nothing to replay"
    for data in bobs * 3:  # every check and nomination bob sent, from the stranger's address
        answers = alice(data, Z, 2.0)
        assert answers is not None
        assert all(to == Z and len(d) == 40 for d, to in answers)
    forged = PathMessage(MessageType.NOMINATE, PathRole.CONTROLLED, b"f" * 12, A)
    assert alice(forged.serialize(path_check_key(MALLORY_KEYS)), Z, 2.0) is None  # not ours
    assert alice(b"\x00" * 128, Z, 2.0) is None  # media or garbage: the session's
    assert alice.peer == B and alice.stats.switches == 0
    assert alice.stats.unvalidated_nominations >= 1  # bob's nomination, replayed
    assert alice.stats.validations == 1  # one check of the stranger's address (rate limit)


def test_validation_checks_of_one_address_are_rate_limited():
    _, alice, _ = pair()
    check = PathMessage(MessageType.CHECK, PathRole.CONTROLLED, b"c" * 12, A)
    data = check.serialize(path_check_key(CALLEE_KEYS))
    sent = []
    for step in range(10):  # 10 checks in 90 ms from one new address
        sent += alice(data, Z, 5.0 + step * 0.01) or []
    kinds = [PathMessage.parse(d, path_check_key(CALLER_KEYS)).kind for d, _ in sent]
    assert kinds.count(MessageType.RESPONSE) == 10
    assert kinds.count(MessageType.CHECK) == 1
    assert alice(data, Z, 5.2) is not None and alice.stats.validations == 2


def test_consent_is_lost_when_the_peer_stops_answering_and_comes_back():
    net, alice, bob = pair()
    del net.at[B]  # bob is gone
    now = 0.0
    while now < 5.5:
        now += 0.1
        net.tick(alice, A, now)
    assert alice.consent_lost
    found = events(alice)
    assert found[0] == ConsentLost(B)
    assert alice.stats.consent_lost == 1 and alice.stats.consent_checks >= 4
    assert alice.is_rechecking  # lost consent starts a re-check
    net.at[B] = bob  # back
    while now < 7.5:
        now += 0.1
        net.tick(alice, A, now)
    assert not alice.consent_lost
    assert ConsentRestored(B) in events(alice)
    assert alice.peer == B


def test_the_silent_side_finds_the_peer_where_its_checks_came_from():
    """NAT rebinding: bob does not know he moved; alice learns B2 from bob's consent
    check, and her silence re-check nominates it."""
    net, alice, bob = pair()
    net.at = {A: alice, B2: bob}
    net.tick(bob, B2, 1.0)  # bob's consent check, from his new address
    assert alice.peer == B and alice.stats.validations == 1
    alice.recheck(1.5, "peer silent")
    net.flush(A, alice.datagrams_to_send(1.5), 1.5)
    assert alice.peer == B2
    assert events(alice) == [PathSwitched(B, B2, "acked")]
    assert bob.peer == A


def test_a_repeated_nomination_of_the_current_address_is_acked():
    _, alice, _ = pair()
    nominate = PathMessage(MessageType.NOMINATE, PathRole.CONTROLLED, b"r" * 12, A)
    answers = alice(nominate.serialize(path_check_key(CALLEE_KEYS)), B, 1.0)
    assert answers is not None and len(answers) == 1
    reply = PathMessage.parse(answers[0][0], path_check_key(CALLER_KEYS))
    assert reply.kind is MessageType.NOMINATE_ACK and answers[0][1] == B
    assert alice.peer == B and alice.stats.switches == 0


def test_a_validation_goes_stale():
    net, alice, bob = pair()
    net.at = {A: alice, B2: bob}
    net.tick(bob, B2, 1.0)  # validates B2 at 1.0
    nominate = PathMessage(MessageType.NOMINATE, PathRole.CONTROLLED, b"s" * 12, A)
    data = nominate.serialize(path_check_key(CALLEE_KEYS))
    net.at = {A: alice}  # bob is no longer at B2 either
    alice(data, B2, 1.0 + VALIDATION_FRESH_S + 0.1)
    assert alice.peer == B  # too old: checked again first, and nobody answers


@pytest.mark.parametrize("state", [b"\x00", b"\x01"])
def test_the_relays_late_acks_are_taken(state):
    _, alice, _ = pair()
    assert alice(b"PQRA" + state, RELAY, 1.0) == []
    assert alice(b"PQRA" + state, Z, 1.0) is None  # not from the relay: the session's


def test_the_relay_is_used_only_after_a_recheck_found_no_direct_address():
    target = RelayTarget(RELAY, b"g" * 16)
    alice = monitor(CALLER_KEYS, B, (B,), relay=target)
    alice.start(0.0)
    assert alice(b"PQRA\x01", RELAY, 0.5) == []  # both bound, but we are not falling back
    assert alice.peer == B
    alice.recheck(1.0, "peer silent")
    alice.handle_timer(1.0 + RECHECK_S)  # nobody answered a check
    binds = [d for d, to in alice.datagrams_to_send(3.0) if to == RELAY]
    assert binds and all(d.startswith(b"PQRB") for d in binds)
    # a challenge of the relay for our grant is answered; a forged one is not
    genuine = RelayChallenge(b"n" * 16).serialize(target.keys)
    answers = alice(genuine, RELAY, 3.1)
    assert answers is not None and [to for _, to in answers] == [RELAY]
    assert answers[0][0].startswith(b"PQRR")
    forged = RelayChallenge(b"n" * 16).serialize(RelayTarget(RELAY, b"x" * 16).keys)
    assert alice(forged, RELAY, 3.2) == []
    assert alice(b"PQRA\x00", RELAY, 3.3) == [] and alice.peer == B  # the peer is not there yet
    assert alice(b"PQRA\x01", RELAY, 3.4) == []
    assert alice.peer == RELAY
    assert events(alice)[-1] == PathSwitched(B, RELAY, "relay")
