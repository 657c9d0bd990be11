"""Media packets: what travels in the SFrame payload of every media datagram.

Scope: the wire format of audio and control packets
(``docs/protocol.md#media-packets``), their parsing and serialization, and
nothing else: :mod:`pqcall.transport.media_protocol` decides what to send
and when. No state, no I/O.

Every datagram is one SFrame payload (RFC 9605, ``crypto/sframe_context.py``):
encrypted, authenticated with the constant metadata
:data:`~pqcall.transport.media_protocol.MEDIA_METADATA`,
replay-checked, and padded to a multiple of ``pad_to`` bytes. It holds one
audio packet, or one or more control packets back to back (each control
type has a fixed length, so its type byte says where the next one starts).
Control packets are small: what is due at once (a second's ping, report and
pong) goes out in one datagram, padded to the size of an audio packet so an
observer cannot tell them apart by size. All integers are big-endian::

    AUDIO            01 | seq u16 | timestamp u32 | Opus payload
    AUDIO_REDUNDANT  02 | seq u16 | timestamp u32 | offset u16 | length u16
                        | redundant payload (length bytes) | Opus payload
    AUDIO_BACKUP     03 | seq u16 | timestamp u32 | frame u16 | count u8 | length u16
                        | count x copy length u16 | copies | Opus payload | zeros
    AUDIO_PAIR       04 | as AUDIO_REDUNDANT: frame seq - 1 (length bytes) | frame seq
    PING             10 | ping id u32 | sent at u64 (microseconds, sender's clock)
    PONG             11 | ping id u32 | sent at u64 (echoed) | hold u32 (microseconds)
    REPORT           12 | cumulative lost u32 | highest seq u32 (extended)
                        | jitter u32 (48 kHz units) | fraction lost u8 (1/256)
    MUTE             13 | muted u8 (0 or 1) | change number u16
    HANGUP           14 | reason u8
    BURSTS           15 | bursts u16 | lost u16

The redundant payload of ``AUDIO_REDUNDANT`` is the previous frame again, as
RFC 2198 carries it: ``offset`` is how far its timestamp lies before the
packet's (one frame when it is the previous one). ``AUDIO_PAIR`` has the same
layout, but its first frame is ``seq - 1`` in its own right, not a copy: two
frames a packet (40 ms packets on a narrow link, ``docs/decisions/0130``).

``AUDIO_BACKUP`` is the backup mode's packet (``docs/decisions/0220-bursts.md``):
``count`` (at most :data:`MAX_BACKUP_COPIES`) low-rate copies of the frames
``seq - 1``, ``seq - 2``, ... in that order, ``frame`` the samples per frame
(the first copy's offset), ``length`` the Opus payload's, then zeros up to the
mode's constant size (the sender's: every packet of the mode is that long).

``BURSTS`` goes just before a ``REPORT`` whose interval had loss: the runs of lost
packets judged in it and the packets they held (the mean burst length, decision 0220).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Self, TypeAlias

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.hangup_reason import HangupReason

__all__ = [
    "AUDIO_HEADER_LENGTH",
    "AUDIO_TYPES",
    "BACKUP_HEADER_LENGTH",
    "FRACTION_LOST_SCALE",
    "MAX_BACKUP_COPIES",
    "REDUNDANCY_HEADER_LENGTH",
    "SAMPLE_RATE_HZ",
    "SEQUENCE_MODULUS",
    "TIMESTAMP_MODULUS",
    "U32_MAX",
    "U64_MODULUS",
    "AudioFields",
    "AudioPacket",
    "BurstReport",
    "ControlPacket",
    "HangupPacket",
    "HangupReason",
    "MediaPacket",
    "MutePacket",
    "PacketType",
    "PingPacket",
    "PongPacket",
    "ReceiverReport",
    "parse_audio_fields",
    "parse_control_packets",
    "parse_packet",
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

_AUDIO = struct.Struct("!BHI")
_REDUNDANCY = struct.Struct("!HH")
_BACKUP = struct.Struct("!HBH")
_PING = struct.Struct("!BIQ")
_PONG = struct.Struct("!BIQI")
_REPORT = struct.Struct("!BIIIB")
_MUTE = struct.Struct("!BBH")
_HANGUP = struct.Struct("!BB")
_BURSTS = struct.Struct("!BHH")


def serial_delta(delta: int, modulus: int) -> int:
    """``delta`` reduced to [-modulus/2, modulus/2): serial number arithmetic."""
    return (delta + modulus // 2) % modulus - modulus // 2


def _check_length(data: bytes, layout: struct.Struct, name: str) -> None:
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


AudioFields: TypeAlias = tuple[int, int, bytes, bytes | None, int, tuple[bytes, ...]]
"""An audio packet's seq, timestamp, payload, redundant payload, its offset, older copies."""


