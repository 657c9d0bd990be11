"""The group forwarder's bind and ack datagrams, and the group media frame (both sides).

A joined member of a group call sends its media to the server's group forwarder
(``pqcall.server.group_relay``), which passes each datagram unchanged to every
other bound member of the same call. Before that, and every :data:`KEEPALIVE_S`
after, the member binds its UDP address with the token of its grant::

    bind = b"PQGB" + token (16 bytes)                         20 bytes
    ack  = b"PQGA" + number of other bound members (1 byte)    5 bytes

Anything else from a bound address is media. The media datagram is one SFrame
packet (RFC 9605; the KID names the sender and its key generation, see
``pqcall.crypto.group_keys``) whose plaintext is :func:`encode_frame`: a 16-bit
sequence number, a 32-bit timestamp in samples, then one Opus frame.
"""

from __future__ import annotations

import struct

from pqcall.exceptions import DecodeError

BIND_MAGIC = b"PQGB"
ACK_MAGIC = b"PQGA"
TOKEN_LENGTH = 16
BIND_LENGTH = len(BIND_MAGIC) + TOKEN_LENGTH
ACK_LENGTH = len(ACK_MAGIC) + 1
KEEPALIVE_S = 1.0  # binds while joined: keeps NAT bindings open, tells the server we live
_FRAME_HEADER = struct.Struct("!HI")
FRAME_HEADER_BYTES = _FRAME_HEADER.size  # before the Opus frame, inside the encryption


def encode_bind(token: bytes) -> bytes:
    """A bind datagram for ``token``."""
    if len(token) != TOKEN_LENGTH:
        raise DecodeError("a group forwarding token is 16 bytes")
    return BIND_MAGIC + token


def parse_bind(data: bytes) -> bytes | None:
    """The token of a bind datagram, or None if ``data`` is not one."""
    if len(data) != BIND_LENGTH or not data.startswith(BIND_MAGIC):
        return None
    return data[len(BIND_MAGIC) :]


def encode_ack(others: int) -> bytes:
    """An ack saying how many other members are bound (capped at 255)."""
    return ACK_MAGIC + bytes([min(others, 255)])


def parse_ack(data: bytes) -> int | None:
    """The number of other bound members an ack reports, or None if not an ack."""
    if len(data) != ACK_LENGTH or not data.startswith(ACK_MAGIC):
        return None
    return data[-1]


def encode_frame(seq: int, timestamp: int, opus: bytes) -> bytes:
    """The plaintext of one group media packet."""
    return _FRAME_HEADER.pack(seq & 0xFFFF, timestamp & 0xFFFFFFFF) + opus


def decode_frame(plaintext: bytes) -> tuple[int, int, bytes]:
    """``(seq, timestamp, opus)`` of a decrypted group media packet.

    Raises:
        DecodeError: too short to be one.
    """
    if len(plaintext) < _FRAME_HEADER.size:
        raise DecodeError("group media frame is too short")
    seq, timestamp = _FRAME_HEADER.unpack_from(plaintext)
    return seq, timestamp, plaintext[_FRAME_HEADER.size :]
