"""PathSelection and PathResponder, sans-I/O: bytes, addresses and a fake clock.

A small in-memory network (:class:`Net`) carries datagrams between selections and the
real sans-I/O relay table, with no delay and an optional drop rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.server.relay_table import RelayTable
from pqcall.transport.candidates import MAX_CALL_CANDIDATES
from pqcall.transport.path_choice import DropReason, PathChoice, PathKind
from pqcall.transport.path_messages import (
    MESSAGE_LENGTH,
    PATH_MAGIC,
    Address,
    MessageType,
    PathMessage,
    PathRole,
    path_check_key,
)
from pqcall.transport.path_responder import PathResponder
from pqcall.transport.pathcheck import (
    CHECK_TRANSMISSIONS,
    MAX_REMOTE_CANDIDATES,
    NOMINATE_INTERVAL_S,
    NOMINATE_TRANSMISSIONS,
    PathSelection,
    PathState,
)
from pqcall.transport.relay_wire import (
    ACK_MAGIC,
    ANSWER_LENGTH,
    BIND_LENGTH,
    BIND_MAGIC,
    RelayChallenge,
    RelayTarget,
    grant_keys,
)
from tests.utils import MALLORY, handshake_pair, keys_of

CALLER_KEYS, CALLEE_KEYS = keys_of(handshake_pair())
# a third party: a caller of another call, with other keys
MALLORY_KEYS, _ = keys_of(handshake_pair(call_id=b"call-2", caller_identity=MALLORY))
KEY = path_check_key(CALLER_KEYS)

CALLER = ("10.0.0.1", 5004)
CALLEE = ("10.0.0.2", 5006)
CALLEE_NAT = ("198.51.100.7", 40000)  # the callee as the caller sees it behind a NAT
NOWHERE = ("10.9.9.9", 9)  # no one answers there
RELAY = ("10.0.0.99", 5001)
TXID = bytes(range(12))


def token_source() -> Callable[[int], bytes]:
    """Deterministic distinct tokens."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def caller(remote: list[Address], relay: RelayTarget | None = None, **kwargs) -> PathSelection:
    return PathSelection(
        CALLER_KEYS, PathRole.CONTROLLING, remote, relay, token_source=token_source(), **kwargs
    )


def callee(remote: list[Address], relay: RelayTarget | None = None, **kwargs) -> PathSelection:
    return PathSelection(
        CALLEE_KEYS, PathRole.CONTROLLED, remote, relay, token_source=token_source(), **kwargs
    )


def message(
    kind: MessageType, role: PathRole, address: Address = CALLEE, txid: bytes = TXID
) -> bytes:
    return PathMessage(kind, role, txid, address).serialize(KEY)


class Net:
    """Parties at fixed addresses, zero delay, a drop rule, and optionally a relay."""

    def __init__(self, drop: Callable[[bytes, Address, Address], bool] | None = None) -> None:
        self.now = 0.0
        self.parties: dict[Address, PathSelection] = {}
        self.drop = drop or (lambda data, src, dst: False)
        self.relay: RelayTable | None = None
        self.sent: list[tuple[float, Address, Address, bytes]] = []  # (now, src, dst, data)

    def add(self, address: Address, selection: PathSelection) -> PathSelection:
        self.parties[address] = selection
        return selection

    def add_relay(self) -> tuple[RelayTarget, RelayTarget]:
        self.relay = RelayTable(token_source=token_source())
        allocation = self.relay.allocate("call", self.now)
        return (
            RelayTarget(RELAY, allocation.caller_token),
            RelayTarget(RELAY, allocation.callee_token),
        )

    def deliver(self, src: Address, dst: Address, data: bytes) -> None:
        self.sent.append((self.now, src, dst, data))
        if self.drop(data, src, dst):
            return
        if dst == RELAY and self.relay is not None:
            outgoing = self.relay.receive_datagram(data, src, self.now)
            if outgoing is not None:
                self.deliver(
                    RELAY, (str(outgoing.address[0]), int(outgoing.address[1])), data=outgoing.data
                )
        elif dst in self.parties:
            self.parties[dst].receive_datagram(data, src, self.now)

    def flush(self) -> None:
        while True:
            pending = [
                (address, selection.datagrams_to_send(self.now))
                for address, selection in self.parties.items()
            ]
            if not any(datagrams for _, datagrams in pending):
                return
            for address, datagrams in pending:
                for data, dst in datagrams:
                    self.deliver(address, dst, data)

    def start(self) -> None:
        for selection in self.parties.values():
            selection.start(self.now)
        self.flush()

    def run(self, until: float = 60.0) -> None:
        """Fire timers in time order until no party has one, or ``until``."""
        while True:
            self.flush()
            timers = [t for s in self.parties.values() if (t := s.get_timer()) is not None]
            if not timers or min(timers) > until:
                return
            self.now = min(timers)
            for selection in self.parties.values():
                timer = selection.get_timer()
                if timer is not None and timer <= self.now:
                    selection.handle_timer(self.now)

    def times_sent(self, src: Address, kind: MessageType | bytes) -> list[float]:
        """When ``src`` sent messages of ``kind`` (a path message type, or the bind magic)."""
        if isinstance(kind, bytes):
            return [t for t, s, _, d in self.sent if s == src and d.startswith(kind)]
        return [
            t for t, s, _, d in self.sent if s == src and d.startswith(PATH_MAGIC) and d[4] == kind
        ]


