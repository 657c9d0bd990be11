"""Media control packets: ping, pong, receiver report, mute, hang-up, bursts and flags.

Scope: the wire format of the control packets (``docs/protocol.md#media-packets``),
their parsing and serialization, and the parsing of a control datagram (one or
more control packets back to back: each type has a fixed length, so its type
byte says where the next one starts). The audio packets are in
:mod:`pqcall.transport.media_packets`, which re-exports everything here.
No state, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar, Final, Self, TypeAlias

from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.packet_types import (
    FRACTION_LOST_SCALE,
    SAMPLE_RATE_HZ,
    U16_MAX,
    U32_MAX,
    U64_MODULUS,
    PacketType,
    check_length,
)

__all__ = [
    "VOICE_DISGUISED",
    "BurstReport",
    "ControlPacket",
    "FlagsPacket",
    "HangupPacket",
    "MutePacket",
    "PingPacket",
    "PongPacket",
    "ReceiverReport",
    "parse_control",
    "parse_control_packets",
]

_PING = struct.Struct("!BIQ")
_PONG = struct.Struct("!BIQI")
_REPORT = struct.Struct("!BIIIB")
_MUTE = struct.Struct("!BBH")
_HANGUP = struct.Struct("!BB")
_BURSTS = struct.Struct("!BHH")
_FLAGS = struct.Struct("!BBH")

VOICE_DISGUISED: Final = 0x01
"""FLAGS bit: the sender's voice is disguised before encoding (``docs/decisions/0800``)."""


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
        check_length(data, _PING, "ping")
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
        check_length(data, _PONG, "pong")
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
        check_length(data, _REPORT, "report")
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
        check_length(data, _MUTE, "mute")
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
        check_length(data, _HANGUP, "hangup")
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
        check_length(data, _BURSTS, "bursts")
        _, bursts, lost = _BURSTS.unpack(data)
        if lost < bursts:
            raise DecodeError("bursts packet has fewer lost packets than bursts")
        return cls(bursts, lost)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _BURSTS.pack(self.TYPE, self.bursts, self.lost)


@dataclass(frozen=True, slots=True)
class FlagsPacket:
    """What the sender says about its side of the call, one bit each (:data:`VOICE_DISGUISED`).

    Sent only when a bit is set (or was): a peer that predates it drops the datagram,
    so it travels alone in one (``docs/protocol.md#media-packets``). Bits this side
    does not know are kept, not refused.
    """

    TYPE: ClassVar[PacketType] = PacketType.FLAGS

    flags: int
    """The bits (u8)."""
    change: int
    """Counts the sender's flag changes (u16, serial): a stale copy never undoes a newer one."""

    def __post_init__(self) -> None:
        if not 0 <= self.flags <= 0xFF or not 0 <= self.change <= U16_MAX:
            raise LocalProtocolError("flags must fit in 8 bits, their change number in 16")

    @property
    def voice_disguised(self) -> bool:
        """Whether the sender's voice is disguised."""
        return bool(self.flags & VOICE_DISGUISED)

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a FLAGS packet.

        Raises:
            DecodeError: wrong type or length.
        """
        check_length(data, _FLAGS, "flags")
        _, flags, change = _FLAGS.unpack(data)
        return cls(flags, change)

    def serialize(self) -> bytes:
        """The packet's bytes."""
        return _FLAGS.pack(self.TYPE, self.flags, self.change)


ControlPacket: TypeAlias = (
    PingPacket | PongPacket | ReceiverReport | MutePacket | HangupPacket | BurstReport | FlagsPacket
)

_CONTROL_PARSERS: Final[dict[int, type[ControlPacket]]] = {
    PacketType.PING: PingPacket,
    PacketType.PONG: PongPacket,
    PacketType.REPORT: ReceiverReport,
    PacketType.MUTE: MutePacket,
    PacketType.HANGUP: HangupPacket,
    PacketType.BURSTS: BurstReport,
    PacketType.FLAGS: FlagsPacket,
}


_CONTROL_LENGTHS: Final[dict[int, int]] = {
    PacketType.PING: _PING.size,
    PacketType.PONG: _PONG.size,
    PacketType.REPORT: _REPORT.size,
    PacketType.MUTE: _MUTE.size,
    PacketType.HANGUP: _HANGUP.size,
    PacketType.BURSTS: _BURSTS.size,
    PacketType.FLAGS: _FLAGS.size,
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
        packets.append(parse_control(data[offset:end]))
        offset = end
    return packets


def parse_control(data: bytes) -> ControlPacket:
    """Parse one media packet whose type byte is not audio's.

    Raises:
        DecodeError: empty, of an unknown type, or malformed for its type.
    """
    if not data:
        raise DecodeError("media packet is empty")
    parser = _CONTROL_PARSERS.get(data[0])
    if parser is None:
        raise DecodeError(f"media packet has unknown type 0x{data[0]:02x}")
    return parser.parse(data)
