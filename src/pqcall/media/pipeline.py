"""The audio pipeline of one side of a call: capture to encoded frame, packets to playout.

Scope: everything between the sound devices and the media protocol, with no
socket, clock or event loop (``now`` is passed in)::

    capture(pcm, now)   pcm → processing.process_capture → Opus encode → frame bytes
    receive(..., now)   a received frame → that sender's ReceiveStream (jitter buffer, stats)
    play(now)           each stream: jitter buffer decision → decode / FEC / concealment;
                        the streams mixed → processing.observe_playout → pcm for the sink

Receiving is one :class:`ReceiveStream` per sender, keyed by a stream id (a
1:1 call has one, :data:`PEER_STREAM`; a group call adds one per sender with
:meth:`MediaPipeline.add_stream`), and playout mixes them. An
:class:`AudioProcessing` stage (an echo canceller, say) sees each captured
frame before it is encoded and each mixed frame as it goes to the sink (the
far-end signal); the default does nothing.

Calling contract, once per frame tick (``MediaEngine`` does this)::

    frame = pipeline.capture(source.read_frame(), now)   # then protect and send it
    pipeline.receive(seq, timestamp, payload, now, redundant=..., size=...)  # per packet
    sink.write_frame(pipeline.play(now))

Nothing a peer sends raises here: a packet the decoder refuses is concealed and
counted (:attr:`MediaPipeline.decode_errors`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import replace
from typing import Final, Protocol

import numpy as np

from pqcall.exceptions import LocalProtocolError
from pqcall.media.codec import (
    AudioDecoder,
    Bandwidth,
    OpusDecoder,
    OpusEncoder,
    OpusSettings,
    Pcm,
    has_fec,
    silence,
)
from pqcall.media.jitter import JitterBuffer
from pqcall.media.mixer import Mixer
from pqcall.media.playout import JitterBufferStats, PlayoutAction, PlayoutDecision
from pqcall.media.stats import CallStats, CallStatsSnapshot
from pqcall.media.time_stretch import TimeStretcher

__all__ = [
    "PEER_STREAM",
    "AudioProcessing",
    "MediaPipeline",
    "MediaTrace",
    "NoProcessing",
    "ReceiveStream",
    "StreamId",
    "mix",
]

StreamId = Hashable
"""Names one incoming stream (one sender)."""
PEER_STREAM: Final = 0
"""The stream id of the peer in a 1:1 call."""
MAX_TRACKED_TIMESTAMPS: Final = 512
"""Sequence numbers whose timestamps are kept for :class:`MediaTrace`."""
FULL_SCALE: Final = 32_768.0
SEQUENCE_MODULUS: Final = 1 << 16
TIMESTAMP_MODULUS: Final = 1 << 32
_AUDIBLE: Final = (PlayoutAction.PLAY, PlayoutAction.FEC, PlayoutAction.REDUNDANT)
MAX_POPS_PER_TICK: Final = 4
"""Time stretching: jitter-buffer pops one tick may take to fill a frame of output."""
QUIET_RMS: Final = 0.01
"""A decoded frame below this RMS (-40 dBFS) is quiet: the jitter buffer may discard it to
shrink (``JitterBuffer.shrink_quiet``); about a quarter of the corpus's frames are."""


class AudioProcessing(Protocol):
    """A processing stage around the codec (echo cancellation, noise suppression...)."""

    def process_capture(self, pcm: Pcm) -> Pcm:
        """Return the frame to encode in place of the captured ``pcm`` (same length)."""
        ...

    def observe_playout(self, pcm: Pcm) -> None:
        """See the mixed far-end frame that goes to the sink now (an echo canceller's reference)."""
        ...


class NoProcessing:
    """The default :class:`AudioProcessing`: captured audio unchanged, playout unobserved."""

    def process_capture(self, pcm: Pcm) -> Pcm:
        return pcm

    def observe_playout(self, pcm: Pcm) -> None:
        return None