def parse_audio_fields(data: bytes) -> AudioFields:
    """:meth:`AudioPacket.parse`'s fields, without the object (the receive path's form).

    Raises:
        DecodeError: as :meth:`AudioPacket.parse`.
    """
    if len(data) < AUDIO_HEADER_LENGTH:
        raise DecodeError("audio packet has truncated header")
    kind, seq, timestamp = _AUDIO.unpack_from(data)
    if kind == PacketType.AUDIO:
        payload = data[AUDIO_HEADER_LENGTH:]
        if not payload:
            raise DecodeError("audio packet has empty payload")
        return seq, timestamp, bytes(payload), None, 0, ()
    if kind == PacketType.AUDIO_BACKUP:
        return _parse_backup(data, seq, timestamp)
    if kind not in (PacketType.AUDIO_REDUNDANT, PacketType.AUDIO_PAIR):
        raise DecodeError(f"media packet type 0x{kind:02x} is not audio")
    start = AUDIO_HEADER_LENGTH + REDUNDANCY_HEADER_LENGTH
    if len(data) < start:
        raise DecodeError("audio packet has truncated redundancy header")
    offset, length = _REDUNDANCY.unpack_from(data, AUDIO_HEADER_LENGTH)
    if offset == 0:
        raise DecodeError("audio packet has zero redundant timestamp offset")
    if length == 0:
        raise DecodeError("audio packet has empty redundant payload")
    if len(data) < start + length:
        raise DecodeError("audio packet has truncated redundant payload")
    payload = data[start + length :]
    if not payload:
        raise DecodeError("audio packet has empty payload")
    return seq, timestamp, bytes(payload), bytes(data[start : start + length]), offset, ()


