"""The group call server's pure parts: the roster table and the forwarding table."""

from __future__ import annotations

import itertools

import pytest

from pqcall.server.group_forward import GroupForwardTable
from pqcall.server.group_table import MAX_JOINED_GROUPS, GroupRefused, GroupTable
from pqcall.signaling.group_messages import MAX_GROUP_MEMBERS
from pqcall.transport.group_wire import encode_bind, parse_ack

CALL = "ab" * 16
OTHER_CALL = "cd" * 16
SIG = b"s" * 8


def tokens() -> GroupTable:
    counter = itertools.count()
    return GroupTable(token_source=lambda n: next(counter).to_bytes(n, "big"))


def created(table: GroupTable) -> None:
    table.create(CALL, ("alice", 1), [("bob", 2, SIG), ("carol", 3, SIG)], 100.0)


def refused(status: int, action: object, *args: object) -> str:
    with pytest.raises(GroupRefused) as exc:
        action(*args)  # type: ignore[operator]
    assert exc.value.status == status, exc.value.reason
    return exc.value.reason


def test_lifecycle_and_last_one_out_ends_the_call() -> None:
    table = tokens()
    created(table)
    group = table.get(CALL)
    assert group is not None
    assert [(m.name, m.state) for m in group.members.values()] == [
        ("alice", "joined"),
        ("bob", "invited"),
        ("carol", "invited"),
    ]
    _, bob = table.accept(CALL, 2, 101.0)
    assert bob.state == "joined" and bob.sender_id == 2 and bob.token is not None
    assert table.by_token(bob.token) == (group, bob)
    table.decline(CALL, 3, busy=True)
    assert group.members[3].state == "busy"
    table.leave(CALL, 1, 102.0)
    assert table.get(CALL) is group and group.ended is None  # bob is still in it
    old = bob.token
    table.leave(CALL, 2, 103.0)
    assert group.ended == 103.0 and table.get(CALL) is None
    assert table.by_token(old) is None


def test_who_may_do_what() -> None:
    table = tokens()
    created(table)
    assert "not a member" in refused(403, table.accept, CALL, 9, 1.0)  # never invited
    assert "not invited" not in refused(409, table.accept, CALL, 1, 1.0)  # joined already
    refused(403, table.invite, CALL, 2, ("dave", 4, SIG), 1.0)  # bob is only invited
    refused(403, table.check_message, CALL, 2, "alice")  # an invitee may not send
    refused(404, table.check_message, CALL, 1, "bob")  # bob is not joined yet
    table.accept(CALL, 2, 1.0)
    assert table.check_message(CALL, 1, "bob").name == "bob"
    refused(404, table.check_message, CALL, 1, "alice")  # not to oneself
    refused(409, table.invite, CALL, 1, ("bob", 2, SIG), 1.0)  # already joined
    table.leave(CALL, 2, 2.0)
    assert "not invited" in refused(403, table.accept, CALL, 2, 3.0)  # left: needs an invite
    table.invite(CALL, 1, ("bob", 2, SIG), 3.0)
    _, bob = table.accept(CALL, 2, 3.0)
    assert bob.sender_id == 3  # a new join never reuses a sender id
    refused(404, table.accept, OTHER_CALL, 2, 1.0)


def test_gone_member_comes_back_into_the_same_call() -> None:
    table = tokens()
    created(table)
    table.accept(CALL, 2, 1.0)
    table.leave(CALL, 2, 2.0, gone=True)
    group, bob = table.accept(CALL, 2, 3.0)
    assert bob.state == "joined" and group.call_id == CALL


def test_unanswered_invitations_ring_out_and_the_call_goes_on() -> None:
    table = tokens()
    created(table)  # bob and carol invited at 100.0
    table.accept(CALL, 2, 101.0)
    table.invite(CALL, 1, ("dave", 4, SIG), 150.0)
    group = table.get(CALL)
    assert group is not None
    version = group.version
    assert table.ring_out(before=100.0) == []  # not older than the timeout yet
    [(rang, lapsed)] = table.ring_out(before=145.0)
    assert rang is group and [m.name for m in lapsed] == ["carol"]  # dave is still ringing
    assert group.version == version + 1
    states = {m.name: m.state for m in group.view().members}
    assert states == {"alice": "joined", "bob": "joined", "carol": "no_answer", "dave": "invited"}
    assert table.ring_out(before=145.0) == []  # once
    assert "not invited" in refused(403, table.accept, CALL, 3, 146.0)  # too late to answer
    refused(409, table.decline, CALL, 3, False)
    table.invite(CALL, 2, ("carol", 3, SIG), 152.0)  # she may be invited again
    _, carol = table.accept(CALL, 3, 153.0)
    assert carol.state == "joined" and table.get(CALL) is group and group.ended is None


