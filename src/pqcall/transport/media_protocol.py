"""The sans-I/O media protocol of one side of a call.

Scope: :class:`MediaProtocol` (``docs/protocol.md#media-packets``), which
owns both directions' SFrame contexts, numbers the audio, schedules pings
and receiver reports, signals mute, flags (voice disguised) and hang-up,
watches for a silent peer, and tells its wrapper how to adapt the encoder
to the loss the peer reports. No socket, clock or codec here: bytes and
``now`` (seconds, monotonic) in, bytes and events out, as aioquic's
``QuicConnection``.

Every datagram is one SFrame payload (RFC 9605, ``crypto/sframe_context.py``)
holding one audio packet or control packets back to back
(:mod:`pqcall.transport.media_packets`): encrypted, authenticated with the
constant metadata :data:`MEDIA_METADATA`, replay-checked, and padded to the
size of an audio packet. Control packets due together share one datagram.

Calling contract::

    protocol = MediaProtocol(keys, ProtocolSettings(frame_ms=20, frame_bytes=99, ...))
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

Beside it: its settings (``media_config``), events and counters (``media_events``), the
encoder's adaptation to the peer's reports and bursts (``adaptation``), the figures of our
reports (``reception``), pings and pongs (``round_trip``), whether the peer is heard
(``liveness``: "reconnecting", then timeout).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

from pqcall.crypto.handshake import CallKeys, Role
from pqcall.crypto.sframe import CipherSuite
from pqcall.crypto.sframe_context import SFrameReceiver, SFrameSender
from pqcall.exceptions import DecodeError, LocalProtocolError
from pqcall.transport.adaptation import MAX_COMPLEXITY, AdaptationPolicy, SenderAdaptation
from pqcall.transport.audio_framer import AudioFramer, bundle
from pqcall.transport.liveness import PeerLiveness
from pqcall.transport.media_config import ProtocolSettings
from pqcall.transport.media_events import (
    AdaptationChanged,
    AudioReceived,
    MediaEvent,
    MediaProtocolStats,
    MediaState,
    MediaTimedOut,
    PeerHungUp,
    PeerMuted,
    ReportReceived,
)
from pqcall.transport.media_packets import (
    AUDIO_HEADER_LENGTH,
    AUDIO_TYPES,
    SAMPLE_RATE_HZ,
    SEQUENCE_MODULUS,
    TIMESTAMP_MODULUS,
    VOICE_DISGUISED,
    AudioPacket,
    FlagsPacket,
    HangupPacket,
    HangupReason,
    MediaPacket,
    MutePacket,
    PacketType,
    PingPacket,
    PongPacket,
    ReceiverReport,
    parse_audio_fields,
    parse_control_packets,
)
from pqcall.transport.reception import ReceptionReporter
from pqcall.transport.round_trip import MAX_PONG_HOLD_S, RoundTrip
from pqcall.transport.signalled import Signalled

__all__ = [
    "CALLEE_SENDER_ID",
    "CALLER_SENDER_ID",
    "MAX_PONG_HOLD_S",
    "MEDIA_CIPHER_SUITE",
    "MEDIA_METADATA",
    "MediaProtocol",
]

# specification constants (docs/protocol.md#media-packets)
MEDIA_METADATA: Final = b"pqcall v1 media"
"""SFrame metadata (authenticated, not sent) of every media packet."""
MEDIA_CIPHER_SUITE: Final = CipherSuite.AES_256_GCM_SHA512_128
CALLER_SENDER_ID: Final = 0
"""SFrame sender id of the caller's direction."""
CALLEE_SENDER_ID: Final = 1
"""SFrame sender id of the callee's direction."""

# implementation constants
MUTE_REPEATS: Final = 3
"""Copies of a mute change, against loss."""
MUTE_REPEAT_INTERVAL_S: Final = 0.1
FLAGS_REPEATS_AT_S: Final = (0.0, 0.1, 0.2, 1.0, 3.0)
"""When copies of a flags change go, after it: late ones for a peer that started late."""
HANGUP_REPEATS: Final = 5
"""Copies of a hang-up: all five lost at 20 % random loss is 1 in 3000."""
HANGUP_REPEAT_INTERVAL_S: Final = 0.02
"""Spacing of the hang-up copies (one 20 ms frame), so a short burst misses some."""