def _parse_backup(data: bytes, seq: int, timestamp: int) -> AudioFields:
    start = AUDIO_HEADER_LENGTH + BACKUP_HEADER_LENGTH
    if len(data) < start:
        raise DecodeError("audio packet has truncated backup header")
    frame, count, length = _BACKUP.unpack_from(data, AUDIO_HEADER_LENGTH)
    if frame == 0:
        raise DecodeError("audio packet has zero frame size")
    if count > MAX_BACKUP_COPIES:
        raise DecodeError("audio packet has too many backup copies")
    end = start + 2 * count
    if len(data) < end:
        raise DecodeError("audio packet has truncated backup lengths")
    lengths = struct.unpack_from(f"!{count}H", data, start)
    copies = []
    for size in lengths:
        if size == 0:
            raise DecodeError("audio packet has empty backup copy")
        copies.append(bytes(data[end : end + size]))
        end += size
    if length == 0:
        raise DecodeError("audio packet has empty payload")
    if len(data) < end + length:
        raise DecodeError("audio packet has truncated payload")
    payload = bytes(data[end : end + length])
    if not copies:
        return seq, timestamp, payload, None, 0, ()
    return seq, timestamp, payload, copies[0], frame, tuple(copies[1:])


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """One Opus frame, maybe with the previous frame again (RFC 2198-style)."""

    seq: int
    """Sequence number, one per frame, wrapping at 2**16."""
    timestamp: int
    """Media timestamp of the frame's first sample, 48 kHz units, wrapping at 2**32."""
    payload: bytes
    """The Opus packet (not empty)."""
    redundant: bytes | None = None
    """The previous frame's Opus packet, or None."""
    redundant_offset: int = 0
    """How many 48 kHz units the redundant frame's timestamp lies before ``timestamp``."""
    older: tuple[bytes, ...] = ()
    """Copies of the frames before the redundant one (``seq - 2``, ...): the backup form."""
    backup_size: int = 0
    """Nonzero: the AUDIO_BACKUP form, padded with zeros to this many bytes (the mode's size)."""
    pair: bool = False
    """The AUDIO_PAIR form: ``redundant`` is frame ``seq - 1`` in its own right (40 ms packets)."""

    def __post_init__(self) -> None:
        if not 0 <= self.seq < SEQUENCE_MODULUS:
            raise LocalProtocolError("audio sequence number must fit in 16 bits")
        if not 0 <= self.timestamp < TIMESTAMP_MODULUS:
            raise LocalProtocolError("audio timestamp must fit in 32 bits")
        if not self.payload:
            raise LocalProtocolError("audio payload must not be empty")
        if self.redundant is not None:
            if not 0 < len(self.redundant) <= U16_MAX:
                raise LocalProtocolError("redundant payload must be 1 to 65535 bytes")
            if not 0 < self.redundant_offset <= U16_MAX:
                raise LocalProtocolError("redundant timestamp offset must be 1 to 65535")
        if self.backup_size:
            if len(self.older) + (self.redundant is not None) > MAX_BACKUP_COPIES:
                raise LocalProtocolError(f"at most {MAX_BACKUP_COPIES} backup copies")
            if (self.older and self.redundant is None) or not all(self.older):
                raise LocalProtocolError("backup copies must be consecutive and not empty")
            if self._backup_length() > self.backup_size:
                raise LocalProtocolError("backup packet is longer than its size")
        elif self.older:
            raise LocalProtocolError("older copies need the backup form")

    def _backup_length(self) -> int:
        copies = () if self.redundant is None else (self.redundant, *self.older)
        header = AUDIO_HEADER_LENGTH + BACKUP_HEADER_LENGTH + 2 * len(copies)
        return header + sum(map(len, copies)) + len(self.payload)

    @property
    def size(self) -> int:
        """Length of :meth:`serialize`'s result."""
        if self.backup_size:
            return self.backup_size
        extra = 0 if self.redundant is None else REDUNDANCY_HEADER_LENGTH + len(self.redundant)
        return AUDIO_HEADER_LENGTH + extra + len(self.payload)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse an AUDIO or AUDIO_REDUNDANT packet.

        Raises:
            DecodeError: wrong type, truncated header or block, empty payload.
        """
        return cls(*parse_audio_fields(data), pair=data[:1] == bytes((PacketType.AUDIO_PAIR,)))

    def serialize(self) -> bytes:
        """The packet's bytes."""
        if self.backup_size:
            return self._serialize_backup()
        if self.redundant is None:
            return _AUDIO.pack(PacketType.AUDIO, self.seq, self.timestamp) + self.payload
        return b"".join(
            (
                _AUDIO.pack(self._redundant_type(), self.seq, self.timestamp),
                _REDUNDANCY.pack(self.redundant_offset, len(self.redundant)),
                self.redundant,
                self.payload,
            )
        )

    def _redundant_type(self) -> PacketType:
        return PacketType.AUDIO_PAIR if self.pair else PacketType.AUDIO_REDUNDANT

    def _serialize_backup(self) -> bytes:
        copies = () if self.redundant is None else (self.redundant, *self.older)
        frame = self.redundant_offset if copies else 0
        packet = b"".join(
            (
                _AUDIO.pack(PacketType.AUDIO_BACKUP, self.seq, self.timestamp),
                _BACKUP.pack(frame, len(copies), len(self.payload)),
                struct.pack(f"!{len(copies)}H", *map(len, copies)),
                *copies,
                self.payload,
            )
        )
        return packet + bytes(self.backup_size - len(packet))


