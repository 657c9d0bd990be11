"""The audio pipeline and two media engines in virtual time: no sockets, no sleeps.

A :class:`VirtualCall` runs a caller and a callee :class:`MediaEngine` (media
protocol + pipeline) on a fake clock, with the datagrams handed over through a
:class:`~tests.utils.DatagramPair` (one-way delay :data:`ONE_WAY_S`, a loss
pattern per direction), as the pump would: frame ticks every 20 ms, the
engines' timers when due, datagrams as they arrive. Everything is
deterministic, so a second of call takes a fraction of a second of CPU.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from pqcall.crypto.sframe import Header
from pqcall.exceptions import LocalProtocolError
from pqcall.media.audio import ToneSource, WavFileSource
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusEncoder, OpusSettings, Pcm, silence
from pqcall.media.pipeline import PEER_STREAM, MediaPipeline, mix
from pqcall.media.stats import MIN_AUDIO_LEVEL_DBFS
from pqcall.transport.adaptation import ADAPTATION_HOLD_S, CALM_COMPLEXITY
from pqcall.transport.frame_clock import FrameClock
from pqcall.transport.media_config import DEFAULT_REPORT_INTERVAL_S
from pqcall.transport.media_engine import MediaEngine, MediaSettings
from pqcall.transport.media_events import (
    MediaEvent,
    MediaState,
    MediaTimedOut,
    PeerHungUp,
    PeerMuted,
    ReportReceived,
)
from pqcall.transport.reception import LOSS_GRACE_S
from tests.utils import DatagramPair, FakeClock, handshake_pair

RUN = handshake_pair()
FRAME_S = 0.020
ONE_WAY_S = 0.005
CALLER_TONE_HZ = 440.0
CALLEE_TONE_HZ = 1000.0
# 1 config + 1 CTR + 2 length + 106 padded + 16 tag, for counters 8-255 (one header size)
DATAGRAM_BYTES = 126


def dominant_hz(pcm: Pcm) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.argmax(spectrum)) * SAMPLE_RATE_HZ / len(pcm)


def rms(pcm: Pcm) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) / 32768.0


def random_loss(rate: float, seed: int) -> Callable[[int], bool]:
    rng = random.Random(seed)
    drops: list[bool] = []

    def lost(index: int) -> bool:
        while len(drops) <= index:
            drops.append(rng.random() < rate)
        return drops[index]

    return lost


class Side:
    """One engine, what it heard, and the events it passed on."""

    def __init__(self, engine: MediaEngine, source: ToneSource | WavFileSource) -> None:
        self.engine = engine
        self.source = source
        self.heard: list[Pcm] = []
        self.events: list[MediaEvent] = []
        self.alive = True

    def tail(self, seconds: float) -> Pcm:
        samples = np.concatenate(self.heard) if self.heard else np.zeros(0, np.int16)
        return samples[-int(seconds * SAMPLE_RATE_HZ) :]

    def ended_by(self) -> type | None:
        kinds = [type(e) for e in self.events if isinstance(e, PeerHungUp | MediaTimedOut)]
        return kinds[0] if kinds else None


class VirtualCall:
    """A caller ("a") and a callee ("b") in virtual time over a lossy in-memory link."""

    def __init__(
        self,
        caller_settings: MediaSettings | None = None,
        callee_settings: MediaSettings | None = None,
        *,
        link: DatagramPair | None = None,
        caller_source: ToneSource | WavFileSource | None = None,
        trace: object | None = None,
    ) -> None:
        self.clock = FakeClock()
        self.link = link or DatagramPair()
        frame_ms = (caller_settings or MediaSettings()).opus.frame_ms
        self.frame_s = frame_ms / 1000  # both sides tick together
        self.a = Side(
            MediaEngine(RUN.caller.keys, caller_settings),
            caller_source or ToneSource(CALLER_TONE_HZ, frame_ms=frame_ms),
        )
        self.b = Side(
            MediaEngine(RUN.callee.keys, callee_settings, trace=trace),  # type: ignore[arg-type]
            ToneSource(CALLEE_TONE_HZ, frame_ms=frame_ms),
        )
        self._in_flight: list[tuple[float, int, str, bytes]] = []  # (arrival, order, to, data)
        self._order = itertools.count()
        self._next_tick = 0.0
        for side in (self.a, self.b):
            side.engine.start(self.clock.now)
        self._flush()

    def side(self, name: str) -> Side:
        return self.a if name == "a" else self.b

    def run(self, seconds: float) -> None:
        """Advance the call by ``seconds`` of virtual time."""
        end = self.clock.now + seconds
        while True:
            due = [self._next_tick]
            due += [t for s in (self.a, self.b) if s.alive and (t := s.engine.get_timer())]
            if self._in_flight:
                due.append(self._in_flight[0][0])
            now = min(due)
            if now > end:
                self.clock.now = end
                return
            self.clock.now = max(self.clock.now, now)
            now = self.clock.now
            while self._in_flight and self._in_flight[0][0] <= now:
                _, _, to, data = heapq.heappop(self._in_flight)
                if self.side(to).alive:
                    self.side(to).engine.receive_datagram(data, now)
            for side in (self.a, self.b):
                timer = side.engine.get_timer() if side.alive else None
                if timer is not None and timer <= now:
                    side.engine.handle_timer(now)
            if self._next_tick <= now:
                for side in (self.a, self.b):
                    if side.alive and side.engine.protocol.state is MediaState.ACTIVE:
                        side.heard.append(side.engine.tick(side.source.read_frame(), now))
                self._next_tick += self.frame_s
            self._flush()

    def hangup(self, name: str) -> None:
        self.side(name).engine.hangup(self.clock.now)
        self._flush()

    def vanish(self, name: str) -> None:
        """The side stops without a word (a crash, a cable pulled)."""
        self.side(name).alive = False

    def inject(self, to: str, data: bytes) -> None:
        """Deliver ``data`` to ``to`` now, as if from its peer."""
        self.side(to).engine.receive_datagram(data, self.clock.now)
        self._flush()

    def _flush(self) -> None:
        now = self.clock.now
        for name, other in (("a", "b"), ("b", "a")):
            side = self.side(name)
            if not side.alive:
                continue
            for datagram in self.link.send(name, side.engine.datagrams_to_send(now)):
                heapq.heappush(
                    self._in_flight, (now + ONE_WAY_S, next(self._order), other, datagram)
                )
            while (event := side.engine.next_event()) is not None:
                side.events.append(event)


# a call, both ways


def test_tone_crosses_both_ways_with_stats_and_rtt():
    call = VirtualCall()
    call.run(1.5)
    assert dominant_hz(call.b.tail(0.5)) == pytest.approx(CALLER_TONE_HZ, abs=4)
    assert dominant_hz(call.a.tail(0.5)) == pytest.approx(CALLEE_TONE_HZ, abs=4)
    # ToneSource: amplitude 0.5, RMS 0.354; Opus keeps most of it
    assert rms(call.b.tail(0.5)) > 0.25
    assert rms(call.a.tail(0.5)) > 0.25
    for side in (call.a, call.b):
        stats = side.engine.snapshot(call.clock.now)
        assert stats.packets_sent >= 60  # 75 frames in 1.5 s, plus control
        assert stats.packets_received >= 60
        assert stats.packets_lost == 0
        assert stats.packets_rejected == 0
        assert stats.rtt_ms is not None and 0 < stats.rtt_ms < 100
        assert stats.audio_level_dbfs is not None and stats.audio_level_dbfs > -15
        # the tone sent: amplitude 0.5 is -6 dBFS peak, -9 dBFS RMS
        assert stats.input_level_dbfs == pytest.approx(-9.0, abs=0.5)
        # 126-byte datagrams + 28 of IP/UDP, 50 per second (61.6 kbit/s), plus pings
        # and reports: 1.5 s holds 2-4 control datagrams
        assert 58 < stats.tx_kbps < 68
        # the first report showed no loss: no FEC, and the calm encoder complexity
        assert side.engine.adaptation.expected_loss_percent == 0
        assert side.engine.adaptation.complexity == CALM_COMPLEXITY
        assert side.ended_by() is None
    assert call.b.engine.jitter_stats.played >= 60
    # virtual time: the RTT is the link's, exactly (the pong's hold time subtracted)
    rtt = call.a.engine.snapshot(call.clock.now).rtt_ms
    assert rtt == pytest.approx(2 * ONE_WAY_S * 1000, abs=0.01)
    call.hangup("a")
    call.run(0.2)
    assert call.b.ended_by() is PeerHungUp


def test_call_survives_20_percent_loss():
    link = DatagramPair(a_to_b_loss=random_loss(0.2, 11), b_to_a_loss=random_loss(0.2, 12))
    call = VirtualCall(link=link)
    call.run(3.0)
    heard = call.b.engine.snapshot(call.clock.now)
    assert dominant_hz(call.b.tail(1.0)) == pytest.approx(CALLER_TONE_HZ, abs=4)
    assert dominant_hz(call.a.tail(1.0)) == pytest.approx(CALLEE_TONE_HZ, abs=4)
    assert 10 < heard.loss_percent < 30
    assert heard.concealed_ms > 0
    # the caller raised FEC from the callee's reports, and FEC repaired frames
    assert call.a.engine.adaptation.expected_loss_percent >= 10
    assert call.a.engine.adaptation.complexity == 10  # full effort under loss
    assert heard.fec_recovered > 0
    assert heard.rtt_ms is not None
    assert call.b.engine.jitter_stats.played > 80
    call.hangup("a")
    call.run(0.5)
    assert call.b.ended_by() is PeerHungUp


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_hangup_reaches_the_peer_through_20_percent_loss(seed):
    link = DatagramPair(
        a_to_b_loss=random_loss(0.2, seed), b_to_a_loss=random_loss(0.2, seed + 100)
    )
    call = VirtualCall(link=link)
    call.run(0.3)
    call.hangup("b")
    call.run(0.2)  # five copies 20 ms apart
    assert call.a.ended_by() is PeerHungUp
    assert call.b.engine.is_ended


def test_media_timeout_ends_a_call_whose_peer_vanished():
    settings = MediaSettings(media_timeout_s=0.4)
    call = VirtualCall(settings, settings)
    call.run(0.3)
    call.vanish("b")
    vanished_at = call.clock.now
    call.run(0.3)
    assert call.a.ended_by() is None
    call.run(0.2)
    assert call.a.ended_by() is MediaTimedOut
    timeout = next(e for e in call.a.events if isinstance(e, MediaTimedOut))
    # the last packet from b arrived at most one frame before it vanished
    assert 0.4 <= timeout.idle_s < 0.4 + FRAME_S + ONE_WAY_S
    assert call.a.engine.is_ended and vanished_at + 0.3 < call.clock.now


def test_mute_is_signalled_and_silences_the_audio():
    call = VirtualCall()
    call.run(0.5)
    assert not call.b.engine.protocol.is_peer_muted
    call.a.engine.set_muted(True, call.clock.now)
    call.run(0.05)
    assert call.b.engine.protocol.is_peer_muted
    assert [e.muted for e in call.b.events if isinstance(e, PeerMuted)] == [True]
    call.run(0.4)
    assert rms(call.b.tail(0.2)) < 0.001
    assert call.a.engine.pipeline.is_muted
    assert call.a.engine.snapshot(call.clock.now).input_level_dbfs == MIN_AUDIO_LEVEL_DBFS
    packets = call.b.engine.snapshot(call.clock.now).packets_received
    call.run(0.2)
    # still one packet per frame
    assert call.b.engine.snapshot(call.clock.now).packets_received > packets + 5
    call.a.engine.set_muted(False, call.clock.now)
    call.run(0.3)
    assert not call.b.engine.protocol.is_peer_muted
    assert dominant_hz(call.b.tail(0.2)) == pytest.approx(CALLER_TONE_HZ, abs=6)


# packet sizes


def test_packet_size_is_constant_when_redundancy_starts():
    # no FEC: automatic mode answers loss with redundancy (every 4th datagram lost)
    settings = MediaSettings(opus=OpusSettings(fec=False))
    call = VirtualCall(settings, link=DatagramPair(a_to_b_loss=[False, False, False, True]))
    call.run(2.5)
    assert call.a.engine.adaptation.redundancy
    assert call.b.engine.snapshot(call.clock.now).redundancy_recovered > 5
    assert call.a.engine.protocol_stats.redundant_sent > 10
    assert {len(d) for d in call.link.a_to_b[8:256]} == {DATAGRAM_BYTES}
    # and the forced modes send the same size
    for redundancy in (True, False):
        forced = VirtualCall(MediaSettings(redundancy=redundancy))
        forced.run(0.4)
        assert {len(d) for d in forced.link.a_to_b[8:]} == {DATAGRAM_BYTES}
        assert (forced.a.engine.protocol_stats.redundant_sent > 0) is redundancy


def test_speech_and_pauses_cross_the_wire_in_one_packet_size():
    from pqcall.bench.quality import SAMPLES_DIR

    speech = SAMPLES_DIR / "alice.wav"
    # variable-bitrate Opus: speech with pauses makes packets of many sizes ...
    encoder, opus_sizes = OpusEncoder(), set()
    with WavFileSource(speech) as source:
        while (frame := source.read_frame()) is not None:  # the whole sample, 20 s
            opus_sizes.add(len(encoder.encode(frame)))
    assert len(opus_sizes) > 10
    assert max(opus_sizes) <= OpusSettings().max_packet_bytes
    # ... and the padding inside the encryption hides every one of them
    call = VirtualCall(caller_source=WavFileSource(speech))
    call.run(2.2)  # 110 frames, with the pauses between words
    sent = call.link.a_to_b[8:256]
    assert len(sent) > 90
    assert {len(d) for d in sent} == {DATAGRAM_BYTES}  # audio and control alike


def test_ten_ms_frames_send_packets_of_one_frame():
    settings = MediaSettings(opus=OpusSettings(frame_ms=10))
    call = VirtualCall(settings, settings)
    call.run(0.5)
    # 1 config + 1 CTR + 2 length + 56 padded + 16 tag: half the 20 ms packet's
    # padding, not the same 106 bytes for half the audio
    assert {len(d) for d in call.link.a_to_b[8:200]} == {76}
    assert call.b.engine.snapshot(call.clock.now).packets_received > 30


# what the peer cannot do


def test_replayed_packet_is_never_played_twice():
    call = VirtualCall()
    call.run(0.5)
    captured = list(call.link.a_to_b[-5:])
    for datagram in captured * 4:
        call.inject("b", datagram)
    call.run(0.3)
    stats = call.b.engine.protocol_stats
    playout = call.b.engine.jitter_stats
    assert stats.sframe.replayed == 20
    assert stats.sframe.accepted <= len(call.link.a_to_b)  # each genuine datagram at most once
    assert playout.duplicates == 0  # no replay reached the jitter buffer
    # every audio packet received is accounted for once (jitter.py's invariant)
    assert stats.audio_received == sum(
        (
            playout.played,
            playout.queued_packets,
            playout.shrink_dropped,
            playout.overflow_dropped,
            playout.flushed,
            playout.late_dropped,
            playout.stray_dropped,
        )
    )
    assert playout.played <= call.a.engine.protocol_stats.audio_sent


def test_garbage_burst_is_dropped_and_the_call_goes_on():
    call = VirtualCall()
    call.run(0.5)
    rng = random.Random(5)
    genuine = call.link.a_to_b[-1]
    garbage = [b""]  # the socket never delivers an empty datagram; the engine copes anyway
    garbage += [rng.randbytes(rng.randrange(1, 200)) for _ in range(199)]
    garbage += [genuine[: rng.randrange(1, len(genuine))] for _ in range(100)]
    garbage += [  # the caller's KID, fresh counters, random ciphertext
        Header(kid=0, ctr=10_000 + i).serialize() + rng.randbytes(len(genuine) - 4)
        for i in range(100)
    ]
    flipped = bytearray(genuine)
    garbage += [bytes(flipped[:-1]) + bytes([flipped[-1] ^ (1 + i % 255)]) for i in range(100)]
    assert len(garbage) == 500
    before = call.b.engine.jitter_stats.played
    for datagram in garbage:
        call.inject("b", datagram)
    call.run(0.5)
    stats = call.b.engine.protocol_stats
    assert call.b.engine.packets_rejected == 500
    assert stats.dropped == 500
    assert stats.sframe.auth_failed > 0 and stats.sframe.malformed > 0
    assert call.b.engine.snapshot(call.clock.now).packets_rejected == 500
    assert call.b.ended_by() is None
    assert call.b.engine.jitter_stats.played > before + 15  # audio kept coming
    assert dominant_hz(call.b.tail(0.3)) == pytest.approx(CALLER_TONE_HZ, abs=4)


class Trace:
    def __init__(self) -> None:
        self.captured: dict[int, float] = {}
        self.played: dict[int, float] = {}

    def frame_captured(self, timestamp: int, now: float) -> None:
        self.captured[timestamp] = now

    def frame_played(self, timestamp: int, now: float) -> None:
        self.played.setdefault(timestamp, now)


def test_trace_sees_playout_times_of_the_peers_frames():
    trace = Trace()
    call = VirtualCall(trace=trace)
    call.run(1.0)
    assert len(trace.played) >= 40
    # the callee captures its own frames at the ticks it plays the caller's
    assert set(trace.played.values()) <= set(trace.captured.values())
    sent = {ts: k * FRAME_S for k, ts in enumerate(range(0, 60 * 960, 960))}  # caller's ticks
    latencies = [trace.played[ts] - sent[ts] for ts in trace.played if ts in sent]
    assert len(latencies) >= 40
    assert 0 <= min(latencies) and np.median(latencies) < 0.1


# the pipeline's seams: several streams, a processing stage


class Recorder:
    """A processing stage that records what it sees, and can change the capture."""

    def __init__(self, capture: Callable[[Pcm], Pcm] | None = None) -> None:
        self.captured: list[Pcm] = []
        self.played: list[Pcm] = []
        self._capture = capture

    def process_capture(self, pcm: Pcm) -> Pcm:
        self.captured.append(pcm)
        return pcm if self._capture is None else self._capture(pcm)

    def observe_playout(self, pcm: Pcm) -> None:
        self.played.append(pcm)


def encoded_tone(hz: float, frames: int) -> list[bytes]:
    source, encoder = ToneSource(hz), OpusEncoder()
    return [encoder.encode(source.read_frame()) for _ in range(frames)]


def play_streams(pipeline: MediaPipeline, streams: Sequence[tuple[object, list[bytes]]]) -> Pcm:
    """Feed each stream its frames on time; return everything played."""
    played = []
    for k in range(len(streams[0][1])):
        now = k * FRAME_S
        for stream, frames in streams:
            pipeline.receive(k, k * 960, frames[k], now, stream=stream)
        played.append(pipeline.play(now))
    return np.concatenate(played)


def test_two_streams_are_mixed_at_playout():
    pipeline = MediaPipeline(OpusSettings())
    pipeline.add_stream("carol")
    out = play_streams(
        pipeline, [(PEER_STREAM, encoded_tone(440, 50)), ("carol", encoded_tone(1000, 50))]
    )
    spectrum = np.abs(np.fft.rfft(out[-SAMPLE_RATE_HZ // 2 :].astype(np.float64)))
    hz = np.fft.rfftfreq(SAMPLE_RATE_HZ // 2, 1 / SAMPLE_RATE_HZ)
    peaks = {round(float(hz[i])) for i in np.argsort(spectrum)[-2:]}
    assert peaks == {440, 1000}  # both senders heard
    # each stream keeps its own jitter buffer and statistics
    assert pipeline.stream("carol").jitter_stats.played > 40
    assert pipeline.stream(PEER_STREAM).stats.snapshot(1.0).packets_received == 50
    with pytest.raises(LocalProtocolError, match="exists already"):
        pipeline.add_stream("carol")
    with pytest.raises(LocalProtocolError, match="no stream 'dave'"):
        pipeline.receive(0, 0, b"x", 1.0, stream="dave")


def test_mix_adds_and_clips():
    loud = np.full(4, 30_000, np.int16)
    assert mix([loud, loud]).tolist() == [32_767] * 4
    assert mix([loud, -loud]).tolist() == [0] * 4
    assert mix([-loud, -loud]).dtype == np.int16


def test_playout_tap_sees_exactly_what_is_played():
    recorder = Recorder()
    pipeline = MediaPipeline(OpusSettings(), processing=recorder)
    pipeline.add_stream("carol")
    played = []
    tones = [encoded_tone(440, 20), encoded_tone(1000, 20)]
    for k in range(20):
        pipeline.receive(k, k * 960, tones[0][k], k * FRAME_S)
        if k % 3:  # carol's stream loses a third: concealment is mixed in too
            pipeline.receive(k, k * 960, tones[1][k], k * FRAME_S, stream="carol")
        played.append(pipeline.play(k * FRAME_S))
    assert len(recorder.played) == len(played) == 20
    assert all(seen is out for seen, out in zip(recorder.played, played, strict=True))


def test_capture_goes_through_processing_unless_muted():
    zeroed = Recorder(capture=lambda pcm: np.zeros_like(pcm))
    pipeline = MediaPipeline(OpusSettings(), processing=zeroed)
    listener = MediaPipeline(OpusSettings())
    tone = ToneSource(440)
    for k in range(25):
        listener.receive(k, k * 960, pipeline.capture(tone.read_frame(), k * FRAME_S), k * FRAME_S)
        listener.play(k * FRAME_S)
    assert len(zeroed.captured) == 25  # the stage saw every captured frame ...
    assert rms(zeroed.captured[-1]) > 0.3
    assert rms(listener.play(0.5)) < 0.001  # ... and what it returned was sent
    pipeline.set_muted(True)
    pipeline.capture(tone.read_frame(), 0.52)
    assert len(zeroed.captured) == 25  # muted: silence is sent, the stage is skipped
    assert pipeline.capture(None, 0.54)  # no frame from the source: silence, encoded


def test_a_frame_the_decoder_refuses_is_concealed_and_counted():
    pipeline = MediaPipeline(OpusSettings())
    frames = encoded_tone(440, 10)
    for k in range(10):
        payload = b"\xff" * 3 if k == 5 else frames[k]  # not an Opus packet
        pipeline.receive(k, k * 960, payload, k * FRAME_S)
        out = pipeline.play(k * FRAME_S)
        assert len(out) == 960
    assert pipeline.decode_errors == 1
    assert len(silence(960)) == 960


# a clean path that stays clean (issue 15): a busy machine is not a lossy network


class StallingCall(VirtualCall):
    """A :class:`VirtualCall` whose sides run as the asyncio pump does, and can be descheduled.

    Each side has the session's :class:`FrameClock` (catch-up, skips, owed plays).
    After a stall the pump reads one datagram per loop iteration and runs its due
    timers and tick after the first, as asyncio's loop does; the other datagrams
    follow, each letting the owed plays go on.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.clocks = {name: FrameClock(0.0, self.frame_s) for name in "ab"}
        self.stalls: dict[str, list[tuple[float, float]]] = {"a": [], "b": []}

    def stall(self, name: str, at: float, seconds: float) -> None:
        """Deschedule ``name`` from ``at`` for ``seconds``: no ticks, timers or reads."""
        self.stalls[name].append((at, at + seconds))

    def _resume_at(self, name: str, when: float) -> float:
        for start, end in self.stalls[name]:
            if start <= when < end:
                return end
        return when

    def run(self, seconds: float) -> None:
        end = self.clock.now + seconds
        while True:
            due = []
            for name in "ab":
                timer = self.side(name).engine.get_timer()
                for when in (self.clocks[name].due, timer):
                    if when is not None:
                        due.append(self._resume_at(name, when))
            due += [self._resume_at(to, arrival) for arrival, _, to, _ in self._in_flight]
            now = min(due)
            if now > end:
                self.clock.now = end
                return
            self.clock.now = now = max(self.clock.now, now)
            for name in "ab":
                if self._resume_at(name, now) != now:
                    continue  # descheduled
                arrived = sorted(item for item in self._in_flight if item[2] == name)
                arrived = [item for item in arrived if item[0] <= now]
                for item in arrived:
                    self._in_flight.remove(item)
                heapq.heapify(self._in_flight)
                for index, (_, _, _, data) in enumerate(arrived):
                    self._receive(name, data, now)
                    if index == 0:
                        self._timers_and_tick(name, now)
                if not arrived:
                    self._timers_and_tick(name, now)
            self._flush()

    def _receive(self, name: str, data: bytes, now: float) -> None:
        side, clock = self.side(name), self.clocks[name]
        side.engine.receive_datagram(data, now)
        while clock.may_play(side.engine.has_next_frame()):
            side.heard.append(side.engine.play_frame(now))

    def _timers_and_tick(self, name: str, now: float) -> None:
        side, clock = self.side(name), self.clocks[name]
        timer = side.engine.get_timer()
        if timer is not None and timer <= now:
            side.engine.handle_timer(now)
        if clock.due > now:
            return
        frames = clock.frames_due(now)
        for _ in range(frames):
            side.engine.send_frame(side.source.read_frame(), now)
            clock.index += 1
        clock.owe_plays(frames)
        while clock.may_play(side.engine.has_next_frame()):
            side.heard.append(side.engine.play_frame(now))


