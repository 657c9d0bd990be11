"""MediaSession on real loopback UDP sockets: what needs a socket and the event loop.

The media path's behaviour (loss, FEC and redundancy, adaptation, mute, hang-up
and timeout, replays and garbage, packet sizes) is tested in virtual time in
``tests/media/test_pipeline.py``; here: a whole call end to end, foreign
datagrams, devices replaced mid-call, the frame clock and trace, WAV files,
misuse. Timing bounds only ever give more slack on slow machines: scale them
with ``PQCALL_TEST_TIMEOUT_SCALE``. A :class:`Tap` stands in the path where a
test must see or inject datagrams.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import os
import wave
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from pqcall.crypto.sframe import Header
from pqcall.exceptions import LocalProtocolError
from pqcall.media.audio import ToneSource, WavFileSink, WavFileSource
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusSettings, Pcm
from pqcall.transport.adaptation import CALM_COMPLEXITY
from pqcall.transport.session import MediaSession, MediaSettings
from tests.utils import handshake_pair

TIMEOUT_SCALE = float(os.environ.get("PQCALL_TEST_TIMEOUT_SCALE", "1"))
TEST_TIMEOUT_S = 20.0 * TIMEOUT_SCALE  # a whole test, start to close
SIGNAL_S = 1.0 * TIMEOUT_SCALE  # for a signal (mute, hang-up) to cross the loopback
LOOPBACK = ("127.0.0.1", 0)
CALLER_TONE_HZ = 440.0
CALLEE_TONE_HZ = 1000.0
RUN = handshake_pair()
POLL_S = 0.01

T = TypeVar("T")


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one test in a fresh event loop, bounded by the scaled timeout."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), TEST_TIMEOUT_S)

    return asyncio.run(bounded())


async def eventually(predicate: Callable[[], bool], within_s: float = SIGNAL_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(POLL_S)


class MemorySink:
    """Keeps every frame written, in memory."""

    def __init__(self) -> None:
        self.frames: list[Pcm] = []
        self.closed = False

    def write_frame(self, pcm: Pcm) -> None:
        self.frames.append(pcm)

    def close(self) -> None:
        self.closed = True

    def tail(self, seconds: float) -> Pcm:
        samples = np.concatenate(self.frames) if self.frames else np.zeros(0, np.int16)
        return samples[-int(seconds * SAMPLE_RATE_HZ) :]


def dominant_hz(pcm: Pcm) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.argmax(spectrum)) * SAMPLE_RATE_HZ / len(pcm)


def rms(pcm: Pcm) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) / 32768.0


@dataclass
class Call:
    caller: MediaSession
    callee: MediaSession
    caller_hears: MemorySink
    callee_hears: MemorySink

    async def close(self) -> None:
        await self.caller.close()
        await self.callee.close()


async def open_call(
    caller_settings: MediaSettings | None = None,
    callee_settings: MediaSettings | None = None,
    **kwargs: Any,
) -> Call:
    """Two open (not yet connected) sessions with tones and memory sinks."""
    caller_hears, callee_hears = MemorySink(), MemorySink()
    caller = MediaSession(
        RUN.caller.keys,
        ToneSource(CALLER_TONE_HZ),
        caller_hears,
        settings=caller_settings,
        **kwargs,
    )
    callee = MediaSession(
        RUN.callee.keys, ToneSource(CALLEE_TONE_HZ), callee_hears, settings=callee_settings
    )
    await caller.open(LOOPBACK)
    await callee.open(LOOPBACK)
    return Call(caller, callee, caller_hears, callee_hears)


def connect_direct(call: Call) -> None:
    call.caller.connect(call.callee.local_address)
    call.callee.connect(call.caller.local_address)


@dataclass
class Tap:
    """A transparent UDP relay between A and B that records, drops, replays and injects.

    A sends to :attr:`address_a` and B to :attr:`address_b`, as with ImpairmentRelay.
    """

    peer_a: tuple[str, int]
    peer_b: tuple[str, int]
    drop_a_to_b: Callable[[int], bool] = field(default=lambda index: False)
    a_to_b: list[bytes] = field(default_factory=list)
    b_to_a: list[bytes] = field(default_factory=list)
    _transports: dict[str, asyncio.DatagramTransport] = field(default_factory=dict)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for side in "ab":
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_TapSide, self, side), local_addr=LOOPBACK
            )
            self._transports[side] = transport

    @property
    def address_a(self) -> tuple[str, int]:
        return self._address("a")

    @property
    def address_b(self) -> tuple[str, int]:
        return self._address("b")

    def _address(self, side: str) -> tuple[str, int]:
        host, port = self._transports[side].get_extra_info("sockname")[:2]
        return (str(host), int(port))

    def received(self, side: str, data: bytes, addr: tuple[str, int]) -> None:
        if side == "a" and addr == self.peer_a:
            self.a_to_b.append(data)
            if not self.drop_a_to_b(len(self.a_to_b) - 1):
                self.inject_to_b(data)
        elif side == "b" and addr == self.peer_b:
            self.b_to_a.append(data)
            self._transports["a"].sendto(data, self.peer_a)

    def inject_to_b(self, data: bytes) -> None:
        """Send ``data`` to B as if A had sent it (same source address as A's traffic)."""
        self._transports["b"].sendto(data, self.peer_b)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


class _TapSide(asyncio.DatagramProtocol):
    def __init__(self, tap: Tap, side: str) -> None:
        self._tap = tap
        self._side = side

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._tap.received(self._side, data, (str(addr[0]), int(addr[1])))


async def tapped_call(**kwargs: Any) -> tuple[Call, Tap]:
    """A call whose caller (A) and callee (B) talk through a :class:`Tap`."""
    drop = kwargs.pop("drop_a_to_b", lambda index: False)
    call = await open_call(**kwargs)
    tap = Tap(call.caller.local_address, call.callee.local_address, drop)
    await tap.start()
    call.caller.connect(tap.address_a)
    call.callee.connect(tap.address_b)
    return call, tap


# tests


def test_tone_crosses_both_ways_with_stats_and_rtt():
    async def main() -> None:
        settings = MediaSettings(media_timeout_s=0.5)  # a live call never times out
        call = await open_call(settings, settings)
        connect_direct(call)
        await asyncio.sleep(1.5)
        caller, callee = call.caller.snapshot(), call.callee.snapshot()
        assert dominant_hz(call.callee_hears.tail(0.5)) == pytest.approx(CALLER_TONE_HZ, abs=4)
        assert dominant_hz(call.caller_hears.tail(0.5)) == pytest.approx(CALLEE_TONE_HZ, abs=4)
        # ToneSource: amplitude 0.5, RMS 0.354; Opus at ~29 kbit/s keeps most of it
        assert rms(call.callee_hears.tail(0.5)) > 0.25
        assert rms(call.caller_hears.tail(0.5)) > 0.25
        for stats in (caller, callee):
            assert stats.packets_sent >= 60  # 75 frames in 1.5 s, plus control
            assert stats.packets_received >= 60
            assert stats.packets_lost == 0
            assert stats.packets_rejected == 0
            assert stats.rtt_ms is not None and 0 < stats.rtt_ms < 100
            assert stats.audio_level_dbfs is not None and stats.audio_level_dbfs > -15
            # the tone sent: amplitude 0.5 is -6 dBFS peak, -9 dBFS RMS
            assert stats.input_level_dbfs == pytest.approx(-9.0, abs=0.5)
            # 126-byte datagrams + 28 of IP/UDP, 50 per second (61.6 kbit/s), plus pings
            # and reports, averaged over the call so far (shorter than the 2 s window):
            # 1.5 s holds 2-4 control datagrams, 62-65 kbit/s (a full window: 63.2)
            assert 58 < stats.tx_kbps < 68
        assert call.callee.jitter_stats.played >= 60
        # the first report showed no loss: no FEC, and the calm encoder complexity
        for session in (call.caller, call.callee):
            assert session.adaptation.expected_loss_percent == 0
            assert session.adaptation.complexity == CALM_COMPLEXITY
        assert call.caller.end_reason is None
        await call.caller.hangup()
        assert await asyncio.wait_for(call.callee.wait_ended(), SIGNAL_S) == "peer hangup"
        assert await call.caller.wait_ended() == "local hangup"
        assert call.caller_hears.closed and call.callee_hears.closed
        await call.close()

    run(main)


def test_datagrams_from_a_foreign_address_are_ignored():
    async def main() -> None:
        call, tap = await tapped_call()
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        intruder, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=LOOPBACK
        )
        # even genuine datagrams (not yet delivered ones, too) count only from the peer
        fresh = Header(kid=0, ctr=1).serialize() + bytes(100)
        for datagram in [*tap.a_to_b[-3:], fresh] * 5:
            intruder.sendto(datagram, call.callee.local_address)
        await eventually(lambda: call.callee.foreign_datagrams == 20)
        assert call.callee.protocol_stats.dropped == 0
        assert call.callee.protocol_stats.sframe.replayed == 0
        assert call.callee.packets_rejected == 20
        intruder.close()
        tap.close()
        await call.close()

    run(main)