class MediaTrace(Protocol):
    """Optional observer for latency measurement."""

    def frame_captured(self, timestamp: int, now: float) -> None:
        """Sender: the frame with this timestamp was complete at the source (the send tick)."""
        ...

    def frame_played(self, timestamp: int, now: float) -> None:
        """Receiver: a decoded frame with this sender timestamp went to the sink."""
        ...


class ReceiveStream:
    """One sender's audio: its jitter buffer, its decoder, its statistics.

    Args:
        frame_ms: frame duration of the sender's codec.
        decoder: the decoder (default: Opus).
        trace: optional observer of playout times (needs timestamps remembered).
        time_stretch: play decoded audio through a :class:`TimeStretcher` at the
            jitter buffer's ``playout_speed`` (decision 0141; needs libsonic).
    """

    __slots__ = (
        "_buffer",
        "_consumed",
        "_decoder",
        "_frame_samples",
        "_quiet_frames",
        "_starts",
        "_stats",
        "_stretch",
        "_timestamps",
        "_written",
        "decode_errors",
    )

    def __init__(
        self,
        frame_ms: int,
        decoder: AudioDecoder | None = None,
        *,
        trace: bool = False,
        time_stretch: bool = False,
    ) -> None:
        self._decoder = OpusDecoder(frame_ms) if decoder is None else decoder
        self._buffer = JitterBuffer(
            frame_ms, use_fec=True, has_fec=has_fec, time_stretch=time_stretch, quiet_shrink=True
        )
        self._stretch = TimeStretcher() if time_stretch else None
        self._written = 0  # samples written to the stretcher
        self._consumed = 0.0  # of those, played out (output samples times their speed)
        self._starts: deque[tuple[int, int]] = deque()  # (first sample written, timestamp)
        self._stats = CallStats(frame_ms)  # its arrivals, jitter, loss, RTT to it
        self._frame_samples = self._decoder.frame_samples
        self._quiet_frames = 0  # quiet frames played in a row, the last included
        # seq -> timestamp, oldest first, for the trace (None: no trace)
        self._timestamps: dict[int, int] | None = {} if trace else None
        self.decode_errors = 0  # packets the decoder refused (concealed instead)

    @property
    def stats(self) -> CallStats:
        """The stream's statistics (arrivals, jitter, loss, round trip)."""
        return self._stats

    @property
    def jitter_stats(self) -> JitterBufferStats:
        """The jitter buffer's counters."""
        return self._buffer.snapshot()

    def receive(
        self,
        seq: int,
        timestamp: int,
        payload: bytes,
        now: float,
        *,
        redundant: bytes | None = None,
        older: tuple[bytes, ...] = (),
        size: int = 0,
    ) -> None:
        """Take one received frame (``size``: its datagram's bytes, for the bitrate)."""
        self._stats.record_received(seq, timestamp, size, now)
        self._buffer.push(seq, timestamp, payload, now, redundant=redundant, older=older)
        if self._timestamps is not None:
            self._remember_timestamp(seq, timestamp)

    def has_next_frame(self) -> bool:
        """Whether the next frame slot has its frame (see ``JitterBuffer.has_next_frame``)."""
        return self._buffer.has_next_frame()

    def play(self, now: float) -> tuple[Pcm, int | None]:
        """Render the next frame slot; also the sender timestamp of an audible frame, or None."""
        if self._stretch is not None:
            return self._play_stretched(self._stretch, now)
        decision = self._buffer.pop(now)
        pcm = self._render(decision)
        pops = 1
        while decision.action is PlayoutAction.PLAY and _rms(pcm) < QUIET_RMS:
            # in a pause, the buffer may discard quiet frames it holds too many of
            self._quiet_frames += 1
            instead = None
            if pops < MAX_POPS_PER_TICK:
                instead = self._buffer.shrink_quiet(now, self._quiet_frames)
            if instead is None:
                break
            decision, pcm = instead, self._render(instead)
            pops += 1
        else:
            self._quiet_frames = 0
        timestamps = self._timestamps
        if timestamps is None or decision.seq is None or decision.action not in _AUDIBLE:
            return pcm, None
        return pcm, timestamps.get(decision.seq)

    def _play_stretched(self, stretch: TimeStretcher, now: float) -> tuple[Pcm, int | None]:
        """Pop and decode until the stretcher has a frame of output; the timestamp of the
        audible frame whose first sample goes out in this frame (None if none does)."""
        samples = self._frame_samples
        pops = 0
        while stretch.available_samples < samples and pops < MAX_POPS_PER_TICK:
            decision = self._buffer.pop(now)
            pcm = self._render(decision)
            extra = stretch.available_samples / samples  # decoded audio beyond this tick
            stretch.set_speed(self._buffer.playout_speed(now, extra))
            timestamps = self._timestamps
            if timestamps is not None and decision.seq is not None and decision.action in _AUDIBLE:
                timestamp = timestamps.get(decision.seq)
                if timestamp is not None:
                    self._starts.append((self._written, timestamp))
            stretch.write(pcm)
            self._written += len(pcm)
            pops += 1
        speed = stretch.speed
        out = stretch.read(samples)
        self._consumed = min(float(self._written), self._consumed + len(out) * speed)
        if len(out) < samples:  # the buffer gave too little (never more than a moment)
            out = np.concatenate([out, silence(samples - len(out))])
        played = None
        starts = self._starts
        while starts and starts[0][0] <= self._consumed:
            _, timestamp = starts.popleft()
            played = timestamp if played is None else played
        return out, played

    def _render(self, decision: PlayoutDecision) -> Pcm:
        """Decode a playout decision (docs in ``media/playout.py``); a bad packet is concealed."""
        action = decision.action
        try:
            if action is PlayoutAction.PLAY or action is PlayoutAction.REDUNDANT:
                return self._decoder.decode(decision.payload)
            if action is PlayoutAction.FEC:
                return self._decoder.decode_fec(decision.payload)
        except Exception:
            self.decode_errors += 1
            return self._decoder.conceal()
        if action is PlayoutAction.CONCEAL:
            return self._decoder.conceal()
        return silence(self._frame_samples)

    def _remember_timestamp(self, seq: int, timestamp: int) -> None:
        timestamps = self._timestamps
        assert timestamps is not None
        previous = (seq - 1) % SEQUENCE_MODULUS
        if previous not in timestamps:  # for a frame recovered from this packet
            timestamps[previous] = (timestamp - self._frame_samples) % TIMESTAMP_MODULUS
        timestamps.pop(seq, None)
        timestamps[seq] = timestamp
        while len(timestamps) > MAX_TRACKED_TIMESTAMPS:
            del timestamps[next(iter(timestamps))]