def state(selection: PathSelection) -> PathState:
    """The state now (a call, so mypy does not narrow it across the steps of a test)."""
    return selection.state


def is_type(kind: MessageType) -> Callable[[bytes, Address, Address], bool]:
    return lambda data, src, dst: data.startswith(PATH_MAGIC) and data[4] == kind


# wire format


def test_message_round_trips_in_40_bytes():
    original = PathMessage(MessageType.NOMINATE, PathRole.CONTROLLING, TXID, ("192.0.2.4", 5004))
    data = original.serialize(KEY)
    assert len(data) == MESSAGE_LENGTH == 40
    assert data[:6] == b"PQPC\x03\x00"
    assert data[6:18] == TXID
    assert data[18:24] == bytes([192, 0, 2, 4]) + (5004).to_bytes(2, "big")
    assert PathMessage.parse(data, KEY) == original
    # both sides derive the same key
    assert path_check_key(CALLEE_KEYS) == KEY


def resigned(body: bytes) -> bytes:
    """``body`` (24 bytes) with a valid MAC: a peer with the key that sends nonsense."""
    from cryptography.hazmat.primitives import hashes, hmac

    h = hmac.HMAC(KEY, hashes.SHA256())
    h.update(body)
    return body + h.finalize()[:16]


VALID = message(MessageType.CHECK, PathRole.CONTROLLING)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b"PQRA\x01", "not a path message", id="relay-ack"),
        pytest.param(VALID[:-1], "path message is truncated", id="truncated"),
        pytest.param(VALID + b"\x00", "path message has trailing data", id="trailing"),
        pytest.param(
            VALID[:-1] + bytes([VALID[-1] ^ 1]), "path message does not authenticate", id="mac"
        ),
        pytest.param(
            VALID[:10] + b"\xff" + VALID[11:], "path message does not authenticate", id="txid"
        ),
        pytest.param(
            resigned(VALID[:4] + b"\x09" + VALID[5:24]),
            "path message has an unknown type 0x09",
            id="type",
        ),
        pytest.param(
            resigned(VALID[:5] + b"\x02" + VALID[6:24]),
            "path message has an unknown role 0x02",
            id="role",
        ),
    ],
)
def test_parse_names_the_defect(data, error):
    with pytest.raises(DecodeError) as raised:
        PathMessage.parse(data, KEY)
    assert str(raised.value) == error


def test_another_calls_key_does_not_verify():
    data = PathMessage(MessageType.CHECK, PathRole.CONTROLLING, TXID, CALLEE).serialize(
        path_check_key(MALLORY_KEYS)
    )
    with pytest.raises(DecodeError, match="does not authenticate"):
        PathMessage.parse(data, KEY)


def test_remote_candidate_limit_matches_signaling():
    assert MAX_REMOTE_CANDIDATES == MAX_CALL_CANDIDATES


# direct path


