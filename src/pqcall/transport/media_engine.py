"""One side of a call's media without I/O: the media protocol and the audio pipeline joined.

Scope: :class:`MediaEngine` owns a :class:`~pqcall.transport.media_protocol.MediaProtocol`
and a :class:`~pqcall.media.pipeline.MediaPipeline` and does what joins them:
received audio goes to the jitter buffer, round trips to the statistics,
:class:`~pqcall.transport.media_events.AdaptationChanged` to the encoder, and
each frame tick captures, encodes and queues our frame, then plays the peer's.
No socket, clock or event loop: ``now`` comes in, as in the protocol. The
other events (hang-up, timeout, mute, the peer silent or back) go on to the pump
(:mod:`pqcall.transport.session`), which owns the socket and the timers.

:class:`MediaSettings` is the one configuration of the media path: the codec's
``OpusSettings`` and the protocol's padding, redundancy and timers; the
protocol's :class:`~pqcall.transport.media_config.ProtocolSettings` is derived
from it, so each default is written once.

Calling contract (the pump's)::

    engine = MediaEngine(keys, settings)
    engine.start(now)
    pcm_out = engine.tick(source.read_frame(), now)   # every frame: send, then play
    engine.receive_datagram(datagram, now)            # every datagram from the peer
    engine.handle_timer(now)                          # when get_timer() comes
    # after each of the calls above:
    for datagram in engine.datagrams_to_send(now): send it
    while (event := engine.next_event()) is not None: handle it (ends, mute)
    # and re-arm the timer at engine.get_timer()
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from pqcall.crypto.handshake import CallKeys
from pqcall.media.codec import OpusSettings, Pcm
from pqcall.media.jitter import JitterBufferStats
from pqcall.media.pipeline import AudioProcessing, MediaPipeline, MediaTrace
from pqcall.media.stats import CallStatsSnapshot
from pqcall.transport.adaptation import SenderAdaptation
from pqcall.transport.media_config import (
    DEFAULT_PING_INTERVAL_S,
    DEFAULT_REPORT_INTERVAL_S,
    MEDIA_TIMEOUT_S,
    ProtocolSettings,
)
from pqcall.transport.media_events import (
    AdaptationChanged,
    AudioReceived,
    MediaEvent,
    MediaProtocolStats,
    RttMeasured,
)
from pqcall.transport.media_packets import HangupReason
from pqcall.transport.media_protocol import MediaProtocol

__all__ = ["MediaEngine", "MediaSettings"]


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """How a call's media runs: the codec, and the protocol's padding, redundancy and timers."""

    opus: OpusSettings = field(default_factory=OpusSettings)
    """Encoder settings; ``bitrate_bps`` is a ceiling (see the adaptation)."""
    pad_to: int | None = None
    """SFrame padding multiple: every packet has the same size (0: no padding).

    None: one audio packet, the 7-byte media header and one frame at the
    configured bitrate (``ProtocolSettings.packet_pad_to``).
    """
    redundancy: bool | None = None
    """None: automatic (on when loss is reported and the encoder has no FEC); True/False force."""
    backup_bytes: int = 0
    """Opus bytes of each backup copy when the peer reports bursts (0, the default: never;
    :data:`DEFAULT_BACKUP_BYTES` turns it on; decision 0220)."""
    ping_interval_s: float = DEFAULT_PING_INTERVAL_S
    """Seconds between RTT pings."""
    report_interval_s: float = DEFAULT_REPORT_INTERVAL_S
    """Seconds between receiver reports."""
    media_timeout_s: float = MEDIA_TIMEOUT_S
    """Seconds without an authenticated packet from the peer that end the call."""
    time_stretch: bool = False
    """Play received audio faster or slower to steer the jitter buffer (decision 0141)."""

    @property
    def protocol(self) -> ProtocolSettings:
        """The media protocol's settings: the encoder's frame and budget, and ours."""
        opus = self.opus
        return ProtocolSettings(
            frame_ms=opus.frame_ms,
            frame_bytes=opus.max_packet_bytes,
            fec=opus.fec,
            base_expected_loss_percent=opus.expected_loss_percent,
            complexity=opus.complexity,
            pad_to=self.pad_to,
            redundancy=self.redundancy,
            backup_bytes=self.backup_bytes,
            ping_interval_s=self.ping_interval_s,
            report_interval_s=self.report_interval_s,
            media_timeout_s=self.media_timeout_s,
        )

    @property
    def packet_pad_to(self) -> int:
        """The padding multiple in use: ``pad_to``, or one audio packet when it is None."""
        return self.protocol.packet_pad_to


class MediaEngine:
    """The media of one side of a call, sans-I/O: protocol + pipeline.

    Args:
        keys: the call's keys from the handshake.
        settings: codec, padding, redundancy and timers.
        processing: optional stage around the codec (echo cancellation...).
        trace: optional observer of capture and playout times.
    """

    __slots__ = ("_events", "_frame_ms", "_pipeline", "_protocol", "_trace")

    def __init__(
        self,
        keys: CallKeys,
        settings: MediaSettings | None = None,
        *,
        processing: AudioProcessing | None = None,
        trace: MediaTrace | None = None,
    ) -> None:
        settings = MediaSettings() if settings is None else settings
        opus = settings.opus
        self._frame_ms = opus.frame_ms
        self._protocol = MediaProtocol(keys, settings.protocol)
        adaptation = self._protocol.adaptation
        encoder = replace(
            opus,
            bitrate_bps=adaptation.bitrate_bps(opus.frame_ms),
            expected_loss_percent=adaptation.expected_loss_percent,
            complexity=adaptation.complexity,
        )
        self._pipeline = MediaPipeline(
            encoder, processing=processing, trace=trace, time_stretch=settings.time_stretch
        )
        self._trace = trace  # latency observer
        self._events: deque[MediaEvent] = deque()  # for the pump

    # state

    @property
    def protocol(self) -> MediaProtocol:
        """The media protocol (read its state; drive it through the engine)."""
        return self._protocol

    @property
    def pipeline(self) -> MediaPipeline:
        """The audio pipeline (read its streams; drive it through the engine)."""
        return self._pipeline

    @property
    def frame_samples(self) -> int:
        """Samples in one frame, captured or played."""
        return self._pipeline.frame_samples

    @property
    def adaptation(self) -> SenderAdaptation:
        """How our encoder runs now (redundancy, expected loss, bytes per frame)."""
        return self._protocol.adaptation

    @property
    def protocol_stats(self) -> MediaProtocolStats:
        """The media protocol's counters (SFrame drops by reason, packets by kind)."""
        return self._protocol.stats

    @property
    def jitter_stats(self) -> JitterBufferStats:
        """The peer stream's jitter-buffer counters."""
        return self._pipeline.stream().jitter_stats

    @property
    def packets_rejected(self) -> int:
        """Datagrams the protocol dropped, and packets the decoder refused."""
        return self._protocol.dropped + self._pipeline.decode_errors

    def snapshot(self, now: float, *, packets_rejected: int = 0) -> CallStatsSnapshot:
        """Live call statistics; ``packets_rejected`` adds the pump's own drops.

        ``reconnecting`` and ``peer_silent_s`` come from the protocol's liveness.
        """
        rejected = self.packets_rejected + packets_rejected
        adaptation = self._protocol.adaptation
        liveness = self._protocol.liveness
        return replace(
            self._pipeline.snapshot(now, packets_rejected=rejected),
            encoder_mode=adaptation.mode.value,
            planned_loss_percent=adaptation.expected_loss_percent,
            encoder_kbps=adaptation.bitrate_bps(self._frame_ms) / 1000.0,
            frames_per_packet=adaptation.frames_per_packet,
            reconnecting=liveness.is_silent,
            peer_silent_s=liveness.idle_s(now) if liveness.is_silent else 0.0,
        )

    # API

    def start(self, now: float) -> None:
        """Start the call: sending, playout, pings and reports from now on."""
        self._protocol.start(now)
        self._handle_events(now)

    def tick(self, pcm: Pcm | None, now: float) -> Pcm:
        """One frame: encode and queue ``pcm`` (None: silence), then play the peer's next frame."""
        self.send_frame(pcm, now)
        return self.play_frame(now)

    def send_frame(self, pcm: Pcm | None, now: float) -> None:
        """Encode and queue one captured frame (None: the source had none, silence)."""
        payload = self._pipeline.capture(pcm, now)
        packet = self._protocol.send_audio(payload, now, self._pipeline.backup_frame)
        if self._trace is not None:
            self._trace.frame_captured(packet.timestamp, now)

    def has_next_frame(self) -> bool:
        """Whether the peer's next frame is here (a late tick may wait for it; see FrameClock)."""
        return self._pipeline.has_next_frame()

    def play_frame(self, now: float) -> Pcm:
        """The peer's next frame for the sink (decoded, recovered, concealed or silence)."""
        return self._pipeline.play(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        """Open and handle one datagram from the peer; never raises on its content."""
        self._protocol.receive_datagram(data, now)
        self._handle_events(now, size=len(data))

    def set_muted(self, muted: bool, now: float) -> None:
        """Send silence instead of the captured audio, and tell the peer."""
        self._pipeline.set_muted(muted)
        self._protocol.set_muted(muted, now)
        self._handle_events(now)

    def set_voice_disguised(self, disguised: bool, now: float) -> None:
        """Tell the peer our voice is disguised (the pipeline's stage does the disguising)."""
        self._protocol.set_voice_disguised(disguised, now)

    def hangup(self, now: float, reason: int = HangupReason.NORMAL) -> None:
        """Stop sending audio and send the hang-up copies (see ``MediaProtocol.hangup``)."""
        self._protocol.hangup(now, reason)
        self._handle_events(now)

    def handle_timer(self, now: float) -> None:
        """Do what is due at ``now`` (see ``MediaProtocol.handle_timer``)."""
        self._protocol.handle_timer(now)
        self._handle_events(now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None."""
        return self._protocol.get_timer()

    @property
    def is_ended(self) -> bool:
        """Whether the protocol ended (hung up by either side, or timed out)."""
        return self._protocol.is_ended

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """The protected datagrams to send now (counted as sent)."""
        datagrams = self._protocol.datagrams_to_send(now)
        for datagram in datagrams:
            self._pipeline.record_sent(len(datagram), now)
        return datagrams

    def next_event(self) -> MediaEvent | None:
        """The oldest event for the pump (hang-up, timeout, silence, mute, report), or None.

        Audio, round trips and adaptation changes are handled on the way.
        """
        return self._events.popleft() if self._events else None

    def _handle_events(self, now: float, size: int = 0) -> None:
        """Act on the protocol's events; keep the others for the pump."""
        protocol = self._protocol
        while (event := protocol.next_event()) is not None:
            if isinstance(event, AudioReceived):
                self._pipeline.receive(
                    event.seq,
                    event.timestamp,
                    event.payload,
                    now,
                    redundant=event.redundant,
                    older=event.older,
                    size=size,
                )
            elif isinstance(event, RttMeasured):
                self._pipeline.record_rtt(event.ping_sent_at, now, event.hold_s)
            elif isinstance(event, AdaptationChanged):
                self._adapt(event.adaptation)
            else:
                self._events.append(event)

    def _adapt(self, adaptation: SenderAdaptation) -> None:
        self._pipeline.configure_encoder(
            bitrate_bps=adaptation.bitrate_bps(self._frame_ms),
            expected_loss_percent=adaptation.expected_loss_percent,
            complexity=adaptation.complexity,
        )
        self._pipeline.configure_backup(adaptation.backup_bytes)