def test_clean_call_reports_the_clean_mode_and_no_planned_loss():
    call = VirtualCall()
    call.run(1.5)
    for side in (call.a, call.b):
        record = side.engine.snapshot(call.clock.now).as_dict()
        assert record["encoder_mode"] == "clean"
        assert record["planned_loss_percent"] == 0
    # under loss the record says so
    lossy = VirtualCall(link=DatagramPair(a_to_b_loss=random_loss(0.1, 3)))
    lossy.run(2.5)
    record = lossy.a.engine.snapshot(lossy.clock.now).as_dict()
    assert record["encoder_mode"] == "fec"
    assert isinstance(record["planned_loss_percent"], int) and record["planned_loss_percent"] > 0


@pytest.mark.parametrize("stall_s", [0.04, 0.06, 0.1, 0.2], ids=lambda s: f"{s * 1000:.0f}ms")
def test_a_descheduled_receiver_keeps_the_sender_clean(stall_s):
    call = StallingCall()
    call.run(2.0)
    concealed = call.b.engine.jitter_stats.concealed
    for k in range(3):
        call.stall("b", 2.0 + 2 * k + 0.007, stall_s)
    call.run(6.5)
    for side in (call.a, call.b):
        stats = side.engine.snapshot(call.clock.now)
        assert stats.packets_lost == 0
        assert side.engine.adaptation.mode == "clean"
        assert side.engine.adaptation.expected_loss_percent == 0
    # the receiver's late ticks found their packets in the socket: nothing concealed
    assert call.b.engine.jitter_stats.concealed == concealed
    assert call.b.engine.jitter_stats.late_dropped == 0


