"""Time stretching (decision 0141): libsonic through ``media/time_stretch.py``, the speed
policy, and a receive stream that plays at the jitter buffer's speed, on a fake clock."""

from __future__ import annotations

import numpy as np
import pytest

from pqcall.bench.quality import REFERENCE_RATE_HZ, SAMPLES_DIR, load_reference, resample
from pqcall.exceptions import CodecError, LocalProtocolError
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusEncoder, OpusSettings
from pqcall.media.jitter import JitterBuffer, PlayoutState
from pqcall.media.jitter_policy import (
    ACCELERATE_SPEED,
    LEVEL_WINDOW_S,
    START_TARGET_MS,
    START_TARGET_S,
    LevelWindow,
    playout_speed,
)
from pqcall.media.pipeline import ReceiveStream
from pqcall.media.time_stretch import TimeStretcher, available

FRAME_S = 0.020
SAMPLES = 960


def speech_48k(seconds: float) -> np.ndarray:
    alice = load_reference(SAMPLES_DIR / "alice.wav", seconds)
    return resample(alice, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)


def test_libsonic_is_there():
    # espeak-ng depends on it, and .ci/run installs espeak-ng: no silent fallback in CI
    assert available()


def test_speed_one_passes_samples_through_unchanged_and_at_once():
    stretcher = TimeStretcher()
    pcm = speech_48k(0.5)
    for start in range(0, len(pcm) - SAMPLES + 1, SAMPLES):
        frame = pcm[start : start + SAMPLES]
        stretcher.write(frame)
        assert np.array_equal(stretcher.read(SAMPLES), frame)
    assert stretcher.available_samples == 0


@pytest.mark.parametrize("speed", [ACCELERATE_SPEED, 0.9])
def test_other_speeds_change_the_duration_by_their_factor_and_hold_little(speed):
    stretcher = TimeStretcher()
    stretcher.set_speed(speed)
    pcm = speech_48k(4.0)
    written = read = 0
    held = []
    for start in range(0, len(pcm) - SAMPLES + 1, SAMPLES):
        stretcher.write(pcm[start : start + SAMPLES])
        written += SAMPLES
        read += len(stretcher.read(4 * SAMPLES))
        held.append(written / speed - read)  # output still owed, in output samples
    assert written / read == pytest.approx(speed, rel=0.02)
    assert max(held) < 0.05 * SAMPLE_RATE_HZ  # under 50 ms inside libsonic


def test_speed_and_input_are_checked():
    stretcher = TimeStretcher()
    with pytest.raises(CodecError):
        stretcher.set_speed(3.0)
    with pytest.raises(LocalProtocolError):
        stretcher.write(np.zeros(SAMPLES, dtype=np.float32))


def test_speed_policy():
    target = 3
    assert playout_speed(level=3, filtered_level=3, target=target) == 1.0
    assert playout_speed(level=5, filtered_level=4, target=target) == ACCELERATE_SPEED
    assert playout_speed(level=5, filtered_level=0, target=target) == 1.0  # no evidence yet
    # output waiting in the stretcher counts as level
    assert playout_speed(3, 3, target, extra_frames=0.5) == 1.0
    assert playout_speed(3, 3, target, extra_frames=1.0) == ACCELERATE_SPEED
    # never slower: deceleration only added delay (decision 0141)
    assert playout_speed(level=1, filtered_level=1, target=target) == 1.0
    assert playout_speed(level=0, filtered_level=0, target=target) == 1.0


def test_level_window_minimum_needs_a_whole_window():
    window = LevelWindow()
    window.record(4, 0.0)
    assert window.minimum(0.1) == 0
    window.record(5, LEVEL_WINDOW_S)
    assert window.minimum(LEVEL_WINDOW_S) == 4


def backlog_run(buffer: JitterBuffer, *, pops_per_tick: int = 1) -> list[float]:
    """Ten frames played steadily, then 12 more arrive at once after a 240 ms stall."""
    speeds = []
    seq = 0
    for tick in range(200):
        now = tick * FRAME_S + 0.01
        if tick < 10 or (tick >= 22 and seq < 200):
            due = 10 if tick < 10 else min(tick, 199)
            while seq <= due and (tick >= 22 or seq <= tick):
                buffer.push(seq, seq * SAMPLES, b"f%d" % seq, now - 0.005)
                seq += 1
        for _ in range(pops_per_tick):
            buffer.pop(now)
        speeds.append(buffer.playout_speed(now))
    return speeds


def test_buffer_with_time_stretch_drains_by_speed_not_by_discarding():
    plain = JitterBuffer(20)
    plain_speeds = backlog_run(plain)
    assert set(plain_speeds) == {1.0}  # the speed is 1 unless time stretching is on
    assert plain.snapshot().shrink_dropped > 0  # the backlog cost received frames

    stretched = JitterBuffer(20, time_stretch=True)
    speeds = backlog_run(stretched)
    assert stretched.snapshot().shrink_dropped == 0
    assert ACCELERATE_SPEED in speeds
    assert stretched.state is PlayoutState.PLAYING


def encoded_frames(seconds: float) -> list[bytes]:
    encoder = OpusEncoder(OpusSettings())
    pcm = speech_48k(seconds)
    return [encoder.encode(pcm[i : i + SAMPLES]) for i in range(0, len(pcm) - SAMPLES + 1, SAMPLES)]


def test_stretched_stream_catches_up_a_backlog_without_losing_frames():
    packets = encoded_frames(4.0)  # 200 frames
    stream = ReceiveStream(20, time_stretch=True)
    pushed = 0
    levels = []
    for tick in range(260):
        now = tick * FRAME_S + 0.01
        # steady for 1 s, then nothing for 160 ms, then the held packets at once, then steady
        due = tick if tick < 50 or tick >= 58 else 49
        while pushed <= min(due, len(packets) - 1):
            stream.receive(pushed, pushed * SAMPLES, packets[pushed], now - 0.005)
            pushed += 1
        pcm, _ = stream.play(now)
        assert len(pcm) == SAMPLES and pcm.dtype == np.int16
        levels.append(stream.jitter_stats.buffered_delay_ms)
    stats = stream.jitter_stats
    assert stats.shrink_dropped == 0 and stats.late_dropped == 0
    assert stats.played == len(packets)  # every received frame was heard
    # the delay built up by the stall comes down by playing faster (to the raised target)
    assert max(levels[58:70]) > 140
    assert max(levels[150:200]) < max(levels[58:70])


def test_stretched_stream_starts_deeper_and_drains_to_the_minimum_without_discarding():
    packets = encoded_frames(5.0)  # 250 frames, a clean path
    stream = ReceiveStream(20, time_stretch=True)
    levels = []
    for k, packet in enumerate(packets):
        now = k * FRAME_S + 0.01
        stream.receive(k, k * SAMPLES, packet, now - 0.005)
        stream.play(now)
        levels.append(stream.jitter_stats.buffered_delay_ms)
    start_ticks = round(START_TARGET_S / FRAME_S)
    assert min(levels[20:start_ticks]) >= START_TARGET_MS  # deeper while the jitter is unknown
    assert max(levels[start_ticks + 40 :]) <= 40  # then back to the minimum, by speed
    stats = stream.jitter_stats
    assert stats.shrink_dropped == 0 and stats.concealed == 0

    plain = JitterBuffer(20)  # without time stretching: no deeper start
    for k in range(20):
        plain.push(k, k * SAMPLES, b"f", k * FRAME_S)
        plain.pop(k * FRAME_S + 0.01)
    assert plain.snapshot().target_delay_ms == 20