def test_both_sides_choose_the_direct_path():
    net = Net()
    ours = net.add(CALLER, caller([CALLEE]))
    theirs = net.add(CALLEE, callee([CALLER]))
    net.start()
    assert ours.state is theirs.state is PathState.CHOSEN
    mine, its = ours.choice, theirs.choice
    assert mine is not None and its is not None
    assert (mine.kind, mine.peer, mine.local_candidate, mine.remote_candidate) == (
        PathKind.DIRECT,
        CALLEE,
        CALLER,  # as the callee saw us, from its ack
        CALLEE,
    )
    assert (its.kind, its.peer, its.local_candidate, its.remote_candidate) == (
        PathKind.DIRECT,
        CALLER,
        CALLEE,  # where the caller sent its nomination
        CALLER,
    )
    assert mine.relay is None and mine.elapsed_ms == 0.0
    stats = mine.stats
    assert (stats.checks_sent, stats.responses_received, stats.nominations_sent) == (1, 1, 1)
    assert stats.rejected == 0
    assert its.stats.nominations_received == 1
    # nothing more to do: no timer, no datagram
    assert ours.get_timer() is None and theirs.get_timer() is None
    net.run()
    assert len(net.sent) == 6  # check and response each way, nominate, ack


def test_first_answering_candidate_wins_after_dead_ones():
    net = Net()
    ours = net.add(CALLER, caller([NOWHERE, ("10.9.9.8", 1), CALLEE]))
    net.add(CALLEE, callee([CALLER]))
    net.start()
    assert ours.choice is not None and ours.choice.peer == CALLEE
    assert ours.stats.checks_sent == 3


def test_the_peer_behind_a_nat_is_reached_at_the_address_it_came_from():
    """The callee offers only an address the caller cannot reach; its own check, seen
    from its NAT's public address, gives the caller a peer-reflexive candidate."""
    net = Net()
    ours = net.add(CALLER, caller([NOWHERE]))
    theirs = net.add(CALLEE_NAT, callee([CALLER]))
    net.start()
    assert ours.choice is not None and ours.choice.peer == CALLEE_NAT
    assert ours.remote_candidates == [NOWHERE, CALLEE_NAT]
    assert theirs.choice is not None and theirs.choice.peer == CALLER


# timers


def test_checks_back_off_to_200_ms_and_stop_after_12():
    net = Net()
    ours = net.add(CALLER, caller([NOWHERE], direct_timeout_s=2.0, timeout_s=10.0))
    net.start()
    assert ours.get_timer() == pytest.approx(0.05)
    net.run(until=9.0)
    times = net.times_sent(CALLER, MessageType.CHECK)
    assert len(times) == CHECK_TRANSMISSIONS == 12
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [0.05, 0.1] + [0.2] * 9
    assert times[-1] == pytest.approx(1.95)
    # no relay: wait for the deadline, then fail with one clear line
    assert state(ours) is PathState.EXPECT_RESPONSE
    assert ours.get_timer() == 10.0
    net.run()
    assert state(ours) is PathState.FAILED
    assert ours.failure == (
        "no media path after 10 s: no answer from the peer's 1 address; no relay offered"
    )
    assert ours.choice is None and ours.get_timer() is None


def test_nomination_is_repeated_a_bounded_number_of_times_then_the_relay_is_used():
    net = Net(drop=is_type(MessageType.NOMINATE))
    caller_relay, callee_relay = net.add_relay()
    ours = net.add(CALLER, caller([CALLEE], caller_relay))
    theirs = net.add(CALLEE, callee([CALLER], callee_relay))
    net.start()
    assert state(ours) is PathState.EXPECT_NOMINATE_ACK
    net.run()
    times = net.times_sent(CALLER, MessageType.NOMINATE)
    assert len(times) == NOMINATE_TRANSMISSIONS
    assert times == pytest.approx([i * NOMINATE_INTERVAL_S for i in range(10)])
    # given up 50 ms after the last copy: bound to the relay, where the callee waits
    assert net.times_sent(CALLER, BIND_MAGIC) == pytest.approx([0.5])
    for side in (ours, theirs):
        assert side.choice is not None
        assert (side.choice.kind, side.choice.peer) == (PathKind.RELAY, RELAY)
        assert side.choice.local_candidate is side.choice.remote_candidate is None
    assert ours.choice is not None and ours.choice.elapsed_ms == pytest.approx(500)


