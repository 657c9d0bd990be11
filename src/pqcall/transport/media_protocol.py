"""The sans-I/O media protocol of one side of a call.

Scope: :class:`MediaProtocol` (``docs/protocol.md#media-packets``), which
owns both directions' SFrame contexts, numbers the audio, schedules pings
and receiver reports, signals mute and hang-up, watches for a silent peer, and
tells its wrapper how to adapt the encoder to the loss the peer reports. No
socket, clock or codec here: bytes and ``now`` (seconds, monotonic) in, bytes
and events out, as aioquic's ``QuicConnection``.

Every datagram is one SFrame payload (RFC 9605, ``crypto/sframe_context.py``)
holding one audio packet or control packets back to back
(:mod:`pqcall.transport.media_packets`): encrypted, authenticated with the
constant metadata :data:`MEDIA_METADATA`, replay-checked, and padded to the
size of an audio packet. Control packets due together share one datagram.

Calling contract::

    protocol = MediaProtocol(keys, frame_ms=20, frame_bytes=80)
    protocol.start(now)
    protocol.send_audio(opus_packet, now)          # once per frame tick
    protocol.receive_datagram(datagram, now)       # every datagram from the peer
    protocol.handle_timer(now)                     # when get_timer() comes
    # after each of the calls above:
    for datagram in protocol.datagrams_to_send(now): send it
    while (event := protocol.next_event()) is not None: handle it
    # and re-arm the timer at protocol.get_timer()

Nothing raises out of :meth:`MediaProtocol.receive_datagram`: malformed,
unauthenticated, replayed or unexpected datagrams are dropped and counted in
:attr:`MediaProtocol.stats`.

Sender adaptation (:class:`SenderAdaptation`), chosen by measurement (PESQ-WB
of the two espeak-ng samples, 2 loss seeds each, ideal recovery of frame n
from packet n+1; 20 ms frames, 73 Opus bytes per packet):

=====================================  =====  =====  =====  =====
random loss                            0 %    5 %    10 %   20 %
=====================================  =====  =====  =====  =====
one frame, no FEC                      4.39   2.60   1.99   1.43
one frame, FEC planned for the loss    4.39   3.40   2.99   2.33
two frames of 34 bytes (redundancy)    3.18   3.01   2.78   2.26
=====================================  =====  =====  =====  =====

The packet size must not change when loss starts (it would tell an observer),
so redundancy has to share the same bytes as one frame: it halves the Opus
bitrate of both copies, and at every loss rate and budget measured (73, 103
and 153 bytes, 0-40 % loss) in-band FEC at the full bitrate did as well or
better. So in automatic mode (``redundancy=None``) the protocol raises the
encoder's expected loss (FEC) from the peer's reports, and turns redundancy on
only when the encoder has no FEC (``fec=False``), where it beats concealment
by far. ``redundancy=True`` forces redundancy (and FEC planned for no loss,
which measured better alongside it); ``False`` forbids it. Both go back to
the configured state :data:`ADAPTATION_HOLD_S` after the last reported loss.
Until the first report, FEC is planned for
:data:`STARTUP_EXPECTED_LOSS_PERCENT`: a lossy path would otherwise lose its
first second to concealment (20 % random loss: PESQ-WB 2.77 -> 2.93; no
loss: 4.53 -> 4.52).

Future direction: at 20 % random loss the frames still concealed are those
whose next packet was lost too, and they cost far more than their share
(concealment bends the decoder's state for the frames after it). A *backup*
of frame n-2 in packet n (a second encoder at 8 kbit/s, forced wideband so
the decoder stays in one SILK mode; the main frame shrinks from 93 to 69
bytes) measured PESQ-WB 2.61 -> 2.77 offline (both samples, 3 seeds) and
3.01 against 2.86 through the jitter buffer with one more frame of delay,
but only 2.70 against 2.77 in the real-time benchmark, for 1.6 % of a core
more: the mode flapped around its loss threshold, and growing the buffer to
three frames cost time warps. A narrowband backup was worse than
concealment (the decoder resets when its internal rate changes). The
experiment's branch (``backup-copies``) did not survive a change of
checkout; this paragraph is its record. These figures predate the startup
FEC plan and the 99-byte frames (20 % random loss now scores 3.05); a
backup copy matters most for bursty loss, where FEC's one frame is too
little.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Final, TypeAlias

from pqcall.crypto.handshake import CallKeys, Role
from pqcall.crypto.sframe import CipherSuite
from pqcall.crypto.sframe_context import (
    DEFAULT_PAD_TO,
    ReceiverStats,
    SFrameReceiver,
    SFrameSender,
)
from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.media.stats import InterarrivalJitter, SequenceTracker
from pqcall.transport.media_packets import (
    AUDIO_HEADER_LENGTH,
    AUDIO_TYPES,
    FRACTION_LOST_SCALE,
    REDUNDANCY_HEADER_LENGTH,
    SAMPLE_RATE_HZ,
    SEQUENCE_MODULUS,
    TIMESTAMP_MODULUS,
    U32_MAX,
    U64_MODULUS,
    AudioPacket,
    HangupPacket,
    HangupReason,
    MediaPacket,
    MutePacket,
    PingPacket,
    PongPacket,
    ReceiverReport,
    parse_audio_fields,
    parse_control_packets,
    serial_delta,
)

__all__ = [
    "CALLEE_SENDER_ID",
    "CALLER_SENDER_ID",
    "CALM_COMPLEXITY",
    "MEDIA_CIPHER_SUITE",
    "MEDIA_METADATA",
    "MEDIA_TIMEOUT_S",
    "STARTUP_EXPECTED_LOSS_PERCENT",
    "AdaptationChanged",
    "AudioReceived",
    "MediaEvent",
    "MediaProtocol",
    "MediaProtocolStats",
    "MediaState",
    "MediaTimedOut",
    "PeerHungUp",
    "PeerMuted",
    "ReportReceived",
    "RttMeasured",
    "SenderAdaptation",
]

# specification constants (docs/protocol.md#media-packets)
MEDIA_METADATA: Final = b"pqcall v1 media"
"""SFrame metadata (authenticated, not sent) of every media packet."""
MEDIA_CIPHER_SUITE: Final = CipherSuite.AES_256_GCM_SHA512_128
CALLER_SENDER_ID: Final = 0
"""SFrame sender id of the caller's direction."""
CALLEE_SENDER_ID: Final = 1
"""SFrame sender id of the callee's direction."""
MICROSECONDS_PER_SECOND: Final = 1_000_000

