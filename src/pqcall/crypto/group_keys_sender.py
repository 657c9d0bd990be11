"""Group-call sender keys: the key itself, its strict encoding, and its SFrame key ids.

Each participant of a group call draws a random 32-byte sender key per key
generation and hands it to every other participant over a pairwise channel
(:mod:`pqcall.crypto.group_keys_channel`). The SFrame base key of a
generation is derived from the secret, bound to the sender id and the full
generation number (docs/protocol.md#group-calls-keys)::

    prk      = LabeledExtract("", "group sender key", secret)
    base_key = LabeledExpand(prk, "group sframe base key", u16 sender_id ‖ u32 generation, 32)

The SFrame KID (RFC 9605 section 5.1) carries the sender id, the low
``GENERATION_BITS`` bits of the generation and the ratchet step::

    KID = (sender_id << GENERATION_BITS | generation mod 2**GENERATION_BITS) << R | step mod 2**R

This is a wrapper around :class:`~pqcall.crypto.sframe_context.SFrameSender`,
not a change to it: the value passed there as its "sender id" is
``sender_id << GENERATION_BITS | generation mod 2**GENERATION_BITS``
(:func:`sframe_sender_id`). A receiver holds at most a few generations per
sender at once, so the low bits name one of them without ambiguity.

Encoding of a sender key (kind 0x40, see :mod:`pqcall.crypto.encoding`)::

    "PQ" | 1 | 0x40 | sender_id (u16) | generation (u32) | secret (32)

Pure: no clock, no I/O; randomness only in :meth:`SenderKey.new`.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from typing import Final

from pqcall.crypto import encoding, keyschedule
from pqcall.crypto.encoding import Kind, Reader
from pqcall.crypto.sframe import CipherSuite, parse_header
from pqcall.crypto.sframe_context import RATCHET_BITS
from pqcall.exceptions import DecodeError, LocalProtocolError

# specification constants
SECRET_LENGTH: Final = 32  # bytes of a sender key's secret
MAX_SENDER_ID: Final = 0xFFFF  # sender ids are u16 on the wire
MAX_GENERATION: Final = 0xFFFF_FFFF  # generations are u32 on the wire
GENERATION_BITS: Final = 8  # low bits of the generation in the KID
GENERATION_MASK: Final = (1 << GENERATION_BITS) - 1
GROUP_CIPHER_SUITE: Final = CipherSuite.AES_256_GCM_SHA512_128  # as 1:1 media
ENCODED_LENGTH: Final = encoding.HEADER_LENGTH + 2 + 4 + SECRET_LENGTH

LABEL_SENDER_KEY: Final = b"group sender key"
LABEL_BASE_KEY: Final = b"group sframe base key"


def _check_ids(sender_id: int, generation: int) -> None:
    if not 0 <= sender_id <= MAX_SENDER_ID:
        raise LocalProtocolError(f"group sender id must be 0 to {MAX_SENDER_ID}")
    if not 0 <= generation <= MAX_GENERATION:
        raise LocalProtocolError(f"sender key generation must be 0 to {MAX_GENERATION}")


@dataclass(frozen=True, slots=True)
class SenderKey:
    """One participant's media key for one generation. The secret stays out of ``repr``."""

    sender_id: int
    """The participant's sender id in this call (0 to 65535)."""
    generation: int
    """Which of the participant's keys this is; each rotation adds one."""
    secret: bytes = field(repr=False)
    """32 random bytes; the SFrame base key is derived from it."""

    def __post_init__(self) -> None:
        _check_ids(self.sender_id, self.generation)
        if not isinstance(self.secret, bytes) or len(self.secret) != SECRET_LENGTH:
            raise LocalProtocolError(f"sender key secret must be {SECRET_LENGTH} bytes")

    @classmethod
    def new(cls, sender_id: int, generation: int) -> SenderKey:
        """A fresh key with a secret from the operating system's CSPRNG."""
        return cls(sender_id, generation, os.urandom(SECRET_LENGTH))

    def base_key(self) -> bytes:
        """The SFrame base key of this sender and generation (bound to both)."""
        prk = keyschedule.labeled_extract(b"", LABEL_SENDER_KEY, self.secret)
        context = encoding.u16(self.sender_id) + encoding.u32(self.generation)
        return keyschedule.labeled_expand(prk, LABEL_BASE_KEY, context, SECRET_LENGTH)

    def same_as(self, other: SenderKey) -> bool:
        """Whether ``other`` is the same key (ids equal, secrets compared in constant time)."""
        return (
            self.sender_id == other.sender_id
            and self.generation == other.generation
            and hmac.compare_digest(self.secret, other.secret)
        )


def encode_sender_key(key: SenderKey) -> bytes:
    """The type-tagged, versioned encoding of ``key`` (42 bytes)."""
    body = encoding.u16(key.sender_id) + encoding.u32(key.generation) + key.secret
    return encoding.encode(Kind.GROUP_SENDER_KEY, body)


def decode_sender_key(data: bytes) -> SenderKey:
    """Parse an encoded sender key, strictly.

    Raises:
        DecodeError: not a sender key, another format version, or a wrong length.
    """
    reader = Reader(encoding.decode(Kind.GROUP_SENDER_KEY, data), "group sender key")
    sender_id = reader.u16("sender id")
    generation = reader.u32("generation")
    secret = reader.fixed(SECRET_LENGTH, "secret")
    reader.end()
    return SenderKey(sender_id, generation, secret)


def sframe_sender_id(sender_id: int, generation: int) -> int:
    """What to pass as an SFrame sender/receiver's ``sender_id`` for this key.

    Raises:
        LocalProtocolError: an id out of range.
    """
    _check_ids(sender_id, generation)
    return sender_id << GENERATION_BITS | generation & GENERATION_MASK


@dataclass(frozen=True, slots=True)
class GroupKid:
    """The parts of a group-call SFrame KID."""

    sender_id: int
    """Who sent the frame."""
    generation_low: int
    """The generation modulo ``2**GENERATION_BITS``."""
    ratchet_step_low: int
    """The SFrame ratchet step modulo ``2**RATCHET_BITS``."""


def parse_kid(kid: int) -> GroupKid:
    """Split a group-call KID into sender id, generation bits and ratchet bits.

    Raises:
        LocalProtocolError: the KID is negative.
        DecodeError: its sender id exceeds 65535 (not a group-call KID).
    """
    if kid < 0:
        raise LocalProtocolError("KID must not be negative")
    step = kid & ((1 << RATCHET_BITS) - 1)
    rest = kid >> RATCHET_BITS
    sender_id = rest >> GENERATION_BITS
    if sender_id > MAX_SENDER_ID:
        raise DecodeError("KID names a group sender id above 65535")
    return GroupKid(sender_id, rest & GENERATION_MASK, step)


def packet_kid(packet: bytes) -> GroupKid:
    """The :class:`GroupKid` in an SFrame packet's header (unauthenticated: a hint only).

    Raises:
        DecodeError: the header is malformed, or the KID is not a group-call KID.
    """
    kid, _ctr, _length = parse_header(packet)
    return parse_kid(kid)