def test_without_a_relay_an_unconfirmed_nomination_fails_at_once():
    net = Net(drop=is_type(MessageType.NOMINATE_ACK))
    ours = net.add(CALLER, caller([CALLEE]))
    theirs = net.add(CALLEE, callee([CALLER]))
    net.start()
    net.run()
    assert ours.failure == (
        "no media path: the peer did not confirm the direct path; no relay offered"
    )
    # the callee chose on the first copy and acked every one
    assert theirs.choice is not None and theirs.choice.peer == CALLER
    assert net.times_sent(CALLEE, MessageType.NOMINATE_ACK) == pytest.approx(
        [i * NOMINATE_INTERVAL_S for i in range(10)]
    )


def test_a_late_ack_after_turning_to_the_relay_still_wins():
    held: list[bytes] = []

    def hold_acks(data: bytes, src: Address, dst: Address) -> bool:
        if is_type(MessageType.NOMINATE_ACK)(data, src, dst):
            held.append(data)
            return True
        return False

    net = Net(drop=hold_acks)
    ours = net.add(CALLER, caller([CALLEE], RelayTarget(NOWHERE, bytes(16))))
    net.add(CALLEE, callee([CALLER]))
    net.start()
    net.run(until=0.6)
    assert state(ours) is PathState.EXPECT_RELAY
    ours.receive_datagram(held[0], CALLEE, net.now)
    assert ours.choice is not None
    assert (ours.choice.kind, ours.choice.peer) == (PathKind.DIRECT, CALLEE)


# relay


def test_caller_turns_to_the_relay_after_the_direct_timeout():
    net = Net()
    caller_relay, callee_relay = net.add_relay()
    ours = net.add(CALLER, caller([NOWHERE], caller_relay))
    theirs = net.add(CALLEE, callee([NOWHERE], callee_relay))
    net.start()
    # the callee binds at once and keeps binding; the caller only after 2 s
    assert net.times_sent(CALLEE, BIND_MAGIC) == [0.0]
    assert net.times_sent(CALLER, BIND_MAGIC) == []
    net.run()
    # (the caller's bind at 2 s is answered by a challenge, its answer binds it: the
    # callee's bind at 2 s still finds it unbound, the one at 2.5 s finds both bound)
    assert net.times_sent(CALLEE, BIND_MAGIC) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert net.times_sent(CALLER, BIND_MAGIC) == pytest.approx([2.0])
    assert ours.choice is not None and theirs.choice is not None
    assert ours.choice.kind is theirs.choice.kind is PathKind.RELAY
    assert ours.choice.peer == theirs.choice.peer == RELAY
    assert ours.choice.relay == RELAY
    assert ours.choice.stats.binds_sent == 1
    assert theirs.choice.stats.relay_acks_received == 6  # five "waiting", one "both bound"


def test_caller_with_no_candidates_binds_at_once():
    net = Net()
    caller_relay, callee_relay = net.add_relay()
    ours = net.add(CALLER, caller([], caller_relay))
    theirs = net.add(CALLEE, callee([], callee_relay))
    net.start()
    # the caller bound first ("waiting"), so the callee's bind finds both bound...
    assert theirs.choice is not None and theirs.choice.kind is PathKind.RELAY
    assert theirs.choice.elapsed_ms == 0
    # ...and the caller learns it from its next bind
    assert state(ours) is PathState.EXPECT_RELAY
    net.run()
    assert ours.choice is not None and ours.choice.kind is PathKind.RELAY
    assert ours.choice.elapsed_ms == pytest.approx(500)


def test_relay_that_never_answers_fails_at_the_timeout():
    net = Net()
    ours = net.add(CALLER, caller([NOWHERE], RelayTarget(NOWHERE, bytes(16)), timeout_s=3))
    theirs = net.add(CALLEE, callee([NOWHERE], RelayTarget(NOWHERE, bytes(16)), timeout_s=3))
    net.start()
    net.run()
    assert ours.failure == (
        "no media path after 3 s: no answer from the peer's 1 address; the relay did not answer"
    )
    assert theirs.failure == (
        "no media path after 3 s: the caller nominated no direct path; the relay did not answer"
    )
    # binds every 0.5 s until the end, and no more
    assert net.times_sent(CALLER, BIND_MAGIC) == pytest.approx([2.0, 2.5])
    assert len(net.times_sent(CALLEE, BIND_MAGIC)) == 6