# implementation constants
MEDIA_TIMEOUT_S: Final = 10.0
"""A call whose peer sent nothing that authenticates for this long has ended."""
DEFAULT_PING_INTERVAL_S: Final = 1.0
DEFAULT_REPORT_INTERVAL_S: Final = 1.0
MAX_OUTSTANDING_PINGS: Final = 8
"""Pings remembered for their pong; older ones are forgotten."""
MAX_PENDING_PONGS: Final = 4
"""Pongs waiting to be sent; a flood of pings gets no more answers."""
MAX_PONG_HOLD_S: Final = 1.0
"""A pong waits for the next control datagram (its ``hold`` says how long), at most this."""
MUTE_REPEATS: Final = 3
"""Copies of a mute change, against loss."""
MUTE_REPEAT_INTERVAL_S: Final = 0.1
HANGUP_REPEATS: Final = 5
"""Copies of a hang-up: all five lost at 20 % random loss is 1 in 3000."""
HANGUP_REPEAT_INTERVAL_S: Final = 0.02
"""Spacing of the hang-up copies (one 20 ms frame), so a short burst misses some."""
LOSS_WINDOW_REPORTS: Final = 4
"""The loss the adaptation plans for is the mean over this many recent reports."""
ADAPTATION_HOLD_S: Final = 10.0
"""Loss-free time after which the adaptation returns to the configured state."""
STARTUP_EXPECTED_LOSS_PERCENT: Final = 10
"""Loss the encoder plans FEC for until the peer's first report says what the path does."""
CALM_COMPLEXITY: Final = 6
"""Encoder complexity while no loss is planned for (at most; never above the configured one).

With the default variable bitrate and wideband cap, libopus's output at 6 and
7 is bit-identical, and so is 8, 9 and 10 (checked frame by frame on the
benchmark's speech, with and without FEC); 6 encodes about 8 % faster than 7
(143 against 156 us a frame, warm). 10 against 6 scores about 0.035 PESQ-WB
higher with no loss (4.478 against 4.443, offline on both speakers) for about
25 % more encoder time, and 0.1 higher at 20 % random loss (2.605 against
2.500): so the full complexity comes back with the first report of loss, and
a clean path runs the cheaper one. Measured in ``pqcall bench media`` (three
seeds) with complexity 7 under constant bitrate: the same PESQ-WB with no
loss as 10 (4.53), for about 0.5 % of a core less per side.
"""
MAX_COMPLEXITY: Final = 10
"""Opus's highest complexity (``media.codec`` has it too; this pure module cannot import
the codec, which loads libopus)."""
MIN_REDUNDANT_FRAME_BYTES: Final = 8
"""Smallest Opus frame worth sending twice."""


