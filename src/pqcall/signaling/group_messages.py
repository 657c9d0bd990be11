"""Group calls: the bodies of ``/group/*`` and the ``group.*`` push events.

A group call (docs/protocol.md, "Group calls: signaling and forwarding") has a
creator and up to :data:`MAX_GROUP_MEMBERS` members. The server keeps who is
invited, joined, declined, busy, left or gone, and pushes the whole roster
(:class:`GroupView`) to every invited or joined member at each change
(``group.roster``; the first one an invitee sees is ``group.invite``). It also
carries opaque messages from one joined member to another (``group.message``):
the pairwise handshakes and the sealed sender keys. It never sees a media key.

An invitation carries the inviter's signature over the call id, the invitee's
name and the invitee's identity fingerprint (:func:`invitation_data`): a member
the server adds on its own has none that verifies, and every phone says so.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pqcall.signaling import usernames
from pqcall.signaling.messages import (
    MAX_SIGNATURE_BYTES,
    Base64Url,
    CallId,
    Message,
    RelayGrant,
    Signature,
    Timestamp,
    Username,
)

EVENT_GROUP_INVITE = "group.invite"
EVENT_GROUP_ROSTER = "group.roster"
EVENT_GROUP_MESSAGE = "group.message"
EVENT_GROUP_ENDED = "group.ended"
GROUP_EVENTS = frozenset(
    {EVENT_GROUP_INVITE, EVENT_GROUP_ROSTER, EVENT_GROUP_MESSAGE, EVENT_GROUP_ENDED}
)

MAX_GROUP_MEMBERS = 20  # everyone ever invited to one call, the creator included
MAX_GROUP_MESSAGE_BYTES = 16 * 1024  # a handshake offer is 6,683 bytes
MAX_GROUP_BATCH_MESSAGES = 64  # messages in one POST /group/messages
MAX_GROUP_BATCH_BYTES = 40 * 1024  # their bodies together: base64 stays under the 64 KiB cap
INVITATION_CONTEXT = b"pqcall group invite"

MemberState = Literal["invited", "joined", "declined", "busy", "no_answer", "left", "gone"]
LIVE_STATES: frozenset[str] = frozenset({"invited", "joined"})


def invitation_data(call_id: str, invitee: str, fingerprint: bytes) -> bytes:
    """What an inviter signs (context :data:`INVITATION_CONTEXT`) to invite ``invitee``."""
    name = invitee.encode()
    return bytes.fromhex(call_id) + len(name).to_bytes(1, "big") + name + fingerprint


class Invitation(Message):
    """One invitee, with the inviter's signature over :func:`invitation_data`."""

    name: Username
    signature: Signature


class GroupMember(Message):
    """One person in a group call's roster."""

    name: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    state: MemberState
    sender_id: int | None = Field(ge=1, le=255, description="SFrame sender id while joined")
    invited_by: str | None = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    invitation: Signature | None = None
    joined: Timestamp | None = None
    left: Timestamp | None = None


class GroupView(Message):
    """A group call's roster; ``version`` grows with every change."""

    call_id: CallId
    creator: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    version: int = Field(ge=0)
    created: Timestamp
    ended: Timestamp | None = None
    members: list[GroupMember] = Field(max_length=MAX_GROUP_MEMBERS)


class GroupDetail(GroupView):
    """The roster with the asking member's own forwarding grant (while it is joined)."""

    relay: RelayGrant | None = None


class CreateGroup(Message):
    """``POST /group/create``: a new group call, the creator joined, the others invited."""

    call_id: CallId
    invitees: list[Invitation] = Field(min_length=1, max_length=MAX_GROUP_MEMBERS - 1)


class InviteToGroup(Message):
    """``POST /group/invite``: a joined member invites one more person."""

    call_id: CallId
    invitee: Invitation


class GroupAction(Message):
    """``POST /group/accept`` and ``/group/leave``."""

    call_id: CallId


class DeclineGroup(Message):
    """``POST /group/decline``: an invitee says no (or is busy)."""

    call_id: CallId
    reason: Literal["declined", "busy"] = "declined"


class SendGroupMessage(Message):
    """``POST /group/message``: an opaque message for one other joined member."""

    call_id: CallId
    to: Username
    body: Annotated[bytes, Base64Url(MAX_GROUP_MESSAGE_BYTES, 1)]


class GroupMessageItem(Message):
    """One message of a ``POST /group/messages`` batch."""

    to: Username
    body: Annotated[bytes, Base64Url(MAX_GROUP_MESSAGE_BYTES, 1)]


class SendGroupMessages(Message):
    """``POST /group/messages``: opaque messages for several other joined members at once.

    At most :data:`MAX_GROUP_BATCH_MESSAGES`, bodies together at most
    :data:`MAX_GROUP_BATCH_BYTES`; delivered in order.
    """

    call_id: CallId
    messages: list[GroupMessageItem] = Field(min_length=1, max_length=MAX_GROUP_BATCH_MESSAGES)


class RefusedMessage(Message):
    """A message of a batch not delivered: its index and why (the recipient is not joined)."""

    index: int
    to: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    reason: str = Field(max_length=200)


class GroupMessagesSent(Message):
    """The answer to ``POST /group/messages``."""

    delivered: int
    refused: list[RefusedMessage] = Field(default_factory=list)


class GroupMessageEvent(Message):
    """The payload of ``group.message``: who sent it (as the server authenticated them)."""

    call_id: CallId
    sender: str = Field(max_length=usernames.MAX_USERNAME_LENGTH)
    body: Annotated[bytes, Base64Url(MAX_GROUP_MESSAGE_BYTES, 1)]


__all__ = [
    "EVENT_GROUP_ENDED",
    "EVENT_GROUP_INVITE",
    "EVENT_GROUP_MESSAGE",
    "EVENT_GROUP_ROSTER",
    "GROUP_EVENTS",
    "INVITATION_CONTEXT",
    "MAX_GROUP_BATCH_BYTES",
    "MAX_GROUP_BATCH_MESSAGES",
    "MAX_GROUP_MEMBERS",
    "MAX_SIGNATURE_BYTES",
    "CreateGroup",
    "DeclineGroup",
    "GroupAction",
    "GroupDetail",
    "GroupMember",
    "GroupMessageEvent",
    "GroupMessageItem",
    "GroupMessagesSent",
    "GroupView",
    "Invitation",
    "InviteToGroup",
    "RefusedMessage",
    "SendGroupMessage",
    "SendGroupMessages",
    "invitation_data",
]