def test_relay_acks_count_only_from_the_relay():
    theirs = callee([], RelayTarget(RELAY, bytes(16)))
    theirs.start(0.0)
    theirs.receive_datagram(ACK_MAGIC + b"\x01", NOWHERE, 0.1)
    theirs.receive_datagram(ACK_MAGIC + b"\x07", RELAY, 0.1)
    assert state(theirs) is PathState.EXPECT_NOMINATION
    dropped = theirs.stats.dropped
    assert dropped[DropReason.NOT_PATH_MESSAGE] == 1
    assert dropped[DropReason.MALFORMED] == 1
    theirs.receive_datagram(ACK_MAGIC + b"\x00", RELAY, 0.2)
    assert state(theirs) is PathState.EXPECT_NOMINATION
    theirs.receive_datagram(ACK_MAGIC + b"\x01", RELAY, 0.3)
    assert theirs.choice is not None and theirs.choice.kind is PathKind.RELAY


# what is rejected


def test_a_third_party_is_rejected_and_counted():
    net = Net()
    theirs = net.add(CALLEE, callee([CALLER], timeout_s=1))
    mallory = net.add(
        CALLER,
        PathSelection(MALLORY_KEYS, PathRole.CONTROLLING, [CALLEE], token_source=token_source()),
    )
    net.start()
    net.run()
    assert theirs.choice is None and mallory.choice is None
    assert theirs.failure is not None and mallory.failure is not None
    # every one of mallory's checks, also those after the callee gave up
    assert theirs.stats.dropped[DropReason.UNAUTHENTICATED] == CHECK_TRANSMISSIONS
    assert theirs.stats.checks_received == 0
    assert mallory.stats.dropped[DropReason.UNAUTHENTICATED] > 0


def test_our_own_check_reflected_back_is_rejected():
    ours = caller([CALLEE])
    ours.start(0.0)
    [(check, _)] = ours.datagrams_to_send(0.0)
    ours.receive_datagram(check, CALLEE, 0.01)
    assert ours.stats.dropped[DropReason.REFLECTED] == 1
    assert ours.datagrams_to_send(0.01) == []  # not answered
    assert state(ours) is PathState.EXPECT_RESPONSE


def test_answers_must_match_a_request_and_come_from_where_it_went():
    ours = caller([CALLEE, NOWHERE])
    ours.start(0.0)
    sent = ours.datagrams_to_send(0.0)
    txid = PathMessage.parse(sent[0][0], KEY).transaction_id
    # unknown transaction
    ours.receive_datagram(message(MessageType.RESPONSE, PathRole.CONTROLLED), CALLEE, 0.01)
    # the right transaction from another address
    response = message(MessageType.RESPONSE, PathRole.CONTROLLED, CALLER, txid)
    ours.receive_datagram(response, NOWHERE, 0.01)
    # an ack for a check's transaction
    ack = message(MessageType.NOMINATE_ACK, PathRole.CONTROLLED, CALLER, txid)
    ours.receive_datagram(ack, CALLEE, 0.01)
    dropped = ours.stats.dropped
    assert dropped[DropReason.UNKNOWN_TRANSACTION] == 2
    assert dropped[DropReason.ASYMMETRIC] == 1
    assert state(ours) is PathState.EXPECT_RESPONSE
    # the real answer still counts
    ours.receive_datagram(response, CALLEE, 0.02)
    assert state(ours) is PathState.EXPECT_NOMINATE_ACK
    # and a second copy of it does not
    ours.receive_datagram(response, CALLEE, 0.03)
    assert ours.stats.dropped[DropReason.UNKNOWN_TRANSACTION] == 3