# events


@dataclass(frozen=True, slots=True)
class AudioReceived:
    """An audio packet arrived (feed it to the jitter buffer)."""

    seq: int
    """Its sequence number."""
    timestamp: int
    """Its media timestamp (48 kHz units)."""
    payload: bytes
    """The Opus frame."""
    redundant: bytes | None
    """The previous frame (seq - 1) again, or None."""


@dataclass(frozen=True, slots=True)
class RttMeasured:
    """A pong answered one of our pings."""

    rtt_s: float
    """Round-trip time without the peer's hold time, seconds (never negative)."""
    ping_sent_at: float
    """Our ``now`` when the ping was queued."""
    hold_s: float
    """How long the peer held the ping before answering."""


@dataclass(frozen=True, slots=True)
class ReportReceived:
    """The peer reported how our audio arrives."""

    report: ReceiverReport
    """The report."""


@dataclass(frozen=True, slots=True)
class PeerMuted:
    """The peer muted or unmuted its microphone."""

    muted: bool
    """Whether it is muted now."""


@dataclass(frozen=True, slots=True)
class PeerHungUp:
    """The peer ended the call; the protocol has ended."""

    reason: int
    """Its :class:`HangupReason` value (other values: unspecified)."""


@dataclass(frozen=True, slots=True)
class MediaTimedOut:
    """Nothing from the peer authenticated for the media timeout; the protocol has ended."""

    idle_s: float
    """Seconds since the last authenticated packet (or the start)."""


@dataclass(frozen=True, slots=True)
class SenderAdaptation:
    """How the wrapper should run its encoder now."""

    redundancy: bool
    """Whether audio packets carry the previous frame again."""
    expected_loss_percent: int
    """Loss the encoder should plan in-band FEC for (``set_expected_loss_percent``)."""
    frame_bytes: int
    """Opus bytes per frame that fit the constant packet size (the encoder's cap)."""
    complexity: int
    """Encoder effort, 0-10 (``set_complexity``): the configured one while loss is
    planned for, at most :data:`CALM_COMPLEXITY` on a clean path."""

    def bitrate_bps(self, frame_ms: int) -> int:
        """The Opus bitrate whose share of a frame is ``frame_bytes`` (the encoder's cap)."""
        return self.frame_bytes * 8 * 1000 // frame_ms


@dataclass(frozen=True, slots=True)
class AdaptationChanged:
    """The encoder should change (see :attr:`MediaProtocol.adaptation`)."""

    adaptation: SenderAdaptation
    """The new settings."""


MediaEvent: TypeAlias = (
    AudioReceived
    | RttMeasured
    | ReportReceived
    | PeerMuted
    | PeerHungUp
    | MediaTimedOut
    | AdaptationChanged
)


class MediaState(enum.Enum):
    """What the protocol waits for."""

    AWAITING_START = "awaiting start"
    ACTIVE = "active"
    HANGING_UP = "hanging up"
    """Sending the hang-up copies; no audio any more."""
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class MediaProtocolStats:
    """Counters of a :class:`MediaProtocol`."""

    sframe: ReceiverStats
    """The SFrame receiver's counters (malformed, unauthenticated, replayed...)."""
    malformed: int
    """Authenticated packets whose inner media packet did not parse."""
    ignored: int
    """Datagrams received before :meth:`MediaProtocol.start` or after the end."""
    audio_sent: int
    """Audio packets sent."""
    control_sent: int
    """Control packets sent."""
    audio_received: int
    """Audio packets received."""
    control_received: int
    """Control packets received."""
    redundant_sent: int
    """Audio packets sent with a redundant copy."""
    redundant_discarded: int
    """Received redundant copies dropped: not of the previous frame."""
    unmatched_pongs: int
    """Pongs for no outstanding ping (late, or not ours)."""

    @property
    def dropped(self) -> int:
        """Datagrams dropped for any reason."""
        return self.sframe.dropped + self.malformed + self.ignored


@dataclass(frozen=True, slots=True)
class _Scheduled:
    due: float  # `now` at which to queue the packet
    packet: MutePacket | HangupPacket


@dataclass(frozen=True, slots=True)
class _PendingPong:
    ping: PingPacket
    received_at: float  # `now` of the ping's arrival, for the hold time


def _microseconds(now: float) -> int:
    return round(now * MICROSECONDS_PER_SECOND) % U64_MODULUS


