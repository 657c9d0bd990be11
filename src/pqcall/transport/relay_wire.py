"""The media relay's bind, challenge, answer and ack datagrams, on the wire; spoken by both sides.

Scope: the format, MACs and the phone's resend timing of the messages a phone and the
server's relay exchange (``docs/protocol.md``, "Media relay bind"). The relay's rules live in
:mod:`pqcall.server.relay_table`; the phone's use of them in
:mod:`pqcall.transport.pathcheck`. It sits in transport, the lowest layer that
speaks it, so neither side imports the other. No I/O, clock or randomness: the
only state is the phone's bind counter (:class:`BindSequence`).

The grant. The signaling server hands each party of a relayed call its own 16-byte
*grant secret* (``RelayGrant.token``) over the authenticated signaling channel. The
secret itself never travels on the media path; both sides derive from it::

    grant id  = HKDF-SHA256(secret, salt="", info="pqcall relay v2 grant id", 16)
    bind key  = HKDF-SHA256(secret, salt="", info="pqcall relay v2 bind key", 32)

The grant id names the party's grant in clear; the bind key authenticates.

Wire format, version 2 (UDP, to and from the relay's port; integers big-endian)::

    bind      phone → relay  "PQRB" | 02 | grant id (16) | counter u64 | MAC (16)   45 bytes
    challenge relay → phone  "PQRC" | 02 | nonce (16) | MAC (16)                     37 bytes
    answer    phone → relay  "PQRR" | 02 | grant id (16) | nonce (16) | MAC (16)    53 bytes
    ack       relay → phone  "PQRA" | state                                          5 bytes
              state 00: bound, the other party is not bound yet
                    01: bound, both parties bound (forwarding)
                    02: refused: the bind's version is not 2 (a version-1 bind,
                        "PQRB" | token, 20 bytes, gets this answer)
    media     phone → relay  any other datagram from a bound address, forwarded
                             unchanged to the other party's bound address

    MAC = HMAC-SHA256(bind key, M)[:16]; for bind and answer M is every byte before the
    MAC, for a challenge M = "PQRC" | 02 | grant id | nonce (the grant id is not sent).

Why: a version-1 bind was its token in clear, so one observed bind let anyone move a
party's leg to themselves. Now a bind proves the key and carries a counter the relay
must see grow (a replay is refused), and a bind from an address the party is not bound
at only starts a *return-routability check*: the relay sends a challenge with a fresh
nonce to that address and moves the party there only when an answer with a MAC over
the nonce comes back from it (only the key's holder can make one, and only a receiver
at that address sees the nonce). A challenge is smaller than the bind that caused it,
an ack smaller than the answer: the relay amplifies nothing.

Phones tell the relay's messages from forwarded media by source, length and magic
(:func:`is_relay_ack`, :meth:`RelayTarget.answer`): forwarded media is an SFrame
packet from the peer; a control message is answered only when its MAC verifies.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass, field
from typing import Final, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.path_messages import Address

__all__ = [
    "ACK_LENGTH",
    "ACK_MAGIC",
    "ACK_PEER_BOUND",
    "ACK_PEER_WAITING",
    "ACK_REFUSED_VERSION",
    "ANSWER_LENGTH",
    "ANSWER_MAGIC",
    "BIND_LENGTH",
    "BIND_MAGIC",
    "BIND_RETRY_S",
    "CHALLENGE_LENGTH",
    "CHALLENGE_MAGIC",
    "GRANT_ID_LENGTH",
    "KEEPALIVE_S",
    "MAGIC_LENGTH",
    "NONCE_LENGTH",
    "TOKEN_LENGTH",
    "V1_BIND_LENGTH",
    "VERSION",
    "BindSequence",
    "GrantKeys",
    "RelayAck",
    "RelayAnswer",
    "RelayBind",
    "RelayChallenge",
    "RelayTarget",
    "bind_version",
    "grant_keys",
    "is_relay_ack",
    "is_relay_challenge",
]

# specification constants
VERSION: Final = 2
"""The bind format this module speaks (version 1 was ``"PQRB" | token``)."""
BIND_MAGIC: Final = b"PQRB"
"""First bytes of a bind (of every version)."""
CHALLENGE_MAGIC: Final = b"PQRC"
"""First bytes of a challenge."""
ANSWER_MAGIC: Final = b"PQRR"
"""First bytes of an answer to a challenge."""
ACK_MAGIC: Final = b"PQRA"
"""First bytes of an ack."""
MAGIC_LENGTH: Final = 4
TOKEN_LENGTH: Final = 16
"""A party's grant secret (``RelayGrant.token``): its whole authorization for one call."""
GRANT_ID_LENGTH: Final = 16
COUNTER_LENGTH: Final = 8
NONCE_LENGTH: Final = 16
MAC_LENGTH: Final = 16
KEY_LENGTH: Final = 32
_HEAD: Final = MAGIC_LENGTH + 1  # magic and version
BIND_LENGTH: Final = _HEAD + GRANT_ID_LENGTH + COUNTER_LENGTH + MAC_LENGTH
CHALLENGE_LENGTH: Final = _HEAD + NONCE_LENGTH + MAC_LENGTH
ANSWER_LENGTH: Final = _HEAD + GRANT_ID_LENGTH + NONCE_LENGTH + MAC_LENGTH
V1_BIND_LENGTH: Final = MAGIC_LENGTH + 16
"""A version-1 bind (``"PQRB" | token``), refused with :data:`ACK_REFUSED_VERSION`."""
ACK_LENGTH: Final = MAGIC_LENGTH + 1
ACK_PEER_WAITING: Final = 0x00
"""Ack state: this party is bound, the other one not yet."""
ACK_PEER_BOUND: Final = 0x01
"""Ack state: both parties are bound; the relay forwards."""
ACK_REFUSED_VERSION: Final = 0x02
"""Ack state: the relay refused a bind of another version than :data:`VERSION`."""
MAX_COUNTER: Final = 2**64 - 1
GRANT_ID_LABEL: Final = b"pqcall relay v2 grant id"
BIND_KEY_LABEL: Final = b"pqcall relay v2 bind key"