def test_nominations_go_only_from_caller_to_callee():
    ours = caller([CALLEE])
    ours.start(0.0)
    ours.receive_datagram(message(MessageType.NOMINATE, PathRole.CONTROLLED), CALLEE, 0.0)
    assert ours.stats.dropped[DropReason.UNEXPECTED] == 1


def test_callee_answers_a_repeated_nomination_and_ignores_another_one():
    theirs = callee([])
    theirs.start(0.0)
    nominate = message(MessageType.NOMINATE, PathRole.CONTROLLING, CALLEE)
    theirs.receive_datagram(nominate, CALLER, 0.1)
    assert theirs.choice is not None and theirs.choice.peer == CALLER
    [(ack, to)] = theirs.datagrams_to_send(0.1)
    assert to == CALLER
    assert PathMessage.parse(ack, KEY) == PathMessage(
        MessageType.NOMINATE_ACK, PathRole.CONTROLLED, TXID, CALLER
    )
    # the ack was lost: the copy is acked again
    theirs.receive_datagram(nominate, CALLER, 0.15)
    assert theirs.datagrams_to_send(0.15) == [(ack, CALLER)]
    # the first nomination stands
    theirs.receive_datagram(nominate, NOWHERE, 0.2)
    assert theirs.datagrams_to_send(0.2) == []
    assert theirs.stats.dropped[DropReason.UNEXPECTED] == 1
    assert theirs.stats.nominations_received == 2


def test_media_during_selection_is_not_a_path_message():
    ours = caller([CALLEE])
    ours.start(0.0)
    ours.receive_datagram(b"\x50" + bytes(120), CALLEE, 0.0)
    ours.receive_datagram(PATH_MAGIC + bytes(10), CALLEE, 0.0)
    stats = ours.stats
    assert stats.dropped[DropReason.NOT_PATH_MESSAGE] == 1
    assert stats.dropped[DropReason.MALFORMED] == 1
    assert stats.rejected == 1  # other traffic is not a rejected check


# the responder, once media runs


def chosen(kind: PathKind, peer: Address, relay: Address | None = RELAY) -> PathChoice:
    stats = caller([]).stats
    return PathChoice(kind, peer, None, None, relay, 0.0, stats)


def test_responder_answers_checks_and_the_chosen_nomination():
    responder = PathResponder(CALLEE_KEYS, chosen(PathKind.DIRECT, CALLER))
    check = message(MessageType.CHECK, PathRole.CONTROLLING)
    [(response, to)] = responder(check, CALLER, 1.0) or []
    assert to == CALLER
    assert PathMessage.parse(response, KEY).kind is MessageType.RESPONSE
    nominate = message(MessageType.NOMINATE, PathRole.CONTROLLING)
    [(ack, to)] = responder(nominate, CALLER, 1.0) or []
    assert PathMessage.parse(ack, KEY) == PathMessage(
        MessageType.NOMINATE_ACK, PathRole.CONTROLLED, TXID, CALLER
    )
    assert responder(nominate, NOWHERE, 1.0) == []  # not the chosen path: taken, unanswered
    stats = responder.stats
    assert (stats.checks_received, stats.nominations_received) == (1, 1)
    assert stats.dropped[DropReason.UNEXPECTED] == 1


def test_responder_takes_relay_acks_and_leaves_media():
    responder = PathResponder(CALLER_KEYS, chosen(PathKind.RELAY, RELAY))
    assert responder(ACK_MAGIC + b"\x01", RELAY, 1.0) == []
    assert responder(ACK_MAGIC + b"\x01", NOWHERE, 1.0) is None
    assert responder(b"\x50" + bytes(120), RELAY, 1.0) is None  # media
    assert responder(PATH_MAGIC + bytes(36), RELAY, 1.0) is None  # does not authenticate
    # our own message reflected, and an answer that comes late: taken, not answered
    assert responder(message(MessageType.CHECK, PathRole.CONTROLLING), RELAY, 1.0) == []
    assert responder(message(MessageType.RESPONSE, PathRole.CONTROLLED), CALLEE, 1.0) == []
    # a caller never acks a nomination
    assert responder(message(MessageType.NOMINATE, PathRole.CONTROLLING), RELAY, 1.0) == []
    stats = responder.stats
    assert stats.relay_acks_received == 1
    assert stats.dropped[DropReason.REFLECTED] == 2
    assert stats.dropped[DropReason.UNEXPECTED] == 1


