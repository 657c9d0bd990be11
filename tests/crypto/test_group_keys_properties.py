"""Group keys under random input: membership histories and hostile bytes.

A random history of joins, leaves, rotations and frames must keep the two
promises of docs/protocol.md#group-calls-keys: a member opens exactly the
frames sent while it held the sender's key, never one sent before it joined
or after it left (checked against the generations each member was given).
Parsers fed random bytes raise only their documented exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from pqcall.crypto.group_keys import (
    SWITCH_AFTER_S,
    GroupKeyring,
    PairwiseChannel,
    SenderKey,
    decode_sender_key,
    packet_kid,
)
from pqcall.exceptions import DecodeError, SealRejected

NAMES = ("a", "b", "c", "d", "e")


@dataclass
class Member:
    ring: GroupKeyring
    given: set[tuple[int, int]] = field(default_factory=set)  # (sender id, generation) keys


class Call:
    """Members' rings with keys handed over as a client does (no channels: not under test)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.members: dict[str, Member] = {}
        self.ids = {name: i + 1 for i, name in enumerate(NAMES)}
        self.given_at_leave: dict[str, set[tuple[int, int]]] = {}
        self.sent: list[bytes] = []  # every frame so far

    def give(self, sender: str, key: SenderKey, to: list[str]) -> None:
        for name in to:
            member = self.members[name]
            member.ring.add_peer_key(key, self.now, owner=sender)
            member.given.add((key.sender_id, key.generation))

    def newest_key(self, name: str) -> SenderKey:
        ring = self.members[name].ring
        return ring.pending_key or ring.own_key

    def join(self, name: str) -> None:
        others = list(self.members)
        for other in others:  # everyone rotates; the newcomer gets only the new keys
            key = self.members[other].ring.rekey_for_join(now=self.now)
            self.give(other, key, [n for n in others if n != other])
        self.members[name] = Member(GroupKeyring(self.ids[name], now=self.now))
        for other in others:
            self.give(other, self.newest_key(other), [name])
        self.give(name, self.members[name].ring.own_key, others)
        # nothing sent before the join opens for the newcomer, whatever it holds
        newcomer = self.members[name].ring
        assert all(newcomer.unprotect(packet, self.now) is None for packet in self.sent)

    def leave(self, name: str) -> None:
        self.given_at_leave[name] = set(self.members.pop(name).given)
        remaining = list(self.members)
        for other in remaining:
            key = self.members[other].ring.rekey_for_leave(self.ids[name], now=self.now)
            self.give(other, key, [n for n in remaining if n != other])

    def send(self, sender: str, everyone: dict[str, Member]) -> None:
        """A frame from ``sender``, offered to every member ever seen (leavers included)."""
        ring = self.members[sender].ring
        packet = ring.protect(b"frame", now=self.now)
        self.sent.append(packet)
        generation = ring.own_key.generation
        for name, member in everyone.items():
            if name == sender:
                continue
            opened = member.ring.unprotect(packet, self.now)
            may = (self.ids[sender], generation) in member.given and name in self.members
            if opened is not None:
                assert (self.ids[sender], generation) in member.given
            elif may:
                raise AssertionError(f"{name} was given the key of a frame it could not open")


actions = st.lists(
    st.tuples(st.sampled_from(["join", "leave", "send", "wait"]), st.sampled_from(NAMES)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(actions)
def test_members_open_exactly_what_they_were_given(history):
    call = Call()
    everyone: dict[str, Member] = {}
    call.join("a")
    everyone["a"] = call.members["a"]
    for action, name in history:
        if action == "join" and name not in call.members and name not in everyone:
            call.join(name)
            everyone[name] = call.members[name]
        elif action == "leave" and name in call.members and len(call.members) > 1:
            call.leave(name)
        elif action == "send" and name in call.members:
            call.send(name, everyone)
        elif action == "wait":
            call.now += SWITCH_AFTER_S
    # a leaver is never given a key after it left
    for name, snapshot in call.given_at_leave.items():
        assert everyone[name].given == snapshot


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_parsers_raise_only_documented_exceptions(data):
    try:
        decode_sender_key(data)
    except DecodeError:
        pass
    try:
        packet_kid(data)
    except DecodeError:
        pass
    ring = GroupKeyring(1, now=0.0)
    ring.add_peer_key(SenderKey(2, 0, bytes(32)), 0.0)
    assert ring.unprotect(data, 0.0) is None
    channel = PairwiseChannel(bytes(32), bytes(32), peer_name="bob")
    for candidate in (data, b"PQ\x01\x41" + data):
        try:
            channel.open(candidate)
        except (DecodeError, SealRejected):
            pass
