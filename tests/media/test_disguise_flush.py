"""Unmuting flushes the voice disguise: the first audio sent is not speech from before the mute.

The pipeline skips the processing stages while muted, so the disguise's 40 ms
(:data:`~pqcall.media.disguise.LOOKAHEAD_SAMPLES`) of held audio would come out
first after the unmute; ``MediaPipeline.set_muted`` flushes it (issue 23).
Real Opus, real libsonic.
"""

from __future__ import annotations

import numpy as np

from pqcall.media.codec import SAMPLE_RATE_HZ, OpusSettings, Pcm
from pqcall.media.disguise import LOOKAHEAD_SAMPLES, DisguisedProcessing, create_disguise
from pqcall.media.pipeline import MediaPipeline

FRAME = SAMPLE_RATE_HZ // 50
TONE = (8000 * np.sin(np.arange(FRAME * 25) * 2 * np.pi * 180 / SAMPLE_RATE_HZ)).astype(np.int16)


class Recording:
    """The disguise stage, its output recorded (``flush`` offered only when ``flushes``)."""

    def __init__(self, flushes: bool) -> None:
        self.stage = DisguisedProcessing(None, create_disguise("high"))
        self.out: list[Pcm] = []
        if flushes:
            self.flush = self.stage.flush

    def process_capture(self, pcm: Pcm) -> Pcm:
        out = self.stage.process_capture(pcm)
        self.out.append(out)
        return out

    def observe_playout(self, pcm: Pcm) -> None:
        self.stage.observe_playout(pcm)


def after_unmute(flushes: bool) -> np.ndarray:
    """The stage's output for the 60 ms of silence captured right after an unmute."""
    recording = Recording(flushes)
    pipeline = MediaPipeline(OpusSettings(), processing=recording)
    for i in range(0, len(TONE), FRAME):  # half a second of speech-level tone
        pipeline.capture(TONE[i : i + FRAME], 0.0)
    pipeline.set_muted(True)
    for _ in range(5):
        pipeline.capture(TONE[:FRAME], 0.0)  # muted: silence sent, the stage skipped
    spoken = len(recording.out)
    pipeline.set_muted(False)
    for _ in range(3):
        pipeline.capture(np.zeros(FRAME, np.int16), 0.0)
    return np.concatenate(recording.out[spoken:])


def test_unmute_sends_nothing_from_before_the_mute() -> None:
    held = after_unmute(flushes=False)
    assert np.abs(held[:LOOKAHEAD_SAMPLES]).max() > 1000  # without the flush: the old tone
    flushed = after_unmute(flushes=True)
    assert len(flushed) == 3 * FRAME
    assert not flushed.any()  # zeros: the delay, then the silence captured after the unmute


def test_flush_keeps_the_delay() -> None:
    stage = create_disguise("low")
    for i in range(0, len(TONE), FRAME):
        stage.process(TONE[i : i + FRAME])
    stage.flush()
    assert stage.queued_samples == LOOKAHEAD_SAMPLES
    out = np.concatenate([stage.process(TONE[i : i + FRAME]) for i in range(0, 10 * FRAME, FRAME)])
    assert not out[:LOOKAHEAD_SAMPLES].any()
    assert np.abs(out[LOOKAHEAD_SAMPLES:]).max() > 1000  # then the new audio, disguised
