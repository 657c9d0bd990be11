"""The jitter buffer's start-up depth and its drain in pauses (decision 0150).

``JitterBuffer(quiet_shrink=True)`` (the product's, through ``ReceiveStream``) fills
to ``QUIET_START_TARGET_MS`` before it plays, while the jitter is unknown, and sheds the
surplus by discarding quiet frames the caller found in a pause
(:meth:`JitterBuffer.shrink_quiet`) rather than received speech. Fake clock, scripted
arrivals; the last test runs real Opus through ``ReceiveStream``.
"""

from __future__ import annotations

import numpy as np

from pqcall.media.codec import OpusEncoder, OpusSettings
from pqcall.media.jitter import (
    QUIET_RUN_FRAMES,
    QUIET_SHRINK_WAIT_S,
    JitterBuffer,
    PlayoutAction,
    PlayoutDecision,
)
from pqcall.media.jitter_policy import (
    QUIET_START_TARGET_MS,
    QUIET_START_TARGET_S,
    START_TARGET_S,
)
from pqcall.media.pipeline import ReceiveStream

FRAME_S = 0.020
FRAME_SAMPLES = 960
START_FRAMES = QUIET_START_TARGET_MS // 20


def payload(seq: int) -> bytes:
    return b"frame-%d" % seq


def clean(buffer: JitterBuffer, count: int, *, quiet_from: int | None = None) -> list[int]:
    """Packets every 20 ms, a pop half a frame later; frames from ``quiet_from`` on are quiet.

    Returns the buffer's level (ms) after each tick.
    """
    levels = []
    quiet_run = 0
    for seq in range(count):
        buffer.push(seq, seq * FRAME_SAMPLES, payload(seq), seq * FRAME_S)
        now = seq * FRAME_S + FRAME_S / 2
        decision: PlayoutDecision | None = buffer.pop(now)
        while decision is not None and decision.action is PlayoutAction.PLAY:
            assert decision.seq is not None
            if quiet_from is None or decision.seq < quiet_from:
                quiet_run = 0
                break
            quiet_run += 1
            decision = buffer.shrink_quiet(now, quiet_run)
        levels.append(int(buffer.snapshot().buffered_delay_ms))
    return levels


def test_the_start_fills_deeper_with_silence_not_concealment():
    buffer = JitterBuffer(quiet_shrink=True)
    decisions = [
        (buffer.push(0, 0, payload(0), 0.0), buffer.pop(FRAME_S / 2))[1],
    ]
    for seq in range(1, 10):
        buffer.push(seq, seq * FRAME_SAMPLES, payload(seq), seq * FRAME_S)
        decisions.append(buffer.pop(seq * FRAME_S + FRAME_S / 2))
    actions = [d.action for d in decisions]
    # silent until the start target is queued, then every frame played in order
    assert actions[: START_FRAMES - 1] == [PlayoutAction.SILENCE] * (START_FRAMES - 1)
    assert set(actions[START_FRAMES - 1 :]) == {PlayoutAction.PLAY}
    assert buffer.snapshot().buffered_delay_ms == QUIET_START_TARGET_MS
    assert buffer.snapshot().concealed == 0
    # without quiet shrinking (and without time stretching) the start is one frame deep
    plain = JitterBuffer()
    plain.push(0, 0, payload(0), 0.0)
    assert plain.pop(FRAME_S / 2).action is PlayoutAction.PLAY


def test_the_surplus_drains_in_the_first_pause_by_quiet_frames_only():
    # speech past the start span (shorter than the wait for a pause), then quiet
    pause = round((QUIET_START_TARGET_S + QUIET_SHRINK_WAIT_S / 2) / FRAME_S)
    buffer = JitterBuffer(quiet_shrink=True)
    levels = clean(buffer, pause + 40, quiet_from=pause)
    stats = buffer.snapshot()
    # deep through the speech (nothing discarded there, though the start span ended) ...
    played_late = START_FRAMES - 1  # frame k plays at tick k + 3
    assert set(levels[START_FRAMES : pause + played_late]) == {QUIET_START_TARGET_MS}
    # ... and down to one frame in the pause, once it is QUIET_RUN_FRAMES long
    drained = pause + played_late + QUIET_RUN_FRAMES - 1
    assert levels[drained - 1] == QUIET_START_TARGET_MS
    assert levels[drained] == 20 and set(levels[drained:]) == {20}
    assert stats.shrink_dropped == START_FRAMES - 1
    assert stats.concealed == stats.skipped == 0