@pytest.mark.parametrize("kind", [PathKind.DIRECT, PathKind.RELAY])
def test_responder_takes_late_relay_challenges_unanswered(kind):
    # a bind sent while selecting is challenged after the choice (a loaded relay): the
    # challenge is neither answered (nothing is to be bound) nor left to the media session,
    # which would count it as a rejected media packet
    challenge = RelayChallenge(bytes(16)).serialize(grant_keys(bytes(range(16))))
    responder = PathResponder(
        CALLEE_KEYS, chosen(kind, CALLER if kind is PathKind.DIRECT else RELAY)
    )
    assert responder(challenge, RELAY, 1.0) == []
    assert responder(challenge, NOWHERE, 1.0) is None  # not from the relay: the session's
    assert responder(challenge[:-1], RELAY, 1.0) is None  # not a challenge's length
    assert (
        PathResponder(CALLEE_KEYS, chosen(kind, CALLER, relay=None))(challenge, RELAY, 1.0) is None
    )
    stats = responder.stats
    assert stats.relay_challenges_late == 1
    assert stats.rejected == 0 and stats.relay_acks_received == 0


# misuse


def test_misuse_is_refused_with_a_clear_message():
    with pytest.raises(LocalProtocolError, match="path role controlled does not match the keys"):
        PathSelection(CALLER_KEYS, PathRole.CONTROLLED, [], token_source=token_source())
    with pytest.raises(LocalProtocolError, match="must be a numeric IPv4 address"):
        caller([("example.org", 5004)])
    with pytest.raises(LocalProtocolError, match="must be a numeric IPv4 address"):
        caller([("::1", 5004)])
    with pytest.raises(LocalProtocolError, match="invalid port: 0"):
        caller([("10.0.0.1", 0)])
    with pytest.raises(LocalProtocolError, match="17 remote candidates, at most 16"):
        caller([("10.0.0.1", port) for port in range(1, 18)])
    with pytest.raises(LocalProtocolError, match="relay token must be 16 bytes"):
        RelayTarget(RELAY, b"short")
    with pytest.raises(LocalProtocolError, match="timeouts must be positive"):
        caller([], timeout_s=0)
    ours = caller([CALLEE, CALLEE])
    assert ours.remote_candidates == [CALLEE]  # checked once
    with pytest.raises(LocalProtocolError, match="not started"):
        ours.receive_datagram(b"", CALLEE, 0.0)
    ours.start(0.0)
    with pytest.raises(LocalProtocolError, match="already started"):
        ours.start(0.0)
    with pytest.raises(LocalProtocolError, match="source address"):
        ours.receive_datagram(b"", ("::1", 5), 0.0)
    assert PathRole.of(CALLEE_KEYS.role) is PathRole.CONTROLLED
    assert PathRole.CONTROLLED.other is PathRole.CONTROLLING


# fuzz

addresses = st.sampled_from([CALLER, CALLEE, RELAY, NOWHERE])


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return PATH_MAGIC + draw(st.binary(max_size=40))
    if kind == 2:
        return ACK_MAGIC + draw(st.binary(max_size=2))
    # authentic, with arbitrary fields
    return resigned(PATH_MAGIC + draw(st.binary(min_size=20, max_size=20)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(datagrams(), addresses), max_size=20), st.booleans())
def test_receive_datagram_never_raises(inputs, is_caller):
    relay = RelayTarget(RELAY, bytes(16))
    side = caller([CALLEE], relay) if is_caller else callee([CALLER], relay)
    side.start(0.0)
    responder = PathResponder(
        CALLER_KEYS if is_caller else CALLEE_KEYS, chosen(PathKind.DIRECT, CALLEE)
    )
    now = 0.0
    for data, addr in inputs:
        now += 0.01
        side.receive_datagram(data, addr, now)
        side.handle_timer(now)
        for out, _to in side.datagrams_to_send(now):
            assert len(out) in (MESSAGE_LENGTH, BIND_LENGTH, ANSWER_LENGTH)
        responder(data, addr, now)
    assert side.state in PathState