class ClosingTone(ToneSource):
    """A tone that remembers being closed."""

    closed = False

    def close(self) -> None:
        self.closed = True
        super().close()


def test_source_and_sink_are_replaced_mid_call():
    async def main() -> None:
        first = ClosingTone(CALLER_TONE_HZ)
        caller_hears, callee_hears = MemorySink(), MemorySink()
        caller = MediaSession(RUN.caller.keys, first, caller_hears)
        callee = MediaSession(RUN.callee.keys, ToneSource(CALLEE_TONE_HZ), callee_hears)
        await caller.open(LOOPBACK)
        await callee.open(LOOPBACK)
        call = Call(caller, callee, caller_hears, callee_hears)
        connect_direct(call)
        await asyncio.sleep(0.5)
        assert dominant_hz(call.callee_hears.tail(0.2)) == pytest.approx(CALLER_TONE_HZ, abs=6)

        # the caller switches microphone, the callee switches speaker
        with pytest.raises(LocalProtocolError, match="960"):
            await caller.replace_audio(ToneSource(880.0, frame_ms=10))  # 480-sample frames
        assert not first.closed
        await caller.replace_audio(ToneSource(880.0))
        assert first.closed
        new_speaker = MemorySink()
        await call.callee.replace_audio(sink=new_speaker)
        assert call.callee_hears.closed
        frames_then = len(call.callee_hears.frames)
        await asyncio.sleep(0.5)
        assert len(call.callee_hears.frames) == frames_then  # the old speaker gets nothing more
        assert dominant_hz(new_speaker.tail(0.2)) == pytest.approx(880.0, abs=6)
        assert call.callee.snapshot().packets_lost == 0  # no gap in the stream

        # after the call, the session closes what it is given at once
        await call.close()
        late = MemorySink()
        await call.callee.replace_audio(sink=late)
        assert late.closed

    run(main)


