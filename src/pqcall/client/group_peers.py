"""One other member of a group call, as our phone knows it: the pairwise handshake and channel.

Every pair of joined members runs the 1:1 hybrid handshake
(:mod:`pqcall.crypto.handshake`) through the server's ``/group/message`` route;
the member whose name sorts first is the caller. Its call id is the pair id
(:func:`pair_id`): the group call's id, both names and both sender ids hashed,
so a handshake belongs to one pair in one call at one join, and one of an
earlier join cannot be replayed into a later one. The result is a
:class:`~pqcall.crypto.group_keys.PairwiseChannel` that carries our sender keys
and roster signatures to that member only.

Messages (the ``body`` of ``group.message``)::

    0x01 | pair id (16) | offer        caller -> callee
    0x02 | pair id (16) | answer       callee -> caller
    0x03 | pair id (16) | confirm      caller -> callee
    0x04 | pair id (16) | sealed       either way, PairwiseChannel.seal of:
                                         0x10 | encoded sender key
                                         0x11 | roster version (u32) | roster signature
                                         0x12 | generation (u32): "I hold your key"
                                         0x13 | 0 or 1: "I (un)muted" (group_speaking.py)
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

from pqcall.client.call_context import PeerTrust
from pqcall.crypto.group_keys import PairwiseChannel
from pqcall.crypto.handshake import CalleeHandshake, CallerHandshake, CallKeys
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.exceptions import DecodeError, HandshakeFailed

KIND_OFFER = 0x01
KIND_ANSWER = 0x02
KIND_CONFIRM = 0x03
KIND_SEALED = 0x04
INNER_SENDER_KEY = 0x10
INNER_ROSTER = 0x11
INNER_KEY_ACK = 0x12
PAIR_ID_LENGTH = 16


def pair_id(call_id: str, a: tuple[str, int], b: tuple[str, int]) -> bytes:
    """The handshake call id of two members ``(name, sender id)`` in one group call."""
    first, second = sorted((a, b))
    digest = hashlib.sha256(b"pqcall group pair")
    digest.update(bytes.fromhex(call_id))
    for name, sender_id in (first, second):
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(1, "big") + encoded + sender_id.to_bytes(2, "big"))
    return digest.digest()[:PAIR_ID_LENGTH]


def frame(kind: int, pair: bytes, data: bytes) -> bytes:
    """One pairwise message."""
    return bytes([kind]) + pair + data


def unframe(body: bytes) -> tuple[int, bytes, bytes]:
    """``(kind, pair id, data)`` of a pairwise message.

    Raises:
        DecodeError: too short or an unknown kind.
    """
    if len(body) < 1 + PAIR_ID_LENGTH or body[0] not in (1, 2, 3, 4):
        raise DecodeError("not a group pairwise message")
    return body[0], body[1 : 1 + PAIR_ID_LENGTH], body[1 + PAIR_ID_LENGTH :]


@dataclass(eq=False)
class PeerLink:
    """Our side of the pairwise link with one other joined member (one join of it)."""

    name: str
    sender_id: int
    pair: bytes
    is_caller: bool
    identity: IdentityPublicKey | None = None
    trust: PeerTrust | None = None
    caller: CallerHandshake | None = None
    callee: CalleeHandshake | None = None
    keys: CallKeys | None = None
    channel: PairwiseChannel | None = None
    joined_at: float = field(default_factory=time.time)
    vouched: bool | None = None  # None: not checked yet
    roster_signatures: dict[int, bytes] = field(default_factory=dict)  # version -> signature
    sent_generations: set[int] = field(default_factory=set)
    acked_generations: set[int] = field(default_factory=set)  # of our keys it holds
    error: str | None = None
    muted: bool = False  # it said it muted its microphone
    offered_at: float = float("inf")  # time.monotonic() of our last offer (we call)

    @property
    def established(self) -> bool:
        """Whether the pairwise channel is up."""
        return self.channel is not None

    def start_caller(
        self, our_name: str, our_identity: IdentityPrivateKey, their_identity: IdentityPublicKey
    ) -> bytes:
        """Our offer (we are the caller)."""
        self.identity = their_identity
        self.caller = CallerHandshake(
            call_id=self.pair,
            our_name=our_name,
            our_identity=our_identity,
            their_name=self.name,
            their_identity=their_identity,
        )
        return frame(KIND_OFFER, self.pair, self.caller.offer(now=time.time()))

    def receive_offer(
        self, our_name: str, our_identity: IdentityPrivateKey, data: bytes
    ) -> IdentityPublicKey:
        """Check the caller's offer; returns the identity it proves (check it against the pin).

        Raises:
            HandshakeFailed: a bad offer, or one signed as someone else.
        """
        self.callee = CalleeHandshake(
            call_id=self.pair, our_name=our_name, our_identity=our_identity
        )
        offer = self.callee.receive_offer(data, now=time.time())
        if offer.caller_name != self.name:
            raise HandshakeFailed(f"the offer is signed as {offer.caller_name}, not {self.name}")
        self.identity = offer.caller_identity
        return offer.caller_identity

    def answer(self) -> bytes:
        """Our answer (we are the callee)."""
        assert self.callee is not None
        return frame(KIND_ANSWER, self.pair, self.callee.answer())

    def receive_answer(self, data: bytes, our_name: str) -> bytes:
        """The caller takes the answer; returns the confirm to send. The channel is up."""
        if self.caller is None:
            raise HandshakeFailed("an answer without our offer")
        confirm = self.caller.receive_answer(data)
        self._established(self.caller.keys, our_name)
        return frame(KIND_CONFIRM, self.pair, confirm)

    def receive_confirm(self, data: bytes, our_name: str) -> None:
        """The callee takes the confirm. The channel is up."""
        if self.callee is None:
            raise HandshakeFailed("a confirm without an offer")
        self._established(self.callee.receive_confirm(data), our_name)

    def seal(self, inner: bytes) -> bytes:
        """A sealed message for this peer."""
        assert self.channel is not None
        return frame(KIND_SEALED, self.pair, self.channel.seal(inner))

    def _established(self, keys: CallKeys, our_name: str) -> None:
        self.keys = keys
        self.channel = PairwiseChannel.from_call_keys(keys, our_name=our_name, peer_name=self.name)