@dataclass(frozen=True, slots=True)
class _Scheduled:
    due: float  # `now` at which to queue the packet
    packet: MutePacket | HangupPacket | FlagsPacket


class MediaProtocol:
    """The media channel of one side of a call (sans-I/O).

    Args:
        keys: the call's keys; ``keys.role`` picks the SFrame sender ids
            (:data:`CALLER_SENDER_ID` for the caller's direction).
        settings: the encoder's frame and budget, padding, redundancy, timers.
        first_seq: sequence number of the first audio packet.
        first_timestamp: timestamp of the first audio packet.

    Raises:
        LocalProtocolError: a setting is out of range, or redundancy is
            forced on while two frames cannot fit the packet size.
    """

    # fixed attributes, used on every packet: slots make each read a direct load
    # (CPython 3.11 stops sharing an instance dict's keys at 30 attributes, and reads
    # from an unshared dict are hashed lookups; the media path measured 5 % slower)
    __slots__ = (
        "_counts",
        "_events",
        "_flags",
        "_frame_samples",
        "_framer",
        "_liveness",
        "_mute",
        "_next_ping_at",
        "_next_report_at",
        "_outgoing",
        "_packet_bytes",
        "_pad_to",
        "_ping_interval",
        "_policy",
        "_receiver",
        "_reception",
        "_report_interval",
        "_round_trip",
        "_scheduled",
        "_sender",
        "_seq",
        "_state",
        "_timestamp",
    )

    def __init__(
        self,
        keys: CallKeys,
        settings: ProtocolSettings,
        *,
        first_seq: int = 0,
        first_timestamp: int = 0,
    ) -> None:
        frame_ms, frame_bytes, pad_to = settings.frame_ms, settings.frame_bytes, settings.pad_to
        if frame_ms <= 0 or frame_bytes <= 0 or (pad_to is not None and pad_to < 0):
            raise LocalProtocolError("frame duration and size must be positive, pad_to >= 0")
        intervals = (settings.ping_interval_s, settings.report_interval_s, settings.media_timeout_s)
        if min(intervals) <= 0:
            raise LocalProtocolError("intervals and the media timeout must be positive")
        if not 0 <= settings.base_expected_loss_percent <= 100:
            raise LocalProtocolError("expected loss must be 0-100 %")
        if not 0 <= settings.complexity <= MAX_COMPLEXITY:
            raise LocalProtocolError(f"complexity must be 0-{MAX_COMPLEXITY}")
        if not 0 <= first_seq < SEQUENCE_MODULUS or not 0 <= first_timestamp < TIMESTAMP_MODULUS:
            raise LocalProtocolError("first sequence number or timestamp out of range")
        our_id, their_id = (
            (CALLER_SENDER_ID, CALLEE_SENDER_ID)
            if keys.role is Role.CALLER
            else (CALLEE_SENDER_ID, CALLER_SENDER_ID)
        )
        self._pad_to = pad_to = settings.packet_pad_to  # the configured padding multiple
        self._sender = SFrameSender(MEDIA_CIPHER_SUITE, keys.send_key, our_id, pad_to=pad_to)
        self._receiver = SFrameReceiver(MEDIA_CIPHER_SUITE, keys.receive_key, their_id)
        self._frame_samples = SAMPLE_RATE_HZ * frame_ms // 1000  # timestamp step per frame
        # the constant packet size: a whole number of padding multiples around one frame
        if pad_to:
            multiples = max(1, (AUDIO_HEADER_LENGTH + frame_bytes) // pad_to)
            self._packet_bytes = multiples * pad_to
        else:
            self._packet_bytes = AUDIO_HEADER_LENGTH + frame_bytes
        self._policy = AdaptationPolicy(  # the encoder's answer to reported loss
            frame_bytes=frame_bytes,
            packet_bytes=self._packet_bytes,
            redundancy=settings.redundancy,
            fec=settings.fec,
            base_expected_loss_percent=settings.base_expected_loss_percent,
            complexity=settings.complexity,
            backup_bytes=settings.backup_bytes,
            frame_ms=frame_ms,
        )
        self._ping_interval = settings.ping_interval_s
        self._report_interval = settings.report_interval_s
        self._state = MediaState.AWAITING_START
        self._events: deque[MediaEvent] = deque()  # for next_event
        self._outgoing: list[MediaPacket] = []  # for datagrams_to_send
        self._scheduled: list[_Scheduled] = []  # mute and hang-up copies, by due time
        # our audio
        self._seq = first_seq  # of the next audio packet
        self._timestamp = first_timestamp  # of the next audio packet
        self._framer = AudioFramer(self._frame_samples, self._packet_bytes)  # our packets
        # pings and reports
        self._next_ping_at = 0.0
        self._next_report_at = 0.0
        self._round_trip = RoundTrip()  # our pings, their pongs, the pongs we owe
        # mute
        self._mute = Signalled()  # MUTE: 1 muted, ours and theirs
        self._flags = Signalled()  # FLAGS: bits, ours and theirs
        self._reception = ReceptionReporter()  # their audio, for our reports
        self._liveness = PeerLiveness(settings.media_timeout_s)  # silent, then unreachable
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
        return self._policy.adaptation

    @property
    def packet_bytes(self) -> int:
        """Size every audio packet is padded to, before SFrame (bytes)."""
        return self._packet_bytes

    @property
    def is_muted(self) -> bool:
        """Whether we told the peer we are muted."""
        return bool(self._mute.ours)

    @property
    def is_peer_muted(self) -> bool:
        """Whether the peer said it is muted."""
        return bool(self._mute.peer)

    @property
    def is_voice_disguised(self) -> bool:
        """Whether we told the peer our voice is disguised (FLAGS)."""
        return bool(self._flags.ours & VOICE_DISGUISED)

    @property
    def is_peer_voice_disguised(self) -> bool:
        """Whether the peer said its voice is disguised (FLAGS)."""
        return bool(self._flags.peer & VOICE_DISGUISED)

    @property
    def liveness(self) -> PeerLiveness:
        """Whether the peer is heard: ``is_silent``, ``idle_s`` (the protocol drives it)."""
        return self._liveness

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
        self._liveness.start(now)
        self._next_ping_at = now
        self._next_report_at = now + self._report_interval
        if self._mute.ours:
            self._announce_mute(now)
        if self._flags.ours:
            self._announce_flags(now)
        self.handle_timer(now)

    def send_audio(self, payload: bytes, now: float, backup: bytes | None = None) -> AudioPacket:
        """Queue one encoded frame; the next frame's timestamp is one frame later.

        Earlier frames ride along as the mode says (:mod:`~pqcall.transport.audio_framer`;
        ``backup``: this frame's low-rate copy, for the backup mode).

        Returns:
            The packet queued (its ``seq`` and ``timestamp``).

        Raises:
            LocalProtocolError: the protocol is not active, or ``payload`` is empty.
        """
        if self._state is not MediaState.ACTIVE:
            raise LocalProtocolError(f"cannot send audio while {self._state.value}")
        if not payload:
            raise LocalProtocolError("audio payload must not be empty")
        adaptation = self._policy.adaptation
        packet = self._framer.frame(self._seq, self._timestamp, bytes(payload), adaptation, backup)
        if not self._framer.holding:  # a pair's first frame waits for the second
            self._outgoing.append(packet)
        self._policy.audio_sent(self._seq, now)
        self._seq = (self._seq + 1) % SEQUENCE_MODULUS
        self._timestamp = (self._timestamp + self._frame_samples) % TIMESTAMP_MODULUS
        return packet

    def set_muted(self, muted: bool, now: float) -> None:
        """Tell the peer our microphone is muted (or not); sent a few times, against loss.

        Muting does not stop the audio: keep sending frames (of silence), so
        the traffic does not change.
        """
        if self._state in (MediaState.HANGING_UP, MediaState.ENDED):
            return
        if self._mute.set(int(muted)) and self._state is MediaState.ACTIVE:
            self._announce_mute(now)

    def set_voice_disguised(self, disguised: bool, now: float) -> None:
        """Tell the peer our voice is disguised (or no longer): FLAGS, alone in a datagram.

        Before :meth:`start`, it goes at the start; never set, nothing is sent.
        """
        if self._state in (MediaState.HANGING_UP, MediaState.ENDED):
            return
        ours = self._flags.ours
        flags = ours | VOICE_DISGUISED if disguised else ours & ~VOICE_DISGUISED
        if self._flags.set(flags) and self._state is MediaState.ACTIVE:
            self._announce_flags(now)

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
        if (back := self._liveness.heard(now)) is not None:
            self._events.append(back)
        if payload and payload[0] in AUDIO_TYPES:  # nearly every packet
            self._receive_audio(payload, now)
            return
        try:
            packets = parse_control_packets(payload)
        except DecodeError:
            self._counts["malformed"] += 1
            return
        for packet in packets:
            if self._policy.take_bursts(packet):  # not counted: it rides with a report
                continue
            self._counts["control_received"] += 1
            if isinstance(packet, PingPacket):
                self._round_trip.ping_received(packet, now)
            elif isinstance(packet, PongPacket):
                self._receive_pong(packet, now)
            elif isinstance(packet, ReceiverReport):
                self._events.append(ReportReceived(packet))
                if self._policy.report_received(packet, now):
                    self._adapted()
            elif isinstance(packet, MutePacket):
                self._receive_mute(packet)
            elif isinstance(packet, FlagsPacket):
                self._flags.received(packet.flags, packet.change)
            else:
                self._state = MediaState.ENDED
                self._scheduled.clear()
                self._round_trip.clear()
                self._events.append(PeerHungUp(packet.reason))
                return

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The protected datagrams queued since the last call: audio, then control.

        Control packets due together share a datagram; pongs wait for the
        next one (at most :data:`~pqcall.transport.round_trip.MAX_PONG_HOLD_S`) and take
        their hold time from ``now``, so call this just before sending.
        """
        pong_due_at = self._round_trip.pong_due_at
        pongs_due = pong_due_at is not None and now >= pong_due_at
        if not self._outgoing and not pongs_due:
            return []  # after nearly every received datagram
        datagrams = []
        control: list[bytes] = []
        for packet in self._outgoing:
            if isinstance(packet, AudioPacket):
                self._counts["audio_sent"] += 1
                self._counts["redundant_sent"] += packet.redundant is not None
                datagrams.append(self._sender.protect(packet.serialize(), MEDIA_METADATA, now=now))
            elif isinstance(packet, FlagsPacket):  # alone: an older peer drops the datagram
                self._counts["control_sent"] += 1
                datagrams.append(self._sender.protect(packet.serialize(), MEDIA_METADATA, now=now))
            elif (payload := packet.serialize()) not in control:
                control.append(payload)  # a repeat due twice at once goes once
        self._outgoing.clear()
        if control or pongs_due:
            control += [pong.serialize() for pong in self._round_trip.pongs(now)]
            self._counts["control_sent"] += len(control)
            datagrams += [
                self._sender.protect(payload, MEDIA_METADATA, now=now)
                for payload in bundle(
                    control, self._policy.adaptation.packet_bytes or self._packet_bytes
                )
            ]
        return datagrams

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
                self._liveness.get_timer(),
            )
            hold_due = self._policy.get_timer()
            if hold_due is not None:
                active_due = min(active_due, hold_due)
            pong_due_at = self._round_trip.pong_due_at
            if pong_due_at is not None:
                active_due = min(active_due, pong_due_at)
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
        """Do what is due at ``now``: pings, reports, repeats, silence and timeout, adaptation."""
        self._receiver.handle_timer(now)
        while self._scheduled and self._scheduled[0].due <= now:
            self._outgoing.append(self._scheduled.pop(0).packet)
        if self._state is MediaState.HANGING_UP and not self._scheduled:
            self._state = MediaState.ENDED
        if self._state is not MediaState.ACTIVE:
            return
        if (liveness := self._liveness.handle_timer(now)) is not None:
            self._events.append(liveness)
            if isinstance(liveness, MediaTimedOut):
                self._state = MediaState.ENDED
                self._scheduled.clear()
                return
        if now >= self._next_ping_at:
            self._send_ping(now)
            self._next_ping_at = self._next_time(self._next_ping_at, self._ping_interval, now)
        if now >= self._next_report_at:
            self._outgoing.extend(self._reception.reports(now))  # bursts, then the report
            self._next_report_at = self._next_time(self._next_report_at, self._report_interval, now)
        if self._policy.handle_timer(now):
            self._adapted()

    # receiving

    def _receive_audio(self, data: bytes, now: float) -> None:
        """Handle an authenticated AUDIO or AUDIO_REDUNDANT packet (nearly every one).

        Parsed to fields, not to an :class:`AudioPacket`: the event is the only
        object a received frame needs.
        """
        try:
            seq, timestamp, payload, redundant, offset, older = parse_audio_fields(data)
        except DecodeError:
            self._counts["malformed"] += 1
            return
        self._counts["audio_received"] += 1
        if redundant is not None and data[0] == PacketType.AUDIO_PAIR:  # frames seq - 1 and seq
            first = ((seq - 1) % SEQUENCE_MODULUS, (timestamp - offset) % TIMESTAMP_MODULUS)
            self._reception.update(*first, now)
            self._events.append(AudioReceived(*first, redundant, None, ()))
            redundant = None
        self._reception.update(seq, timestamp, now)
        if redundant is not None and offset != self._frame_samples:
            self._counts["redundant_discarded"] += 1
            redundant, older = None, ()
        self._events.append(AudioReceived(seq, timestamp, payload, redundant, older))

    def _receive_pong(self, pong: PongPacket, now: float) -> None:
        measured = self._round_trip.pong_received(pong, now)
        if measured is None:
            self._counts["unmatched_pongs"] += 1
            return
        self._events.append(measured)
        if self._policy.rtt_measured(measured.rtt_s, now):
            self._adapted()

    def _adapted(self) -> None:
        """Announce the policy's new mode; a bandwidth rung pads every packet to its size."""
        if self._pad_to:
            self._sender.pad_to = self._policy.adaptation.packet_bytes or self._pad_to
        self._events.append(AdaptationChanged(self._policy.adaptation))

    def _receive_mute(self, packet: MutePacket) -> None:
        if self._mute.received(int(packet.muted), packet.change):
            self._events.append(PeerMuted(packet.muted))

    # sending

    def _announce_mute(self, now: float) -> None:
        packet = MutePacket(bool(self._mute.ours), self._mute.changes)
        self._scheduled = [s for s in self._scheduled if not isinstance(s.packet, MutePacket)]
        self._scheduled += [
            _Scheduled(now + i * MUTE_REPEAT_INTERVAL_S, packet) for i in range(MUTE_REPEATS)
        ]
        self._scheduled.sort(key=lambda s: s.due)

    def _announce_flags(self, now: float) -> None:
        packet = FlagsPacket(self._flags.ours, self._flags.changes)
        self._scheduled = [s for s in self._scheduled if not isinstance(s.packet, FlagsPacket)]
        self._scheduled += [_Scheduled(now + after, packet) for after in FLAGS_REPEATS_AT_S]
        self._scheduled.sort(key=lambda s: s.due)

    def _send_ping(self, now: float) -> None:
        self._outgoing.append(self._round_trip.ping(now))

    @staticmethod
    def _next_time(scheduled: float, interval: float, now: float) -> float:
        """The next tick after ``scheduled`` on its grid; after a stall, ``now`` + interval."""
        following = scheduled + interval
        return following if following > now else now + interval