class Trace:
    def __init__(self) -> None:
        self.captured: dict[int, float] = {}
        self.played: dict[int, float] = {}

    def frame_captured(self, timestamp: int, now: float) -> None:
        self.captured[timestamp] = now

    def frame_played(self, timestamp: int, now: float) -> None:
        self.played.setdefault(timestamp, now)


def test_trace_sees_capture_and_playout_times():
    async def main() -> None:
        caller_trace, callee_trace = Trace(), Trace()
        caller_hears, callee_hears = MemorySink(), MemorySink()
        caller = MediaSession(RUN.caller.keys, ToneSource(440), caller_hears, trace=caller_trace)
        callee = MediaSession(RUN.callee.keys, ToneSource(1000), callee_hears, trace=callee_trace)
        await caller.open(LOOPBACK)
        await callee.open(LOOPBACK)
        async with caller, callee:
            caller.connect(callee.local_address)
            callee.connect(caller.local_address)
            await asyncio.sleep(1.0)
        latencies = [
            callee_trace.played[ts] - caller_trace.captured[ts]
            for ts in callee_trace.played
            if ts in caller_trace.captured
        ]
        assert len(latencies) >= 40
        assert set(callee_trace.played) <= set(caller_trace.captured)
        assert 0 <= min(latencies) and np.median(latencies) < 0.1
        assert caller.end_reason == "closed"

    run(main)


def test_one_frame_clock_sends_and_plays_without_drift():
    async def main() -> None:
        caller_trace, callee_trace = Trace(), Trace()
        caller = MediaSession(RUN.caller.keys, ToneSource(440), MemorySink(), trace=caller_trace)
        callee = MediaSession(RUN.callee.keys, ToneSource(1000), MemorySink(), trace=callee_trace)
        await caller.open(LOOPBACK)
        await callee.open(LOOPBACK)
        async with caller, callee:
            caller.connect(callee.local_address)
            callee.connect(caller.local_address)
            await asyncio.sleep(1.5)
        # frame k is captured at start + k frames, or a little later: a late tick catches
        # up, so lateness never accumulates and the count keeps up with the clock
        frame_s = 0.020
        for trace in (caller_trace, callee_trace):
            times = sorted(trace.captured.values())
            assert len(times) >= 1.5 / frame_s - 5
            lateness = [t - k * frame_s for k, t in enumerate(times)]
            assert max(lateness) - min(lateness) < 0.1 * TIMEOUT_SCALE
        # each tick sends, then plays: the callee plays at the instants it sends; except
        # under load, where a catch-up tick (several frames sent at one instant) owes its
        # plays until their datagrams are read, so they play at those datagrams' arrival,
        # before the next tick (transport/frame_clock.py)
        sent = sorted(callee_trace.captured.values())
        catch_up = {instant for instant, frames in Counter(sent).items() if frames > 1}
        for played in set(callee_trace.played.values()) - set(sent):
            ticks_before = bisect.bisect_right(sent, played)
            assert ticks_before > 0, f"played at {played} before the first tick"
            assert sent[ticks_before - 1] in catch_up, f"played at {played}, after no catch-up"

    run(main)