@dataclass(frozen=True, slots=True)
class PingPacket:
    """Asks the peer for a pong, to measure the round trip."""

    TYPE: ClassVar[PacketType] = PacketType.PING

    ping_id: int
    """Identifies the ping among those outstanding (u32)."""
    sent_at_us: int
    """The sender's clock when sent, microseconds mod 2**64 (opaque to the peer)."""

    def __post_init__(self) -> None:
        if not 0 <= self.ping_id <= U32_MAX or not 0 <= self.sent_at_us < U64_MODULUS:
            raise LocalProtocolError("ping id or time out of range")

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a PING packet.

        Raises:
            DecodeError: wrong type or length.
        """
        _check_length(data, _PING, "ping")
        _, ping_id, sent_at = _PING.unpack(data)
        return cls(ping_id, sent_at)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _PING.pack(self.TYPE, self.ping_id, self.sent_at_us)


@dataclass(frozen=True, slots=True)
class PongPacket:
    """Answers a ping: its id and time echoed, and how long the answer was held."""

    TYPE: ClassVar[PacketType] = PacketType.PONG

    ping_id: int
    """The ping's id."""
    sent_at_us: int
    """The ping's ``sent_at_us``, echoed."""
    hold_us: int
    """Microseconds between the ping's arrival and the pong's departure (u32, capped)."""

    def __post_init__(self) -> None:
        if not 0 <= self.ping_id <= U32_MAX or not 0 <= self.sent_at_us < U64_MODULUS:
            raise LocalProtocolError("pong id or time out of range")
        if not 0 <= self.hold_us <= U32_MAX:
            raise LocalProtocolError("pong hold time out of range")

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a PONG packet.

        Raises:
            DecodeError: wrong type or length.
        """
        _check_length(data, _PONG, "pong")
        _, ping_id, sent_at, hold = _PONG.unpack(data)
        return cls(ping_id, sent_at, hold)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _PONG.pack(self.TYPE, self.ping_id, self.sent_at_us, self.hold_us)


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """How the sender's audio arrived, as an RTCP receiver report block (RFC 3550 6.4.1)."""

    TYPE: ClassVar[PacketType] = PacketType.REPORT

    cumulative_lost: int
    """Packets lost since the start (expected minus received, u32, capped)."""
    highest_seq: int
    """Highest sequence number received, extended by the wraparound count (u32)."""
    jitter: int
    """Interarrival jitter in 48 kHz timestamp units (u32, capped)."""
    fraction_lost: int
    """Fraction of packets lost since the previous report, in 1/256 (0-255)."""

    def __post_init__(self) -> None:
        for value in (self.cumulative_lost, self.highest_seq, self.jitter):
            if not 0 <= value <= U32_MAX:
                raise LocalProtocolError("report counters must fit in 32 bits")
        if not 0 <= self.fraction_lost < FRACTION_LOST_SCALE:
            raise LocalProtocolError("fraction lost must be 0 to 255")

    @property
    def jitter_ms(self) -> float:
        """The jitter in milliseconds."""
        return self.jitter * 1000.0 / SAMPLE_RATE_HZ

    @property
    def loss_fraction(self) -> float:
        """The fraction lost since the previous report, 0 to 255/256."""
        return self.fraction_lost / FRACTION_LOST_SCALE

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a REPORT packet.

        Raises:
            DecodeError: wrong type or length.
        """
        _check_length(data, _REPORT, "report")
        _, lost, highest, jitter, fraction = _REPORT.unpack(data)
        return cls(lost, highest, jitter, fraction)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _REPORT.pack(
            self.TYPE, self.cumulative_lost, self.highest_seq, self.jitter, self.fraction_lost
        )


@dataclass(frozen=True, slots=True)
class MutePacket:
    """The sender's microphone is muted (or not any more)."""

    TYPE: ClassVar[PacketType] = PacketType.MUTE

    muted: bool
    """Whether the sender is muted."""
    change: int
    """Counts the sender's mute changes (u16, serial): a stale copy never undoes a newer one."""

    def __post_init__(self) -> None:
        if not 0 <= self.change <= U16_MAX:
            raise LocalProtocolError("mute change number must fit in 16 bits")

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a MUTE packet.

        Raises:
            DecodeError: wrong type or length, or a flag other than 0 or 1.
        """
        _check_length(data, _MUTE, "mute")
        _, flag, change = _MUTE.unpack(data)
        if flag > 1:
            raise DecodeError(f"mute packet has invalid flag 0x{flag:02x}")
        return cls(bool(flag), change)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _MUTE.pack(self.TYPE, int(self.muted), self.change)


@dataclass(frozen=True, slots=True)
class HangupPacket:
    """The sender ended the call."""

    TYPE: ClassVar[PacketType] = PacketType.HANGUP

    reason: int
    """A :class:`HangupReason` value, or another byte (unspecified)."""

    def __post_init__(self) -> None:
        if not 0 <= self.reason <= 0xFF:
            raise LocalProtocolError("hang-up reason must fit in 8 bits")

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a HANGUP packet.

        Raises:
            DecodeError: wrong type or length.
        """
        _check_length(data, _HANGUP, "hangup")
        _, reason = _HANGUP.unpack(data)
        return cls(reason)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _HANGUP.pack(self.TYPE, self.reason)