class MediaPipeline:
    """Capture → processing → encode, and receive streams → decode → mix → processing.

    Args:
        opus: the codec's settings (the encoder starts with them).
        processing: the stage around the codec (default: none).
        trace: optional observer of playout times.
        time_stretch: each receive stream plays at its jitter buffer's speed
            (:class:`ReceiveStream`; decision 0141). Off by default.

    Raises:
        CodecError: the settings are out of range.
    """

    __slots__ = (
        "_backup",
        "_encoder",
        "_fec",
        "_frame_ms",
        "_mixer",
        "_muted",
        "_played_pcm",
        "_processing",
        "_sent_pcm",
        "_stats",
        "_streams",
        "_time_stretch",
        "_trace",
        "backup_frame",
    )

    def __init__(
        self,
        opus: OpusSettings,
        *,
        processing: AudioProcessing | None = None,
        trace: MediaTrace | None = None,
        time_stretch: bool = False,
    ) -> None:
        self._frame_ms = opus.frame_ms
        self._time_stretch = time_stretch
        self._fec = opus.fec  # whether expected loss means anything to the encoder
        self._encoder = OpusEncoder(opus)
        self._backup: OpusEncoder | None = None  # low-rate copies, in the backup mode only
        self.backup_frame: bytes | None = None
        """The last captured frame's low-rate copy (None outside the backup mode)."""
        self._processing = processing  # None: no stage (the common case, no calls)
        self._trace = trace
        self._stats = CallStats(opus.frame_ms)  # what we send, and the levels
        self._streams: dict[StreamId, ReceiveStream] = {}
        self._mixer = Mixer()  # the group mix's limiter keeps its gain between frames
        self.add_stream(PEER_STREAM)
        self._muted = False  # we send silence
        self._played_pcm: Pcm | None = None  # last frame played, for the audio level
        self._sent_pcm: Pcm | None = None  # last frame sent, for the input level

    # configuration

    @property
    def frame_samples(self) -> int:
        """Samples in one frame, captured or played."""
        return self._encoder.frame_samples

    @property
    def is_muted(self) -> bool:
        """Whether :meth:`capture` encodes silence."""
        return self._muted

    def set_muted(self, muted: bool) -> None:
        """Encode silence instead of the captured audio (still one frame per tick).

        On unmute, a stage that holds audio (a ``flush`` method: the voice disguise's
        40 ms) drops it, so what is sent first is not speech from before the mute.
        """
        if self._muted and not muted and (flush := getattr(self._processing, "flush", None)):
            flush()
        self._muted = muted

    def configure_encoder(
        self, *, bitrate_bps: int, expected_loss_percent: int, complexity: int
    ) -> None:
        """Change the encoder while it runs (the adaptation to loss); FEC only if it has it."""
        self._encoder.set_bitrate(bitrate_bps)
        if self._fec:
            self._encoder.set_expected_loss_percent(expected_loss_percent)
        self._encoder.set_complexity(complexity)

    def configure_backup(self, backup_bytes: int) -> None:
        """Also encode each frame at ``backup_bytes`` (wideband, no FEC; 0: stop; decision 0220)."""
        if not backup_bytes:
            self._backup = self.backup_frame = None
        elif self._backup is None:
            bitrate_bps = backup_bytes * 8 * 1000 // self._frame_ms
            settings = OpusSettings(self._frame_ms, bitrate_bps, bandwidth=Bandwidth.WIDEBAND)
            self._backup = OpusEncoder(replace(settings, fec=False, complexity=10))

    def add_stream(self, stream: StreamId, decoder: AudioDecoder | None = None) -> ReceiveStream:
        """Start receiving another sender's audio (a group call); played mixed with the others.

        Raises:
            LocalProtocolError: the stream exists already.
        """
        if stream in self._streams:
            raise LocalProtocolError(f"stream {stream!r} exists already")
        created = ReceiveStream(
            self._frame_ms,
            decoder,
            trace=self._trace is not None,
            time_stretch=self._time_stretch,
        )
        self._streams[stream] = created
        return created

    def stream(self, stream: StreamId = PEER_STREAM) -> ReceiveStream:
        """The receive stream of ``stream``.

        Raises:
            LocalProtocolError: no such stream.
        """
        try:
            return self._streams[stream]
        except KeyError:
            raise LocalProtocolError(f"no stream {stream!r}") from None

    # the media path

    def capture(self, pcm: Pcm | None, now: float) -> bytes:
        """Encode one captured frame (None, or muted: silence); returns the Opus frame."""
        if pcm is None or self._muted:
            pcm = silence(self._encoder.frame_samples)
        elif self._processing is not None:
            pcm = self._processing.process_capture(pcm)
        self._sent_pcm = pcm
        if self._backup is not None:
            self.backup_frame = self._backup.encode(pcm)
        return self._encoder.encode(pcm)

    def receive(
        self,
        seq: int,
        timestamp: int,
        payload: bytes,
        now: float,
        *,
        redundant: bytes | None = None,
        older: tuple[bytes, ...] = (),
        size: int = 0,
        stream: StreamId = PEER_STREAM,
    ) -> None:
        """Hand a received frame to its stream's jitter buffer (``older``: see ``JitterBuffer``).

        Raises:
            LocalProtocolError: no such stream, or a field out of range.
        """
        stream_ = self.stream(stream)
        stream_.receive(seq, timestamp, payload, now, redundant=redundant, older=older, size=size)

    def has_next_frame(self) -> bool:
        """Whether every stream has its next frame (a late tick may wait for them)."""
        return all(receive_stream.has_next_frame() for receive_stream in self._streams.values())

    def play(self, now: float) -> Pcm:
        """The next frame for the sink: every stream rendered, mixed, shown to processing."""
        trace = self._trace
        if len(self._streams) == 1:  # a 1:1 call: nothing to mix
            pcm, timestamp = next(iter(self._streams.values())).play(now)
            if trace is not None and timestamp is not None:
                trace.frame_played(timestamp, now)
        else:
            frames = []
            for receive_stream in self._streams.values():
                frame, timestamp = receive_stream.play(now)
                frames.append(frame)
                if trace is not None and timestamp is not None:
                    trace.frame_played(timestamp, now)
            pcm = self._mixer.mix(frames)  # summed and limited: never clips
        if self._processing is not None:
            self._processing.observe_playout(pcm)
        self._played_pcm = pcm
        return pcm

    # statistics

    def record_sent(self, size_bytes: int, now: float) -> None:
        """Count a datagram we sent (audio or control), for the sent figures."""
        self._stats.record_sent(size_bytes, now)

    def record_rtt(
        self, ping_sent_at: float, now: float, hold_s: float, stream: StreamId = PEER_STREAM
    ) -> None:
        """A round trip to ``stream``'s sender: our ping of ``ping_sent_at``, held ``hold_s``."""
        self.stream(stream).stats.record_pong(ping_sent_at, now, peer_hold_s=hold_s)

    @property
    def decode_errors(self) -> int:
        """Packets the decoders refused, all streams (concealed instead)."""
        return sum(receive_stream.decode_errors for receive_stream in self._streams.values())

    def snapshot(
        self, now: float, *, packets_rejected: int = 0, stream: StreamId = PEER_STREAM
    ) -> CallStatsSnapshot:
        """The call's statistics as heard from ``stream``, with what we sent and the levels."""
        # the levels of the latest frames, measured when asked for rather than per frame
        played, self._played_pcm = self._played_pcm, None
        if played is not None:
            self._stats.record_audio_level(_rms(played))
        sent, self._sent_pcm = self._sent_pcm, None
        if sent is not None:
            self._stats.record_input_level(_rms(sent))
        ours = self._stats.snapshot(now)
        receive_stream = self.stream(stream)
        theirs = receive_stream.stats.snapshot(
            now, playout=receive_stream.jitter_stats, packets_rejected=packets_rejected
        )
        return replace(
            theirs,
            packets_sent=ours.packets_sent,
            tx_kbps=ours.tx_kbps,
            audio_level_dbfs=ours.audio_level_dbfs,
            input_level_dbfs=ours.input_level_dbfs,
        )


def mix(frames: list[Pcm]) -> Pcm:
    """The sum of equally long frames, clipped to 16 bits (playout uses :class:`Mixer`)."""
    total = np.sum(np.stack(frames).astype(np.int32), axis=0)
    mixed: Pcm = np.clip(total, -32_768, 32_767).astype(np.int16)
    return mixed


def _rms(pcm: Pcm) -> float:
    """The RMS level of a frame, 1.0 being full scale."""
    if not len(pcm):
        return 0.0
    samples = pcm.astype(np.float32)
    return math.sqrt(float(np.dot(samples, samples)) / len(samples)) / FULL_SCALE