# phone behaviour
BIND_RETRY_S: Final = 0.5
"""Resend a bind this often until the ack says both parties are bound."""
KEEPALIVE_S: Final = 15.0
"""Then resend it this often, well inside NAT and relay idle timeouts."""

_COUNTER = struct.Struct(">Q")


def _derive(secret: bytes, label: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt=None, info=label).derive(secret)


def _mac(key: bytes, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()[:MAC_LENGTH]


def _check_mac(key: bytes, data: bytes, mac: bytes) -> bool:
    return hmac.compare_digest(mac, _mac(key, data))


@dataclass(frozen=True, slots=True)
class GrantKeys:
    """What both sides derive from a party's grant secret."""

    grant_id: bytes
    """Names the grant in clear (16 bytes)."""
    key: bytes = field(repr=False)
    """The bind key: MACs of binds, challenges and answers (32 bytes; never logged)."""


def grant_keys(secret: bytes) -> GrantKeys:
    """The grant id and bind key of a 16-byte grant secret.

    Raises:
        LocalProtocolError: the secret is not 16 bytes.
    """
    if len(secret) != TOKEN_LENGTH:
        raise LocalProtocolError(f"relay token must be {TOKEN_LENGTH} bytes, got {len(secret)}")
    return GrantKeys(
        _derive(secret, GRANT_ID_LABEL, GRANT_ID_LENGTH),
        _derive(secret, BIND_KEY_LABEL, KEY_LENGTH),
    )


def bind_version(data: bytes) -> int | None:
    """The version of a datagram that starts like a bind (None: it does not)."""
    if data[:MAGIC_LENGTH] != BIND_MAGIC:
        return None
    if len(data) == V1_BIND_LENGTH:
        return 1
    return data[MAGIC_LENGTH] if len(data) > MAGIC_LENGTH else None


def _head(magic: bytes) -> bytes:
    return magic + bytes([VERSION])


def _check_shape(data: bytes, magic: bytes, length: int, what: str) -> None:
    if data[:MAGIC_LENGTH] != magic:
        raise DecodeError(f"not a relay {what}")
    if len(data) != length:
        raise DecodeError(f"relay {what} must be {length} bytes, got {len(data)}")
    if data[MAGIC_LENGTH] != VERSION:
        raise DecodeError(f"relay {what} has version {data[MAGIC_LENGTH]}, not {VERSION}")


@dataclass(frozen=True, slots=True)
class RelayBind:
    """A bind: "send what the other party of my call sends to the address this came from"."""

    grant_id: bytes
    """The sender's grant id."""
    counter: int
    """Grows with every bind of the grant; the relay refuses one not above the last."""
    mac: bytes = field(default=b"", repr=False)
    """Set by :meth:`parse`; check it with :meth:`is_authentic`."""

    def serialize(self, key: bytes) -> bytes:
        """The bind datagram, MAC'd with ``key``."""
        if not 0 <= self.counter <= MAX_COUNTER:
            raise LocalProtocolError("relay bind counter out of range")
        body = _head(BIND_MAGIC) + self.grant_id + _COUNTER.pack(self.counter)
        return body + _mac(key, body)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a bind's fields (not its MAC).

        Raises:
            DecodeError: not a version-2 bind of the right length.
        """
        _check_shape(data, BIND_MAGIC, BIND_LENGTH, "bind")
        grant_id = data[_HEAD : _HEAD + GRANT_ID_LENGTH]
        (counter,) = _COUNTER.unpack_from(data, _HEAD + GRANT_ID_LENGTH)
        return cls(grant_id, counter, data[-MAC_LENGTH:])

    def is_authentic(self, key: bytes) -> bool:
        """Whether the parsed MAC verifies under ``key`` (constant time)."""
        body = _head(BIND_MAGIC) + self.grant_id + _COUNTER.pack(self.counter)
        return _check_mac(key, body, self.mac)


@dataclass(frozen=True, slots=True)
class RelayChallenge:
    """The relay's return-routability check of a new address: prove you receive here."""

    nonce: bytes
    """16 fresh random bytes from the relay."""

    def serialize(self, keys: GrantKeys) -> bytes:
        """The challenge datagram, MAC'd with the grant's key."""
        return _head(CHALLENGE_MAGIC) + self.nonce + _mac(keys.key, self._signed(keys))

    def _signed(self, keys: GrantKeys) -> bytes:
        return _head(CHALLENGE_MAGIC) + keys.grant_id + self.nonce

    @classmethod
    def parse(cls, data: bytes, keys: GrantKeys) -> Self:
        """Parse and authenticate a challenge for ``keys``' grant.

        Raises:
            DecodeError: not a version-2 challenge, or its MAC does not verify.
        """
        _check_shape(data, CHALLENGE_MAGIC, CHALLENGE_LENGTH, "challenge")
        challenge = cls(data[_HEAD : _HEAD + NONCE_LENGTH])
        if not _check_mac(keys.key, challenge._signed(keys), data[-MAC_LENGTH:]):
            raise DecodeError("relay challenge does not authenticate")
        return challenge


@dataclass(frozen=True, slots=True)
class RelayAnswer:
    """A phone's answer to a challenge: the nonce, MAC'd with its grant's key."""

    grant_id: bytes
    """The sender's grant id."""
    nonce: bytes
    """The challenge's nonce."""
    mac: bytes = field(default=b"", repr=False)
    """Set by :meth:`parse`; check it with :meth:`is_authentic`."""

    def serialize(self, key: bytes) -> bytes:
        """The answer datagram."""
        body = _head(ANSWER_MAGIC) + self.grant_id + self.nonce
        return body + _mac(key, body)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse an answer's fields (not its MAC).

        Raises:
            DecodeError: not a version-2 answer of the right length.
        """
        _check_shape(data, ANSWER_MAGIC, ANSWER_LENGTH, "answer")
        end = _HEAD + GRANT_ID_LENGTH
        return cls(data[_HEAD:end], data[end : end + NONCE_LENGTH], data[-MAC_LENGTH:])

    def is_authentic(self, key: bytes) -> bool:
        """Whether the parsed MAC verifies under ``key`` (constant time)."""
        return _check_mac(key, _head(ANSWER_MAGIC) + self.grant_id + self.nonce, self.mac)


@dataclass(frozen=True, slots=True)
class RelayAck:
    """The relay's answer to a bind or an answer (the refusal is :data:`ACK_REFUSED_VERSION`)."""

    is_peer_bound: bool
    """Both parties are bound (state 0x01), not only the sender of the bind (0x00)."""

    def serialize(self) -> bytes:
        """The ack datagram."""
        return ACK_MAGIC + bytes([ACK_PEER_BOUND if self.is_peer_bound else ACK_PEER_WAITING])

    @staticmethod
    def refusal() -> bytes:
        """The ack that refuses a bind of another version."""
        return ACK_MAGIC + bytes([ACK_REFUSED_VERSION])

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse an ack datagram.

        Raises:
            DecodeError: not an ack, not 5 bytes long, a refusal, or an unknown state.
        """
        if data[:MAGIC_LENGTH] != ACK_MAGIC:
            raise DecodeError("not a relay ack")
        if len(data) != ACK_LENGTH:
            raise DecodeError(f"relay ack must be {ACK_LENGTH} bytes, got {len(data)}")
        state = data[MAGIC_LENGTH]
        if state == ACK_REFUSED_VERSION:
            raise DecodeError(f"the relay refused our bind: it speaks bind version {VERSION}")
        if state not in (ACK_PEER_WAITING, ACK_PEER_BOUND):
            raise DecodeError(f"relay ack has an unknown state 0x{state:02x}")
        return cls(is_peer_bound=state == ACK_PEER_BOUND)


@dataclass(slots=True)
class BindSequence:
    """A phone's bind counter for one grant: share it between copies of a target."""

    last: int = 0
    """The counter of the last bind made (0: none yet)."""

    def next(self) -> int:
        """The next counter."""
        self.last += 1
        return self.last


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """The relay one party may use for a call: its address and this party's grant secret."""

    address: Address
    """Where to send binds and relayed media (numeric for path selection)."""
    token: bytes = field(repr=False)
    """This party's 16-byte grant secret, from the signaling server (never sent)."""
    sequence: BindSequence = field(default_factory=BindSequence, compare=False, repr=False)
    """The bind counter; pass it on to a copy (another address form) of this target."""
    turn: object | None = field(default=None, compare=False, repr=False)
    """The grant's TURN credentials (``RelayGrant.turn``), if any: see
    :mod:`pqcall.transport.turn_path`."""
    keys: GrantKeys = field(init=False, compare=False, repr=False)
    """Derived from :attr:`token`."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", grant_keys(self.token))

    @property
    def bind(self) -> bytes:
        """A fresh bind datagram (each call uses the next counter)."""
        return RelayBind(self.keys.grant_id, self.sequence.next()).serialize(self.keys.key)

    def answer(self, data: bytes, addr: Address) -> bytes | None:
        """The answer to send back if ``data`` from ``addr`` is an authentic challenge of
        this relay for this grant; None for anything else (media, a forged challenge)."""
        if (
            addr != self.address
            or len(data) != CHALLENGE_LENGTH
            or data[:MAGIC_LENGTH] != CHALLENGE_MAGIC
        ):
            return None
        try:
            challenge = RelayChallenge.parse(data, self.keys)
        except DecodeError:
            return None
        return RelayAnswer(self.keys.grant_id, challenge.nonce).serialize(self.keys.key)


def is_relay_ack(data: bytes, addr: Address, relay: Address | None) -> bool:
    """Whether a phone should read ``data`` from ``addr`` as an ack of ``relay`` (not media)."""
    return (
        relay is not None
        and addr == relay
        and len(data) == ACK_LENGTH
        and data[:MAGIC_LENGTH] == ACK_MAGIC
    )


def is_relay_challenge(data: bytes, addr: Address, relay: Address | None) -> bool:
    """Whether ``data`` from ``addr`` has the shape of a challenge of ``relay`` (not media).

    By source, length and magic only (the MAC is :meth:`RelayTarget.answer`'s to check):
    for a phone that has chosen its path and only needs to tell a late challenge (to a
    bind sent while selecting) from media.
    """
    return (
        relay is not None
        and addr == relay
        and len(data) == CHALLENGE_LENGTH
        and data[:MAGIC_LENGTH] == CHALLENGE_MAGIC
    )
