"""Media packet basics: the type byte, the wire's constants and serial number arithmetic.

Scope: what both :mod:`pqcall.transport.media_packets` (audio) and
:mod:`pqcall.transport.control_packets` (ping, pong, report, mute, hang-up,
bursts, flags) need: :class:`PacketType`, the specification constants of
``docs/protocol.md#media-packets`` and :func:`check_length`. Both modules
re-export what their callers used from here. Pure: no state, no I/O.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from pqcall.exceptions import DecodeError

__all__ = [
    "AUDIO_HEADER_LENGTH",
    "BACKUP_HEADER_LENGTH",
    "FRACTION_LOST_SCALE",
    "MAX_BACKUP_COPIES",
    "REDUNDANCY_HEADER_LENGTH",
    "SAMPLE_RATE_HZ",
    "SEQUENCE_MODULUS",
    "TIMESTAMP_MODULUS",
    "TYPE_LENGTH",
    "U16_MAX",
    "U32_MAX",
    "U64_MODULUS",
    "PacketType",
    "check_length",
    "serial_delta",
]

# specification constants (docs/protocol.md#media-packets)
SAMPLE_RATE_HZ: Final = 48_000
SEQUENCE_MODULUS: Final = 1 << 16
TIMESTAMP_MODULUS: Final = 1 << 32
U16_MAX: Final = 0xFFFF
U32_MAX: Final = 0xFFFF_FFFF
U64_MODULUS: Final = 1 << 64
TYPE_LENGTH: Final = 1
AUDIO_HEADER_LENGTH: Final = 7
"""Type, sequence number and timestamp in front of every audio payload."""
REDUNDANCY_HEADER_LENGTH: Final = 4
"""Timestamp offset and length of a redundant copy."""
BACKUP_HEADER_LENGTH: Final = 5
"""Frame size, copy count and payload length after an AUDIO_BACKUP's audio header."""
MAX_BACKUP_COPIES: Final = 3
"""The most earlier frames an AUDIO_BACKUP packet carries copies of."""
FRACTION_LOST_SCALE: Final = 256
"""A report's fraction lost is in 1/256 (RFC 3550 section 6.4.1)."""


def serial_delta(delta: int, modulus: int) -> int:
    """``delta`` reduced to [-modulus/2, modulus/2): serial number arithmetic."""
    return (delta + modulus // 2) % modulus - modulus // 2


def check_length(data: bytes, layout: struct.Struct, name: str) -> None:
    """Raise :class:`DecodeError` unless ``data`` is exactly ``layout``'s size."""
    if len(data) < layout.size:
        raise DecodeError(f"{name} packet is truncated")
    if len(data) > layout.size:
        raise DecodeError(f"{name} packet has trailing data")


class PacketType(enum.IntEnum):
    """The first byte of every media packet."""

    AUDIO = 0x01
    AUDIO_REDUNDANT = 0x02
    AUDIO_BACKUP = 0x03
    AUDIO_PAIR = 0x04
    PING = 0x10
    PONG = 0x11
    REPORT = 0x12
    MUTE = 0x13
    HANGUP = 0x14
    BURSTS = 0x15
    FLAGS = 0x16
