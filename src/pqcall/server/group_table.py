"""Group calls' rosters in one server process: who is invited, joined, gone; sans-I/O.

:class:`GroupTable` decides every group action and raises :class:`GroupRefused`
(with the HTTP status and one sentence) for what it does not allow; the service
(:mod:`pqcall.server.group_service`) turns that into ``{"error": ...}`` and
pushes the roster. Time is a parameter (``now``).

Rules (the attacker's view: the server is honest here, the members may not be):

- the creator is joined at once; everyone named is invited (at most
  :data:`~pqcall.signaling.group_messages.MAX_GROUP_MEMBERS` people ever, creator
  included); only a joined member may invite, send a message or leave;
- only an invited person may accept (403 for anyone else, so an account that was
  not invited cannot join); a member the forwarder saw go silent (``gone``) may
  accept again and comes back into the same call; one who left needs a new invite;
- a message goes only from a joined member to another joined member;
- each join draws a fresh sender id (1..255, never reused in one call) and a fresh
  forwarding token: a rejoining member's old keys and address are not its new ones;
- when the last joined member leaves or is gone, the call ends and the invitees'
  invitations lapse;
- an invitation nobody answers within the 1:1 ring timeout rings out
  (:meth:`GroupTable.ring_out`): the invitee is shown ``no_answer`` and may be
  invited again; the call goes on.

Rosters live in memory: a restart ends every group call (decision 0600).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pqcall.signaling.group_messages import (
    MAX_GROUP_MEMBERS,
    GroupMember,
    GroupView,
    MemberState,
)
from pqcall.transport.group_wire import TOKEN_LENGTH

MAX_GROUP_CALLS = 10_000  # live group calls in one process
MAX_JOINED_GROUPS = 4  # live group calls one account is joined to (so one cannot fill the table)
MAX_SENDER_ID = 255


class GroupRefused(Exception):
    """An action the rules do not allow: ``status`` (4xx) and a sentence for the phone."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(slots=True)
class Member:
    """One person of a group call, as the server keeps them."""

    name: str
    account_id: int
    state: MemberState
    invited_by: str | None
    invitation: bytes | None
    sender_id: int | None = None
    token: bytes | None = None  # forwarding token while joined
    joined: float | None = None
    left: float | None = None
    invited_at: float | None = None  # when the current invitation was made

    def view(self) -> GroupMember:
        """What members see (never the token)."""
        return GroupMember(
            name=self.name,
            state=self.state,
            sender_id=self.sender_id if self.state == "joined" else None,
            invited_by=self.invited_by,
            invitation=self.invitation,
            joined=self.joined,
            left=self.left,
        )


@dataclass(slots=True)
class Group:
    """One group call."""

    call_id: str
    creator: str
    created: float
    members: dict[int, Member] = field(default_factory=dict)  # account id -> member, in order
    version: int = 0
    ended: float | None = None
    next_sender_id: int = 1

    def view(self) -> GroupView:
        return GroupView(
            call_id=self.call_id,
            creator=self.creator,
            version=self.version,
            created=self.created,
            ended=self.ended,
            members=[member.view() for member in self.members.values()],
        )

    def joined(self) -> list[Member]:
        return [member for member in self.members.values() if member.state == "joined"]

    def audience(self) -> list[Member]:
        """Who is told of a change: the invited and the joined."""
        return [m for m in self.members.values() if m.state in ("invited", "joined")]