def read_wav(path: Path) -> Pcm:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels()) == (SAMPLE_RATE_HZ, 1)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


def test_wav_source_to_wav_sink_then_silence_when_the_source_ends(tmp_path):
    # 0.4 s of a 440 Hz tone in a WAV file, played over a call into another WAV file
    spoken = tmp_path / "spoken.wav"
    with WavFileSink(spoken) as sink, ToneSource(CALLER_TONE_HZ) as tone:
        for _ in range(20):
            sink.write_frame(tone.read_frame())

    async def main() -> None:
        heard = tmp_path / "heard.wav"
        caller = MediaSession(RUN.caller.keys, WavFileSource(spoken), MemorySink())
        callee = MediaSession(RUN.callee.keys, ToneSource(CALLEE_TONE_HZ), WavFileSink(heard))
        await caller.open(LOOPBACK)
        await callee.open(LOOPBACK)
        caller.connect(callee.local_address)
        callee.connect(caller.local_address)
        await asyncio.sleep(1.2)
        await caller.hangup()
        assert await asyncio.wait_for(callee.wait_ended(), SIGNAL_S) == "peer hangup"
        samples = read_wav(heard)  # the sink is closed: the file is complete
        assert 1.0 < len(samples) / SAMPLE_RATE_HZ < 1.3 + SIGNAL_S
        loud = np.abs(samples) > 1000
        first, last = np.argmax(loud), len(loud) - np.argmax(loud[::-1])
        assert (last - first) / SAMPLE_RATE_HZ == pytest.approx(0.4, abs=0.05)
        assert dominant_hz(samples[first:last]) == pytest.approx(CALLER_TONE_HZ, abs=5)
        assert rms(samples[last + 4800 :]) < 0.001  # silence after the file ended

    run(main)


def test_misuse_and_an_absent_peer():
    async def main() -> None:
        session = MediaSession(RUN.caller.keys, ToneSource(440), MemorySink())
        with pytest.raises(LocalProtocolError, match="not open"):
            session.connect(("127.0.0.1", 9))
        await session.open(LOOPBACK)
        with pytest.raises(LocalProtocolError, match="already open"):
            await session.open(LOOPBACK)
        with pytest.raises(LocalProtocolError, match="numeric IP"):
            session.connect(("localhost", 9))
        with pytest.raises(LocalProtocolError, match="unknown hang-up reason 'bored'"):
            await session.hangup("bored")
        with pytest.raises(LocalProtocolError, match="needs 960"):
            MediaSession(RUN.caller.keys, ToneSource(440, frame_ms=10), MemorySink())
        session.connect(("127.0.0.1", 9))  # nobody there: ICMP errors must not stop it
        with pytest.raises(LocalProtocolError, match="already connected"):
            session.connect(("127.0.0.1", 9))
        await asyncio.sleep(0.3)
        assert session.snapshot().packets_sent >= 10
        await session.hangup("shutdown")
        assert session.end_reason == "local hangup"
        await session.close()  # idempotent
        assert await session.wait_ended() == "local hangup"

    run(main)


@pytest.mark.parametrize(
    ("settings", "pad_to"),
    [
        pytest.param(MediaSettings(), 106, id="defaults"),
        pytest.param(MediaSettings(opus=OpusSettings(frame_ms=10)), 7 + 49, id="10ms"),
        pytest.param(MediaSettings(opus=OpusSettings(frame_ms=40)), 7 + 198, id="40ms"),
        pytest.param(MediaSettings(pad_to=80), 80, id="explicit"),
        pytest.param(MediaSettings(pad_to=0), 0, id="unpadded"),
    ],
)
def test_padding_follows_the_frame_unless_set(settings, pad_to):
    assert settings.packet_pad_to == pad_to