def test_a_short_pause_discards_nothing():
    buffer = JitterBuffer(quiet_shrink=True)
    speech = round(QUIET_START_TARGET_S / FRAME_S) + 20
    for seq in range(speech + QUIET_RUN_FRAMES + 20):
        buffer.push(seq, seq * FRAME_SAMPLES, payload(seq), seq * FRAME_S)
        now = seq * FRAME_S + FRAME_S / 2
        decision = buffer.pop(now)
        run = decision.seq - speech + 1 if decision.seq is not None else 0
        if 0 < run < QUIET_RUN_FRAMES:  # quiet frames, but fewer than a pause's
            assert buffer.shrink_quiet(now, run) is None
    assert buffer.snapshot().shrink_dropped == 0


def test_without_a_pause_the_surplus_goes_after_the_wait_by_discarding():
    buffer = JitterBuffer(quiet_shrink=True)
    count = round((QUIET_START_TARGET_S + QUIET_SHRINK_WAIT_S) / FRAME_S) + 100
    levels = clean(buffer, count)
    end_of_start = round(QUIET_START_TARGET_S / FRAME_S)
    # no quiet frame: the surplus is held through the wait, then discarded
    wait_end = end_of_start + round(QUIET_SHRINK_WAIT_S / FRAME_S)
    assert min(levels[START_FRAMES : wait_end - 30]) == QUIET_START_TARGET_MS
    assert levels[-1] == 20
    assert buffer.snapshot().shrink_dropped == START_FRAMES - 1
    assert buffer.snapshot().concealed == 0


def test_a_lost_frame_with_fec_in_the_next_packet_is_recovered_not_skipped():
    # with a surplus held, the plain buffer skips a lost frame for free; with quiet
    # shrinking the FEC copy is played (real audio) and the surplus waits for a pause
    lost = round(START_TARGET_S / FRAME_S)  # the plain buffer's start span (2 s) just over
    outcomes = {}
    for quiet in (False, True):
        buffer = JitterBuffer(quiet_shrink=quiet, start_target_ms=QUIET_START_TARGET_MS)
        for seq in range(lost + 20):
            if seq != lost:
                buffer.push(seq, seq * FRAME_SAMPLES, payload(seq), seq * FRAME_S)
            buffer.pop(seq * FRAME_S + FRAME_S / 2)
        stats = buffer.snapshot()
        outcomes[quiet] = (stats.fec_recovered, stats.skipped)
    assert outcomes[False] == (0, 1)
    assert outcomes[True] == (1, 0)


def test_receive_stream_drains_its_start_in_a_pause_with_real_opus():
    settings = OpusSettings()
    encoder = OpusEncoder(settings)
    t = np.arange(FRAME_SAMPLES) / 48_000
    tone = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    quiet = np.zeros(FRAME_SAMPLES, np.int16)
    speech = round(QUIET_START_TARGET_S / FRAME_S) + 25
    frames = [tone] * speech + [quiet] * 25 + [tone] * 50
    stream = ReceiveStream(20)
    levels = []
    for seq, pcm in enumerate(frames):
        stream.receive(seq, seq * FRAME_SAMPLES, encoder.encode(pcm), seq * FRAME_S)
        stream.play(seq * FRAME_S + FRAME_S / 2)
        levels.append(stream.jitter_stats.buffered_delay_ms)
    stats = stream.jitter_stats
    assert max(levels[:speech]) == QUIET_START_TARGET_MS
    assert levels[-1] == 20.0
    assert stats.shrink_dropped == START_FRAMES - 1
    assert stats.concealed == stats.skipped == 0
