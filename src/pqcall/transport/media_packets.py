"""Media packets: what travels in the SFrame payload of every media datagram.

Scope: the wire format of media packets (``docs/protocol.md#media-packets``):
the audio packets' parsing and serialization here, the control packets' in
:mod:`pqcall.transport.control_packets` and the type byte and constants in
:mod:`pqcall.transport.packet_types` (both re-exported here: import from this
module), and nothing else: :mod:`pqcall.transport.media_protocol` decides what
to send and when. No state, no I/O.

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
    FLAGS            16 | flags u8 (bit 0: voice disguised) | change number u16

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

``FLAGS`` says what the sender tells about its side (bit 0: its voice is disguised,
issue 23); it is sent only when a bit is set or was, and always alone in its datagram:
a peer that predates it drops (and counts) a datagram with a type it does not know.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Self, TypeAlias

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.control_packets import (
    VOICE_DISGUISED,
    BurstReport,
    ControlPacket,
    FlagsPacket,
    HangupPacket,
    MutePacket,
    PingPacket,
    PongPacket,
    ReceiverReport,
    parse_control,
    parse_control_packets,
)
from pqcall.transport.hangup_reason import HangupReason
from pqcall.transport.packet_types import (
    AUDIO_HEADER_LENGTH,
    BACKUP_HEADER_LENGTH,
    FRACTION_LOST_SCALE,
    MAX_BACKUP_COPIES,
    REDUNDANCY_HEADER_LENGTH,
    SAMPLE_RATE_HZ,
    SEQUENCE_MODULUS,
    TIMESTAMP_MODULUS,
    U16_MAX,
    U32_MAX,
    U64_MODULUS,
    PacketType,
    serial_delta,
)

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
    "U16_MAX",
    "U32_MAX",
    "U64_MODULUS",
    "VOICE_DISGUISED",
    "AudioFields",
    "AudioPacket",
    "BurstReport",
    "ControlPacket",
    "FlagsPacket",
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

_AUDIO = struct.Struct("!BHI")
_REDUNDANCY = struct.Struct("!HH")
_BACKUP = struct.Struct("!HBH")


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


MediaPacket: TypeAlias = (
    AudioPacket
    | PingPacket
    | PongPacket
    | ReceiverReport
    | MutePacket
    | HangupPacket
    | BurstReport
    | FlagsPacket
)

AUDIO_TYPES: Final = tuple(kind for kind in PacketType if kind < PacketType.PING)


def parse_packet(data: bytes) -> MediaPacket:
    """Parse any one media packet by its type byte.

    Raises:
        DecodeError: empty, of an unknown type, or malformed for its type.
    """
    if data and data[0] in AUDIO_TYPES:
        return AudioPacket.parse(data)
    return parse_control(data)