def test_caps_and_duplicates() -> None:
    table = tokens()
    many = [(f"u{i}", 10 + i, SIG) for i in range(MAX_GROUP_MEMBERS)]
    refused(400, table.create, CALL, ("alice", 1), many, 1.0)
    refused(400, table.create, CALL, ("alice", 1), [("bob", 2, SIG), ("bob", 2, SIG)], 1.0)
    refused(400, table.create, CALL, ("alice", 1), [("alice", 1, SIG)], 1.0)
    table.create(CALL, ("alice", 1), many[: MAX_GROUP_MEMBERS - 1], 1.0)
    refused(400, table.invite, CALL, 1, ("one-too-many", 99, SIG), 1.0)
    refused(409, table.create, CALL, ("bob", 2), [("carol", 3, SIG)], 1.0)


def test_one_account_cannot_fill_the_table_with_calls() -> None:
    table = tokens()
    for n in range(MAX_JOINED_GROUPS):
        table.create(f"{n:032x}", ("mallory", 1), [("bob", 2, SIG)], 1.0)
    reason = refused(429, table.create, "f" * 32, ("mallory", 1), [("bob", 2, SIG)], 1.0)
    assert f"{MAX_JOINED_GROUPS} group calls" in reason
    table.create("e" * 32, ("alice", 3), [("bob", 2, SIG)], 1.0)  # others still can
    table.leave(f"{0:032x}", 1, 2.0)  # once she leaves one, she may start another
    table.create("f" * 32, ("mallory", 1), [("bob", 2, SIG)], 2.0)


# ---------------------------------------------------------------- forwarding

A, B, C, D = (("127.0.0.1", port) for port in (1001, 1002, 1003, 1004))


def bound_table() -> GroupForwardTable:
    table = GroupForwardTable(gone_after_s=5.0)
    for token, call in ((b"a" * 16, CALL), (b"b" * 16, CALL), (b"c" * 16, CALL)):
        table.add(call, token)
    table.add(OTHER_CALL, b"d" * 16)
    for token, address in ((b"a" * 16, A), (b"b" * 16, B), (b"c" * 16, C), (b"d" * 16, D)):
        [(ack, to)] = table.receive_datagram(encode_bind(token), address, 0.0)
        assert to == address and parse_ack(ack) is not None
    return table


def test_media_goes_to_every_other_member_of_the_same_call_only() -> None:
    table = bound_table()
    sent = table.receive_datagram(b"sframe packet", A, 1.0)
    assert sorted(to for _, to in sent) == [B, C]
    assert all(data == b"sframe packet" for data, _ in sent)  # unchanged, never opened
    assert table.receive_datagram(b"x", D, 1.0) == []  # alone in its call
    assert table.receive_datagram(b"x", ("127.0.0.1", 9), 1.0) == []  # unknown address
    assert table.receive_datagram(encode_bind(b"z" * 16), ("127.0.0.1", 9), 1.0) == []
    assert table.stats().dropped == {"unknown_address": 1, "bad_bind": 1}


def test_ack_counts_the_others_and_a_removed_member_is_cut_off() -> None:
    table = bound_table()
    [(ack, _)] = table.receive_datagram(encode_bind(b"a" * 16), A, 1.0)
    assert parse_ack(ack) == 2
    table.remove(b"b" * 16)
    assert [to for _, to in table.receive_datagram(b"m", A, 1.0)] == [C]
    assert table.receive_datagram(b"m", B, 1.0) == []
    assert table.receive_datagram(encode_bind(b"b" * 16), B, 1.0) == []  # its token is dead


def test_rebinding_moves_a_member() -> None:
    table = bound_table()
    moved = ("127.0.0.1", 2001)
    table.receive_datagram(encode_bind(b"a" * 16), moved, 1.0)
    assert sorted(to for _, to in table.receive_datagram(b"m", B, 1.0)) == [C, moved]
    assert table.receive_datagram(b"m", A, 1.0) == []


def test_silent_members_are_reported_gone_once() -> None:
    table = bound_table()
    for _ in range(3):
        table.receive_datagram(b"m", A, 4.0)
    gone = table.handle_timer(5.5)
    assert sorted(token for _, token in gone) == [b"b" * 16, b"c" * 16, b"d" * 16]
    assert table.handle_timer(6.0) == []
    assert table.receive_datagram(b"m", A, 6.0) == []  # nobody left bound to hear it


def test_rate_limit_per_member() -> None:
    table = GroupForwardTable(packets_per_s=10.0)
    table.add(CALL, b"a" * 16)
    table.add(CALL, b"b" * 16)
    table.receive_datagram(encode_bind(b"a" * 16), A, 0.0)
    table.receive_datagram(encode_bind(b"b" * 16), B, 0.0)
    forwarded = sum(len(table.receive_datagram(b"m", A, 0.0)) for _ in range(50))
    assert forwarded == 10
    assert table.stats().dropped["rate_limited"] == 40