class MediaProtocol:
    """The media channel of one side of a call (sans-I/O).

    Args:
        keys: the call's keys; ``keys.role`` picks the SFrame sender ids
            (:data:`CALLER_SENDER_ID` for the caller's direction).
        frame_ms: audio frame duration (the timestamp advances by it per frame).
        frame_bytes: the largest Opus frame the encoder makes at its configured
            bitrate (``OpusSettings.max_packet_bytes``).
        pad_to: SFrame padding multiple (0: no padding).
        redundancy: None for automatic (see the module doc), True to always
            send the previous frame again, False never to.
        fec: whether the encoder has in-band FEC (automatic redundancy is for
            encoders without).
        base_expected_loss_percent: the encoder's configured expected loss;
            the adaptation never plans for less.
        complexity: the encoder's configured complexity, used whenever loss is
            planned for (see :data:`CALM_COMPLEXITY`).
        ping_interval_s: seconds between pings.
        report_interval_s: seconds between receiver reports.
        media_timeout_s: seconds of silence from the peer that end the call.
        first_seq: sequence number of the first audio packet.
        first_timestamp: timestamp of the first audio packet.

    Raises:
        LocalProtocolError: an argument is out of range, or redundancy is
            forced on while two frames cannot fit the packet size.
    """

    # fixed attributes, used on every packet: slots make each read a direct load
    # (CPython 3.11 stops sharing an instance dict's keys at 30 attributes, and reads
    # from an unshared dict are hashed lookups; the media path measured 5 % slower)
    __slots__ = (
        "_adaptation",
        "_base_loss",
        "_calm_complexity",
        "_complexity",
        "_counts",
        "_events",
        "_fec",
        "_frame_samples",
        "_highest_seq",
        "_jitter",
        "_last_loss_at",
        "_last_received_at",
        "_media_timeout",
        "_mute_changes",
        "_muted",
        "_next_ping_at",
        "_next_report_at",
        "_outgoing",
        "_packet_bytes",
        "_peer_mute_change",
        "_peer_muted",
        "_pending_pongs",
        "_ping_id",
        "_ping_interval",
        "_pings",
        "_previous",
        "_receiver",
        "_recent_loss",
        "_redundancy_setting",
        "_redundant_frame_bytes",
        "_report_interval",
        "_reported_expected",
        "_reported_received",
        "_scheduled",
        "_sender",
        "_seq",
        "_sequence",
        "_single_frame_bytes",
        "_state",
        "_timestamp",
    )

    def __init__(
        self,
        keys: CallKeys,
        *,
        frame_ms: int = 20,
        frame_bytes: int = 80,
        pad_to: int = DEFAULT_PAD_TO,
        redundancy: bool | None = None,
        fec: bool = True,
        base_expected_loss_percent: int = 0,
        complexity: int = 10,
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
        report_interval_s: float = DEFAULT_REPORT_INTERVAL_S,
        media_timeout_s: float = MEDIA_TIMEOUT_S,
        first_seq: int = 0,
        first_timestamp: int = 0,
    ) -> None:
        if frame_ms <= 0 or frame_bytes <= 0 or pad_to < 0:
            raise LocalProtocolError("frame duration and size must be positive, pad_to >= 0")
        if min(ping_interval_s, report_interval_s, media_timeout_s) <= 0:
            raise LocalProtocolError("intervals and the media timeout must be positive")
        if not 0 <= base_expected_loss_percent <= 100:
            raise LocalProtocolError("expected loss must be 0-100 %")
        if not 0 <= complexity <= MAX_COMPLEXITY:
            raise LocalProtocolError(f"complexity must be 0-{MAX_COMPLEXITY}")
        if not 0 <= first_seq < SEQUENCE_MODULUS or not 0 <= first_timestamp < TIMESTAMP_MODULUS:
            raise LocalProtocolError("first sequence number or timestamp out of range")
        our_id, their_id = (
            (CALLER_SENDER_ID, CALLEE_SENDER_ID)
            if keys.role is Role.CALLER
            else (CALLEE_SENDER_ID, CALLER_SENDER_ID)
        )
        self._sender = SFrameSender(MEDIA_CIPHER_SUITE, keys.send_key, our_id, pad_to=pad_to)
        self._receiver = SFrameReceiver(MEDIA_CIPHER_SUITE, keys.receive_key, their_id)
        self._frame_samples = SAMPLE_RATE_HZ * frame_ms // 1000  # timestamp step per frame
        # the constant packet size: a whole number of padding multiples around one frame
        if pad_to:
            multiples = max(1, (AUDIO_HEADER_LENGTH + frame_bytes) // pad_to)
            self._packet_bytes = multiples * pad_to
        else:
            self._packet_bytes = AUDIO_HEADER_LENGTH + frame_bytes
        self._single_frame_bytes = min(frame_bytes, self._packet_bytes - AUDIO_HEADER_LENGTH)
        room = self._packet_bytes - AUDIO_HEADER_LENGTH - REDUNDANCY_HEADER_LENGTH
        self._redundant_frame_bytes = room // 2  # each of two frames in redundancy mode
        if redundancy is True and self._redundant_frame_bytes < MIN_REDUNDANT_FRAME_BYTES:
            raise LocalProtocolError(f"two audio frames do not fit in {self._packet_bytes} bytes")
        self._redundancy_setting = redundancy  # None: automatic
        self._fec = fec  # the encoder has in-band FEC
        self._base_loss = base_expected_loss_percent  # configured expected loss
        self._complexity = complexity  # configured encoder complexity
        self._calm_complexity = min(complexity, CALM_COMPLEXITY)  # while no loss is planned
        self._ping_interval = ping_interval_s
        self._report_interval = report_interval_s
        self._media_timeout = media_timeout_s
        self._state = MediaState.AWAITING_START
        self._events: deque[MediaEvent] = deque()  # for next_event
        self._outgoing: list[MediaPacket] = []  # for datagrams_to_send
        self._pending_pongs: list[_PendingPong] = []  # for the next control datagram
        self._scheduled: list[_Scheduled] = []  # mute and hang-up copies, by due time
        # our audio
        self._seq = first_seq  # of the next audio packet
        self._timestamp = first_timestamp  # of the next audio packet
        self._previous: bytes | None = None  # last frame sent, for redundancy
        # pings and reports
        self._next_ping_at = 0.0
        self._next_report_at = 0.0
        self._ping_id = 0  # of the next ping
        self._pings: dict[int, tuple[int, float]] = {}  # id -> (sent_at_us, now), oldest first
        # mute
        self._muted = False  # ours
        self._mute_changes = 0  # our change number
        self._peer_muted = False
        self._peer_mute_change: int | None = None  # newest change number applied
        # their audio, for the reports
        self._sequence = SequenceTracker()
        self._jitter = InterarrivalJitter()
        self._highest_seq: int | None = None  # extended
        self._reported_expected = 0  # at the previous report
        self._reported_received = 0
        self._last_received_at = 0.0  # `now` of the last authenticated packet (or start)
        # adaptation
        self._recent_loss: deque[float] = deque(maxlen=LOSS_WINDOW_REPORTS)
        self._last_loss_at: float | None = None  # `now` of the last report showing loss
        self._adaptation = self._startup_adaptation()
        # counters
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "malformed ignored audio_sent control_sent audio_received control_received "
                "redundant_sent redundant_discarded unmatched_pongs"
            ).split(),
            0,
        )

    # state

    @property
    def state(self) -> MediaState:
        """What the protocol waits for."""
        return self._state

    @property
    def is_ended(self) -> bool:
        """Whether the call is over (hung up, by either side, or timed out)."""
        return self._state is MediaState.ENDED

    @property
    def adaptation(self) -> SenderAdaptation:
        """How the encoder should run now (also announced by :class:`AdaptationChanged`)."""
        return self._adaptation

    @property
    def packet_bytes(self) -> int:
        """Size every audio packet is padded to, before SFrame (bytes)."""
        return self._packet_bytes

    @property
    def is_muted(self) -> bool:
        """Whether we told the peer we are muted."""
        return self._muted

    @property
    def is_peer_muted(self) -> bool:
        """Whether the peer said it is muted."""
        return self._peer_muted

    @property
    def stats(self) -> MediaProtocolStats:
        """A snapshot of the counters."""
        return MediaProtocolStats(sframe=self._receiver.stats, **self._counts)

    @property
    def dropped(self) -> int:
        """Datagrams dropped for any reason: ``stats.dropped``, without the snapshot.

        Cheap enough for every statistics poll (the snapshot builds two dataclasses).
        """
        counts = self._counts
        return self._receiver.dropped + counts["malformed"] + counts["ignored"]

    # API

    def start(self, now: float) -> None:
        """Start the call: the first ping goes out now, the timeout clock runs.

        Raises:
            LocalProtocolError: already started.
        """
        if self._state is not MediaState.AWAITING_START:
            raise LocalProtocolError("media protocol already started")
        self._state = MediaState.ACTIVE
        self._last_received_at = now
        self._next_ping_at = now
        self._next_report_at = now + self._report_interval
        if self._muted:
            self._announce_mute(now)
        self.handle_timer(now)

    def send_audio(self, payload: bytes, now: float) -> AudioPacket:
        """Queue one encoded frame; the next frame's timestamp is one frame later.

        The previous frame rides along when redundancy is on and both fit the
        packet size (so the size never changes when the mode does).

        Returns:
            The packet queued (its ``seq`` and ``timestamp``).

        Raises:
            LocalProtocolError: the protocol is not active, or ``payload`` is empty.
        """
        if self._state is not MediaState.ACTIVE:
            raise LocalProtocolError(f"cannot send audio while {self._state.value}")
        if not payload:
            raise LocalProtocolError("audio payload must not be empty")
        payload = bytes(payload)
        redundant = self._previous if self._adaptation.redundancy else None
        room = self._packet_bytes - AUDIO_HEADER_LENGTH - REDUNDANCY_HEADER_LENGTH
        if redundant is not None and len(redundant) + len(payload) > room:
            redundant = None  # the frame before a switch was a full one
        packet = AudioPacket(
            self._seq,
            self._timestamp,
            payload,
            redundant,
            self._frame_samples if redundant is not None else 0,
        )
        self._outgoing.append(packet)
        self._previous = payload
        self._seq = (self._seq + 1) % SEQUENCE_MODULUS
        self._timestamp = (self._timestamp + self._frame_samples) % TIMESTAMP_MODULUS
        return packet

    def set_muted(self, muted: bool, now: float) -> None:
        """Tell the peer our microphone is muted (or not); sent a few times, against loss.

        Muting does not stop the audio: keep sending frames (of silence), so
        the traffic does not change.
        """
        if muted == self._muted or self._state in (MediaState.HANGING_UP, MediaState.ENDED):
            return
        self._muted = muted
        self._mute_changes = (self._mute_changes + 1) % SEQUENCE_MODULUS
        if self._state is MediaState.ACTIVE:
            self._announce_mute(now)

    def hangup(self, now: float, reason: int = HangupReason.NORMAL) -> None:
        """End the call: the hang-up goes out :data:`HANGUP_REPEATS` times, then the end.

        The copies are :data:`HANGUP_REPEAT_INTERVAL_S` apart, sent from
        :meth:`handle_timer`; once the last one is queued the state is ENDED.
        Does nothing if the call already ended.
        """
        if self._state in (MediaState.HANGING_UP, MediaState.ENDED):
            return
        if self._state is MediaState.AWAITING_START:
            self._state = MediaState.ENDED
            return
        self._state = MediaState.HANGING_UP
        packet = HangupPacket(reason)
        self._scheduled = [
            _Scheduled(now + i * HANGUP_REPEAT_INTERVAL_S, packet) for i in range(HANGUP_REPEATS)
        ]
        self.handle_timer(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Open and handle one datagram from the peer; never raises on its content."""
        if self._state is not MediaState.ACTIVE:
            self._counts["ignored"] += 1
            return
        # open, then check replay (inside SFrameReceiver), then parse
        payload = self._receiver.unprotect(data, MEDIA_METADATA, now=now)
        if payload is None:
            return
        self._last_received_at = now
        if payload and payload[0] in AUDIO_TYPES:  # nearly every packet
            self._receive_audio(payload, now)
            return
        try:
            packets = parse_control_packets(payload)
        except DecodeError:
            self._counts["malformed"] += 1
            return
        for packet in packets:
            self._counts["control_received"] += 1
            if isinstance(packet, PingPacket):
                if len(self._pending_pongs) < MAX_PENDING_PONGS:
                    self._pending_pongs.append(_PendingPong(packet, now))
            elif isinstance(packet, PongPacket):
                self._receive_pong(packet, now)
            elif isinstance(packet, ReceiverReport):
                self._events.append(ReportReceived(packet))
                self._adapt(packet, now)
            elif isinstance(packet, MutePacket):
                self._receive_mute(packet)
            else:
                self._state = MediaState.ENDED
                self._scheduled.clear()
                self._pending_pongs.clear()
                self._events.append(PeerHungUp(packet.reason))
                return

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The protected datagrams queued since the last call: audio, then control.

        Control packets due together share a datagram; pongs wait for the
        next one (at most :data:`MAX_PONG_HOLD_S`) and take their hold time
        from ``now``, so call this just before sending.
        """
        pongs_due = bool(self._pending_pongs) and (
            now >= self._pending_pongs[0].received_at + MAX_PONG_HOLD_S
        )
        if not self._outgoing and not pongs_due:
            return []  # after nearly every received datagram
        datagrams = []
        control: list[bytes] = []
        for packet in self._outgoing:
            if isinstance(packet, AudioPacket):
                self._counts["audio_sent"] += 1
                self._counts["redundant_sent"] += packet.redundant is not None
                datagrams.append(self._sender.protect(packet.serialize(), MEDIA_METADATA, now=now))
            elif (payload := packet.serialize()) not in control:
                control.append(payload)  # a repeat due twice at once goes once
        self._outgoing.clear()
        if control or pongs_due:
            for pending in self._pending_pongs:
                hold_us = round((now - pending.received_at) * MICROSECONDS_PER_SECOND)
                ping = pending.ping
                control.append(
                    PongPacket(ping.ping_id, ping.sent_at_us, min(hold_us, U32_MAX)).serialize()
                )
            self._pending_pongs.clear()
            self._counts["control_sent"] += len(control)
            datagrams += [
                self._sender.protect(payload, MEDIA_METADATA, now=now)
                for payload in self._bundle(control)
            ]
        return datagrams

    def _bundle(self, control: list[bytes]) -> list[bytes]:
        """Control packets joined into as few payloads as fit one audio packet's size."""
        payloads: list[bytes] = []
        current = b""
        for packet in control:
            if current and len(current) + len(packet) > self._packet_bytes:
                payloads.append(current)
                current = b""
            current += packet
        payloads.append(current)
        return payloads

    def next_event(self) -> MediaEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None."""
        # asked after every datagram and tick: no lists, the active state tested first
        state = self._state
        when: float | None
        if state is MediaState.ACTIVE:
            active_due = min(
                self._next_ping_at,
                self._next_report_at,
                self._last_received_at + self._media_timeout,
            )
            if self._last_loss_at is not None:
                active_due = min(active_due, self._last_loss_at + ADAPTATION_HOLD_S)
            if self._pending_pongs:
                active_due = min(active_due, self._pending_pongs[0].received_at + MAX_PONG_HOLD_S)
            when = active_due
        elif state is MediaState.HANGING_UP:
            when = None
        else:
            return None  # not started, or ended
        due = self._receiver.get_timer()
        if due is not None and (when is None or due < when):
            when = due
        if self._scheduled:
            due = self._scheduled[0].due
            when = due if when is None or due < when else when
        return when

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now``: pings, reports, repeats, timeout, adaptation."""
        self._receiver.handle_timer(now)
        while self._scheduled and self._scheduled[0].due <= now:
            self._outgoing.append(self._scheduled.pop(0).packet)
        if self._state is MediaState.HANGING_UP and not self._scheduled:
            self._state = MediaState.ENDED
        if self._state is not MediaState.ACTIVE:
            return
        idle = now - self._last_received_at
        if idle >= self._media_timeout:
            self._state = MediaState.ENDED
            self._scheduled.clear()
            self._events.append(MediaTimedOut(idle))
            return
        if now >= self._next_ping_at:
            self._send_ping(now)
            self._next_ping_at = self._next_time(self._next_ping_at, self._ping_interval, now)
        if now >= self._next_report_at:
            self._outgoing.append(self._make_report())
            self._next_report_at = self._next_time(self._next_report_at, self._report_interval, now)
        if self._last_loss_at is not None and now >= self._last_loss_at + ADAPTATION_HOLD_S:
            self._last_loss_at = None
            self._recent_loss.clear()
            self._set_adaptation(self._compute_adaptation(loss_percent=0.0, lossy=False))

    # receiving

    def _receive_audio(self, data: bytes, now: float) -> None:
        """Handle an authenticated AUDIO or AUDIO_REDUNDANT packet (nearly every one).

        Parsed to fields, not to an :class:`AudioPacket`: the event is the only
        object a received frame needs.
        """
        try:
            seq, timestamp, payload, redundant, offset = parse_audio_fields(data)
        except DecodeError:
            self._counts["malformed"] += 1
            return
        self._counts["audio_received"] += 1
        if self._sequence.update(seq):
            self._jitter.update(timestamp, now)
        if self._highest_seq is None:
            self._highest_seq = seq
        else:
            delta = serial_delta(seq - self._highest_seq, SEQUENCE_MODULUS)
            if delta > 0:
                self._highest_seq += delta
        if redundant is not None and offset != self._frame_samples:
            self._counts["redundant_discarded"] += 1
            redundant = None
        self._events.append(AudioReceived(seq, timestamp, payload, redundant))

    def _receive_pong(self, pong: PongPacket, now: float) -> None:
        sent = self._pings.get(pong.ping_id)
        if sent is None or sent[0] != pong.sent_at_us:
            self._counts["unmatched_pongs"] += 1
            return
        del self._pings[pong.ping_id]
        hold_s = pong.hold_us / MICROSECONDS_PER_SECOND
        rtt_s = max(0.0, now - sent[1] - hold_s)
        self._events.append(RttMeasured(rtt_s, sent[1], hold_s))

    def _receive_mute(self, packet: MutePacket) -> None:
        if self._peer_mute_change is not None:
            if serial_delta(packet.change - self._peer_mute_change, SEQUENCE_MODULUS) <= 0:
                return  # a copy, or older than what we applied
        self._peer_mute_change = packet.change
        if packet.muted != self._peer_muted:
            self._peer_muted = packet.muted
            self._events.append(PeerMuted(packet.muted))

    # sending

    def _announce_mute(self, now: float) -> None:
        packet = MutePacket(self._muted, self._mute_changes)
        self._scheduled = [s for s in self._scheduled if not isinstance(s.packet, MutePacket)]
        self._scheduled += [
            _Scheduled(now + i * MUTE_REPEAT_INTERVAL_S, packet) for i in range(MUTE_REPEATS)
        ]
        self._scheduled.sort(key=lambda s: s.due)

    def _send_ping(self, now: float) -> None:
        ping = PingPacket(self._ping_id, _microseconds(now))
        self._pings[ping.ping_id] = (ping.sent_at_us, now)
        while len(self._pings) > MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        self._ping_id = (self._ping_id + 1) & U32_MAX
        self._outgoing.append(ping)

    def _make_report(self) -> ReceiverReport:
        expected, received = self._sequence.expected, self._sequence.received
        interval_expected = expected - self._reported_expected
        interval_lost = interval_expected - (received - self._reported_received)
        self._reported_expected, self._reported_received = expected, received
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(
                FRACTION_LOST_SCALE - 1, interval_lost * FRACTION_LOST_SCALE // interval_expected
            )
        jitter_units = round(self._jitter.jitter_ms * SAMPLE_RATE_HZ / 1000)
        return ReceiverReport(
            cumulative_lost=min(self._sequence.lost, U32_MAX),
            highest_seq=(self._highest_seq or 0) & U32_MAX,
            jitter=min(jitter_units, U32_MAX),
            fraction_lost=fraction,
        )

    @staticmethod
    def _next_time(scheduled: float, interval: float, now: float) -> float:
        """The next tick after ``scheduled`` on its grid; after a stall, ``now`` + interval."""
        following = scheduled + interval
        return following if following > now else now + interval

    # adaptation

    def _adapt(self, report: ReceiverReport, now: float) -> None:
        self._recent_loss.append(report.loss_fraction)
        if report.fraction_lost > 0:
            self._last_loss_at = now
        if self._last_loss_at is None:
            # no loss yet: the first report ends the startup plan
            self._set_adaptation(self._compute_adaptation(loss_percent=0.0, lossy=False))
            return
        loss_percent = 100.0 * sum(self._recent_loss) / len(self._recent_loss)
        self._set_adaptation(self._compute_adaptation(loss_percent, lossy=True))

    def _startup_adaptation(self) -> SenderAdaptation:
        """The encoder settings before any report: FEC planned for some loss.

        Before the peer's first report nothing is known about the path, and
        a frame lost then is concealed unless its FEC rides in the next
        packet; the first report (a second in) puts the plan on measurement.
        Redundancy (encoders without FEC) is not started blind: it halves the
        bitrate of every frame.
        """
        calm = self._compute_adaptation(loss_percent=0.0, lossy=False)
        if not self._fec or calm.redundancy:
            return calm
        planned = max(calm.expected_loss_percent, STARTUP_EXPECTED_LOSS_PERCENT)
        return SenderAdaptation(False, planned, calm.frame_bytes, self._complexity)

    def _compute_adaptation(self, loss_percent: float, lossy: bool) -> SenderAdaptation:
        """The encoder settings for a recent loss (``lossy``: loss within the hold time)."""
        if self._redundancy_setting is None:
            redundancy = lossy and not self._fec
            redundancy = redundancy and self._redundant_frame_bytes >= MIN_REDUNDANT_FRAME_BYTES
        else:
            redundancy = self._redundancy_setting
        if redundancy:
            return SenderAdaptation(
                True, self._base_loss, self._redundant_frame_bytes, self._complexity
            )
        planned = max(1, math.ceil(loss_percent)) if lossy and self._fec else 0
        expected_loss = min(100, max(self._base_loss, planned))
        complexity = self._complexity if lossy or expected_loss else self._calm_complexity
        return SenderAdaptation(False, expected_loss, self._single_frame_bytes, complexity)

    def _set_adaptation(self, adaptation: SenderAdaptation) -> None:
        if adaptation != self._adaptation:
            self._adaptation = adaptation
            self._events.append(AdaptationChanged(adaptation))