@dataclass(frozen=True, slots=True)
class BurstReport:
    """How the loss of a report's interval came: in how many runs (sent before the REPORT)."""

    TYPE: ClassVar[PacketType] = PacketType.BURSTS

    bursts: int
    """Runs of consecutive lost packets judged since the previous report (u16, capped)."""
    lost: int
    """Packets in those runs (u16, capped)."""

    def __post_init__(self) -> None:
        if not 0 <= self.bursts <= U16_MAX or not 0 <= self.lost <= U16_MAX:
            raise LocalProtocolError("burst counts must fit in 16 bits")
        if self.lost < self.bursts:
            raise LocalProtocolError("a burst holds at least one lost packet")

    @property
    def mean_burst_packets(self) -> float:
        """Mean run length of the loss, in packets (0 without loss)."""
        return self.lost / self.bursts if self.bursts else 0.0

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a BURSTS packet.

        Raises:
            DecodeError: wrong type or length, or fewer packets than runs.
        """
        _check_length(data, _BURSTS, "bursts")
        _, bursts, lost = _BURSTS.unpack(data)
        if lost < bursts:
            raise DecodeError("bursts packet has fewer lost packets than bursts")
        return cls(bursts, lost)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _BURSTS.pack(self.TYPE, self.bursts, self.lost)


MediaPacket: TypeAlias = (
    AudioPacket | PingPacket | PongPacket | ReceiverReport | MutePacket | HangupPacket | BurstReport
)

ControlPacket: TypeAlias = (
    PingPacket | PongPacket | ReceiverReport | MutePacket | HangupPacket | BurstReport
)

AUDIO_TYPES: Final = tuple(kind for kind in PacketType if kind < PacketType.PING)

_CONTROL_PARSERS: Final[dict[int, type[ControlPacket]]] = {
    PacketType.PING: PingPacket,
    PacketType.PONG: PongPacket,
    PacketType.REPORT: ReceiverReport,
    PacketType.MUTE: MutePacket,
    PacketType.HANGUP: HangupPacket,
    PacketType.BURSTS: BurstReport,
}


_CONTROL_LENGTHS: Final[dict[int, int]] = {
    PacketType.PING: _PING.size,
    PacketType.PONG: _PONG.size,
    PacketType.REPORT: _REPORT.size,
    PacketType.MUTE: _MUTE.size,
    PacketType.HANGUP: _HANGUP.size,
    PacketType.BURSTS: _BURSTS.size,
}


def parse_control_packets(data: bytes) -> list[ControlPacket]:
    """Parse a control datagram's payload: one or more control packets back to back.

    Raises:
        DecodeError: empty, or a packet of an unknown type, truncated or malformed.
    """
    if not data:
        raise DecodeError("media packet is empty")
    packets = []
    offset = 0
    while offset < len(data):
        end = offset + _CONTROL_LENGTHS.get(data[offset], 1)
        packets.append(_parse_control(data[offset:end]))
        offset = end
    return packets


def parse_packet(data: bytes) -> MediaPacket:
    """Parse any one media packet by its type byte.

    Raises:
        DecodeError: empty, of an unknown type, or malformed for its type.
    """
    if data and data[0] in AUDIO_TYPES:
        return AudioPacket.parse(data)
    return _parse_control(data)


def _parse_control(data: bytes) -> ControlPacket:
    """Parse a media packet whose type byte is not audio's.

    Raises:
        DecodeError: as :func:`parse_packet`.
    """
    if not data:
        raise DecodeError("media packet is empty")
    parser = _CONTROL_PARSERS.get(data[0])
    if parser is None:
        raise DecodeError(f"media packet has unknown type 0x{data[0]:02x}")
    return parser.parse(data)
