"""Path messages: the authenticated probes of media path selection, on the wire.

Scope: the format, MAC and parsing of the 40-byte messages that
:mod:`pqcall.transport.pathcheck` sends and answers
(``docs/protocol.md#media-path-selection``). No state, no I/O.

Wire format (UDP, on the media socket; integers big-endian), 40 bytes::

    magic "PQPC" (4) | type u8 | role u8 | transaction id (12) | IPv4 address (4) | port u16
                     | MAC (16)

    type  01 CHECK         02 RESPONSE    03 NOMINATE    04 NOMINATE_ACK
    role  00 controlling (caller)         01 controlled (callee): the sender's role
    address  CHECK, NOMINATE: where the sender sent it (the candidate checked);
             RESPONSE, NOMINATE_ACK: where the request came from, as the responder saw it
    MAC   HMAC-SHA-256(K_path, every byte before it), first 16 bytes;
          K_path = CallKeys.export(b"pqcall path check"), the same on both sides
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from pqcall.crypto.handshake import CallKeys, Role
from pqcall.exceptions import DecodeError, LocalProtocolError

__all__ = [
    "MAGIC_LENGTH",
    "MESSAGE_LENGTH",
    "PATH_CHECK_LABEL",
    "PATH_MAGIC",
    "TRANSACTION_ID_LENGTH",
    "UNAUTHENTICATED_MESSAGE",
    "Address",
    "MessageType",
    "PathMessage",
    "PathRole",
    "numeric_ipv4",
    "path_check_key",
]

Address = tuple[str, int]
"""A numeric IPv4 address and a UDP port."""

# specification constants (docs/protocol.md#media-path-selection)
PATH_MAGIC: Final = b"PQPC"
"""First bytes of every path message (the relay's are b"PQRB" and b"PQRA")."""
MAGIC_LENGTH: Final = 4
TRANSACTION_ID_LENGTH: Final = 12
MAC_LENGTH: Final = 16
MESSAGE_LENGTH: Final = 40
"""Every path message has this length."""
PATH_CHECK_LABEL: Final = b"pqcall path check"
"""Exporter label of the MAC key (:meth:`CallKeys.export`)."""

_HEADER = struct.Struct("!4sBB12s4sH")
UNAUTHENTICATED_MESSAGE: Final = "path message does not authenticate"
_MAC_OFFSET: Final = _HEADER.size  # 24


class PathRole(enum.IntEnum):
    """Who decides the path (RFC 8445's roles); the wire value of the role byte."""

    CONTROLLING = 0
    """The caller: nominates the path."""
    CONTROLLED = 1
    """The callee: follows the caller's nomination."""

    @classmethod
    def of(cls, role: Role) -> PathRole:
        """The path role of a call role: the caller controls."""
        return cls.CONTROLLING if role is Role.CALLER else cls.CONTROLLED

    @property
    def other(self) -> PathRole:
        """The peer's role."""
        return PathRole(1 - self)


class MessageType(enum.IntEnum):
    """The type byte of a path message."""

    CHECK = 0x01
    RESPONSE = 0x02
    NOMINATE = 0x03
    NOMINATE_ACK = 0x04


def path_check_key(keys: CallKeys) -> bytes:
    """The MAC key of path messages: the same for both parties of a call."""
    return keys.export(PATH_CHECK_LABEL)


def _mac(key: bytes, data: bytes) -> bytes:
    h = crypto_hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()[:MAC_LENGTH]


def numeric_ipv4(address: Address, what: str) -> Address:
    """``address`` with its host normalized; raises LocalProtocolError unless IPv4 and a port."""
    try:
        host = ipaddress.IPv4Address(address[0])
        port = int(address[1])
    except (ValueError, TypeError, IndexError):
        raise LocalProtocolError(
            f"{what} must be a numeric IPv4 address, got {address!r}"
        ) from None
    if not 0 < port < 1 << 16:
        raise LocalProtocolError(f"{what} has an invalid port: {port}")
    return (str(host), port)


@dataclass(frozen=True, slots=True)
class PathMessage:
    """One path message (``docs/protocol.md#media-path-selection``)."""

    kind: MessageType
    """CHECK, RESPONSE, NOMINATE or NOMINATE_ACK."""
    role: PathRole
    """The sender's role."""
    transaction_id: bytes
    """12 random bytes of a request; an answer repeats its request's."""
    address: Address
    """Requests: where they were sent; answers: where the request came from."""

    def serialize(self, key: bytes) -> bytes:
        """The message with its MAC under ``key``.

        Raises:
            LocalProtocolError: a transaction id of the wrong length, or an address that
                is not numeric IPv4.
        """
        if len(self.transaction_id) != TRANSACTION_ID_LENGTH:
            raise LocalProtocolError(
                f"transaction id must be {TRANSACTION_ID_LENGTH} bytes, "
                f"got {len(self.transaction_id)}"
            )
        host, port = numeric_ipv4(self.address, "path message address")
        body = _HEADER.pack(
            PATH_MAGIC,
            self.kind,
            self.role,
            self.transaction_id,
            ipaddress.IPv4Address(host).packed,
            port,
        )
        return body + _mac(key, body)

    @classmethod
    def parse(cls, data: bytes, key: bytes) -> Self:
        """Check the MAC under ``key``, then parse.

        Raises:
            DecodeError: not a path message, the wrong length, a MAC that does not
                verify, or an unknown type or role.
        """
        if data[:MAGIC_LENGTH] != PATH_MAGIC:
            raise DecodeError("not a path message")
        if len(data) < MESSAGE_LENGTH:
            raise DecodeError("path message is truncated")
        if len(data) > MESSAGE_LENGTH:
            raise DecodeError("path message has trailing data")
        # authenticate first, then read the fields
        if not hmac.compare_digest(data[_MAC_OFFSET:], _mac(key, data[:_MAC_OFFSET])):
            raise DecodeError(UNAUTHENTICATED_MESSAGE)
        _, kind, role, transaction_id, host, port = _HEADER.unpack(data[:_MAC_OFFSET])
        try:
            message_type = MessageType(kind)
        except ValueError:
            raise DecodeError(f"path message has an unknown type 0x{kind:02x}") from None
        try:
            path_role = PathRole(role)
        except ValueError:
            raise DecodeError(f"path message has an unknown role 0x{role:02x}") from None
        address = (str(ipaddress.IPv4Address(host)), port)
        return cls(message_type, path_role, transaction_id, address)