class GroupTable:
    """Every live group call of this process.

    Args:
        token_source: draws forwarding tokens (``secrets.token_bytes``; tests may fix it).
    """

    def __init__(self, token_source: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self._groups: dict[str, Group] = {}
        self._by_token: dict[bytes, tuple[str, int]] = {}  # token -> (call id, account id)
        self._token_source = token_source

    def __len__(self) -> int:
        return len(self._groups)

    def __iter__(self) -> Iterator[Group]:
        return iter(list(self._groups.values()))

    def get(self, call_id: str) -> Group | None:
        """A live group call."""
        return self._groups.get(call_id)

    def member_of(self, call_id: str, account_id: int) -> tuple[Group, Member]:
        """The call and the account's entry in it.

        Raises:
            GroupRefused: 404 no such live call, 403 the account was never in it.
        """
        group = self._groups.get(call_id)
        if group is None:
            raise GroupRefused(404, "no such group call")
        member = group.members.get(account_id)
        if member is None:
            raise GroupRefused(403, "not a member of this group call")
        return group, member

    def by_token(self, token: bytes) -> tuple[Group, Member] | None:
        """The call and member a forwarding token belongs to."""
        found = self._by_token.get(token)
        if found is None:
            return None
        group = self._groups.get(found[0])
        member = None if group is None else group.members.get(found[1])
        return None if group is None or member is None else (group, member)

    # ------------------------------------------------------------ actions

    def create(
        self,
        call_id: str,
        creator: tuple[str, int],
        invitees: list[tuple[str, int, bytes]],
        now: float,
    ) -> Group:
        """A new call: ``creator`` (name, account id) joined, ``invitees`` (name, id, signature).

        Raises:
            GroupRefused: 409 the id is in use, 400 nobody (else) invited, a name twice,
                too many people; 429 the creator is joined to MAX_JOINED_GROUPS calls already;
                503 the table is full.
        """
        if call_id in self._groups:
            raise GroupRefused(409, "call id is already in use")
        if len(self._groups) >= MAX_GROUP_CALLS:
            raise GroupRefused(503, "the server runs too many group calls")
        if self._joined_count(creator[1]) >= MAX_JOINED_GROUPS:
            raise GroupRefused(429, f"you are in {MAX_JOINED_GROUPS} group calls already")
        ids = [account_id for _, account_id, _ in invitees]
        if creator[1] in ids:
            raise GroupRefused(400, "you cannot invite yourself")
        if len(set(ids)) != len(ids):
            raise GroupRefused(400, "someone is invited twice")
        if 1 + len(invitees) > MAX_GROUP_MEMBERS:
            raise GroupRefused(400, f"a group call has at most {MAX_GROUP_MEMBERS} people")
        group = Group(call_id=call_id, creator=creator[0], created=now)
        first = Member(creator[0], creator[1], "invited", None, None)
        group.members[creator[1]] = first
        self._join(group, first, now)
        for name, account_id, signature in invitees:
            group.members[account_id] = Member(
                name, account_id, "invited", creator[0], signature, invited_at=now
            )
        self._groups[call_id] = group
        return group

    def _joined_count(self, account_id: int) -> int:
        """Live group calls ``account_id`` is joined to."""
        return sum(
            1
            for group in self._groups.values()
            if (member := group.members.get(account_id)) is not None and member.state == "joined"
        )

    def invite(self, call_id: str, by: int, invitee: tuple[str, int, bytes], now: float) -> Group:
        """A joined member invites one more person (or again one who left or declined).

        Raises:
            GroupRefused: 403 the inviter is not joined, 409 the invitee is invited or
                joined already, 400 the call is full.
        """
        group, inviter = self.member_of(call_id, by)
        if inviter.state != "joined":
            raise GroupRefused(403, "only a joined member may invite")
        name, account_id, signature = invitee
        current = group.members.get(account_id)
        if current is not None and current.state in ("invited", "joined"):
            raise GroupRefused(409, f"{name} is already {current.state}")
        if current is None and len(group.members) >= MAX_GROUP_MEMBERS:
            raise GroupRefused(400, f"a group call has at most {MAX_GROUP_MEMBERS} people")
        group.members[account_id] = Member(
            name, account_id, "invited", inviter.name, signature, invited_at=now
        )
        group.version += 1
        return group

    def ring_out(self, before: float) -> list[tuple[Group, list[Member]]]:
        """Invitations made before ``before`` and not answered become ``no_answer``.

        Returns each call that changed with the members who rang out (one version
        step per call).
        """
        changed = []
        for group in list(self._groups.values()):
            lapsed = [
                m
                for m in group.members.values()
                if m.state == "invited" and m.invited_at is not None and m.invited_at < before
            ]
            for member in lapsed:
                member.state = "no_answer"
            if lapsed:
                group.version += 1
                changed.append((group, lapsed))
        return changed

    def accept(self, call_id: str, account_id: int, now: float) -> tuple[Group, Member]:
        """An invitee joins (or a member seen gone comes back).

        Raises:
            GroupRefused: 403 not invited, 409 joined already or the call is full of ids.
        """
        group, member = self.member_of(call_id, account_id)
        if member.state == "joined":
            raise GroupRefused(409, "already joined")
        if member.state not in ("invited", "gone"):
            raise GroupRefused(403, f"not invited (you {member.state}); ask a member to invite you")
        self._join(group, member, now)
        return group, member

    def decline(self, call_id: str, account_id: int, busy: bool) -> Group:
        """An invitee says no, or is busy.

        Raises:
            GroupRefused: 409 not (or no longer) invited.
        """
        group, member = self.member_of(call_id, account_id)
        if member.state != "invited":
            raise GroupRefused(409, f"cannot decline: you are {member.state}")
        member.state = "busy" if busy else "declined"
        group.version += 1
        return group

    def leave(self, call_id: str, account_id: int, now: float, *, gone: bool = False) -> Group:
        """A joined member leaves (``gone``: the forwarder heard nothing from it).

        Ends the call when nobody is joined any more.

        Raises:
            GroupRefused: 409 not joined.
        """
        group, member = self.member_of(call_id, account_id)
        if member.state != "joined":
            raise GroupRefused(409, f"cannot leave: you are {member.state}")
        member.state = "gone" if gone else "left"
        member.left = now
        if member.token is not None:
            self._by_token.pop(member.token, None)
            member.token = None
        group.version += 1
        if not group.joined():
            self._end(group, now)
        return group

    def check_message(self, call_id: str, sender: int, recipient: str) -> Member:
        """The recipient of a member's message, if both are joined.

        Raises:
            GroupRefused: 403 the sender is not joined, 404 no such joined recipient.
        """
        group, member = self.member_of(call_id, sender)
        if member.state != "joined":
            raise GroupRefused(403, "only a joined member may send to the group")
        for other in group.joined():
            if other.name == recipient and other is not member:
                return other
        raise GroupRefused(404, f"{recipient} is not joined to this call")

    # ------------------------------------------------------------ internals

    def _join(self, group: Group, member: Member, now: float) -> None:
        if group.next_sender_id > MAX_SENDER_ID:
            raise GroupRefused(409, "this call has used all its sender ids")
        member.state = "joined"
        member.sender_id = group.next_sender_id
        group.next_sender_id += 1
        member.joined = now
        member.left = None
        member.token = self._token_source(TOKEN_LENGTH)
        self._by_token[member.token] = (group.call_id, member.account_id)
        group.version += 1

    def _end(self, group: Group, now: float) -> None:
        group.ended = now
        for member in group.members.values():
            if member.token is not None:
                self._by_token.pop(member.token, None)
                member.token = None
        del self._groups[group.call_id]