def test_late_packets_are_not_reported_lost():
    # every 25th audio packet a -> b arrives 60 ms late, after the next ones
    call = VirtualCall()
    delayed = []
    send = call.link.send

    def late_send(side, datagrams):
        delivered = send(side, datagrams)
        if side != "a":
            return delivered
        kept = []
        for datagram in delivered:
            if len(call.link.a_to_b) % 25 == 0 and len(call.link.a_to_b) > 10:
                delayed.append((call.clock.now + 0.06, datagram))
            else:
                kept.append(datagram)
        return kept

    call.link.send = late_send  # type: ignore[method-assign]
    end = 0.0
    while end < 4.0:
        end += 0.02
        call.run(0.02)
        for when, datagram in [d for d in delayed if d[0] <= call.clock.now]:
            delayed.remove((when, datagram))
            call.inject("b", datagram)
    assert call.b.engine.snapshot(call.clock.now).packets_lost == 0
    assert call.a.engine.adaptation.mode == "clean"
    reports = [e.report for e in call.a.events if isinstance(e, ReportReceived)]
    assert reports and all(report.fraction_lost == 0 for report in reports)


def test_sender_is_clean_again_within_the_hold_after_loss_stops():
    loss = random_loss(0.1, 21)
    stop_at = [10**9]

    def lossy(index: int) -> bool:
        return index < stop_at[0] and loss(index)

    call = VirtualCall(link=DatagramPair(a_to_b_loss=lossy))
    call.run(3.0)
    assert call.a.engine.adaptation.mode == "fec"
    stop_at[0] = len(call.link.a_to_b)
    stopped = call.clock.now
    bound = ADAPTATION_HOLD_S + DEFAULT_REPORT_INTERVAL_S + LOSS_GRACE_S + FRAME_S
    assert bound <= 4.2  # "within a few seconds"
    call.run(bound)
    assert call.a.engine.adaptation.mode == "clean", f"still lossy {bound} s after {stopped}"
    assert call.a.engine.adaptation.complexity == CALM_COMPLEXITY
