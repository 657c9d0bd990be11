"""The answers to the peer's late path messages once media runs, sans-I/O.

Scope: after :mod:`pqcall.transport.pathcheck` has chosen, the peer may still be
checking or nominating (our answer was lost). :class:`PathResponder` is the media
session's side channel: it takes the path messages and the relay's late acks and
challenges among the datagrams on the media socket, answers what needs an answer, and
leaves the rest to the session.
Nothing raises out of it for any datagram.
"""

from __future__ import annotations

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.path_choice import (
    DropReason,
    PathCheckStats,
    PathChoice,
    PathCounters,
    PathKind,
)
from pqcall.transport.path_messages import (
    MAGIC_LENGTH,
    MESSAGE_LENGTH,
    PATH_MAGIC,
    Address,
    MessageType,
    PathMessage,
    PathRole,
    path_check_key,
)
from pqcall.transport.relay_wire import is_relay_ack, is_relay_challenge

__all__ = ["PathResponder"]


class PathResponder:
    """Answers the peer's late path messages once media runs on the socket.

    The peer may still be checking or nominating when we have chosen (our answer was
    lost); give this to :class:`~pqcall.transport.session.MediaSession` as its
    ``side_channel``. It takes the path messages that authenticate and the relay's acks
    and challenges, answers checks (and, for the callee, repeated nominations of the
    chosen path), and leaves every other datagram (None) to the media session.

    Args:
        keys: the call's keys.
        choice: the path chosen.
    """

    def __init__(self, keys: CallKeys, choice: PathChoice) -> None:
        self._key = path_check_key(keys)  # MAC key of every message
        self._role = PathRole.of(keys.role)  # ours
        self._choice = choice  # what was chosen
        self._counters = PathCounters()  # what came late

    @property
    def stats(self) -> PathCheckStats:
        """Counters of the late datagrams taken."""
        return self._counters.snapshot()

    def __call__(
        self, data: bytes, addr: Address, now: float
    ) -> list[tuple[bytes, Address]] | None:
        """Take ``data`` from ``addr`` if it belongs to path selection.

        Returns:
            None when it is not a path message or relay ack (media, or garbage for the
            media session to count); else the answers to send (maybe none).
        """
        if is_relay_ack(data, addr, self._choice.relay):
            self._counters.relay_acks_received += 1
            return []
        if is_relay_challenge(data, addr, self._choice.relay):
            # to a bind sent while selecting, arriving after the choice (a loaded relay):
            # left unanswered, since nothing is to be bound now
            self._counters.relay_challenges_late += 1
            return []
        if data[:MAGIC_LENGTH] != PATH_MAGIC or len(data) != MESSAGE_LENGTH:
            return None
        try:
            message = PathMessage.parse(data, self._key)
        except DecodeError:
            return None  # not from the peer: the media session counts it
        if message.role is self._role:
            self._counters.dropped[DropReason.REFLECTED] += 1
            return []
        if message.kind is MessageType.CHECK:
            self._counters.checks_received += 1
            answer = MessageType.RESPONSE
        elif (
            message.kind is MessageType.NOMINATE
            and self._role is PathRole.CONTROLLED
            and self._choice.kind is PathKind.DIRECT
            and addr == self._choice.peer
        ):
            self._counters.nominations_received += 1
            answer = MessageType.NOMINATE_ACK
        else:
            self._counters.dropped[DropReason.UNEXPECTED] += 1
            return []
        try:
            reply = PathMessage(answer, self._role, message.transaction_id, addr)
            return [(reply.serialize(self._key), addr)]
        except LocalProtocolError:  # a source address that is not IPv4
            self._counters.dropped[DropReason.UNEXPECTED] += 1
            return []
