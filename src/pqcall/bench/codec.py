"""Codec benchmark: what the Opus encoder costs per frame, capped VBR against CBR.

``python -m pqcall.bench codec [--quick]`` (or ``pqcall bench codec``) encodes
the benchmark's speech (``media/samples/alice.wav`` and ``bob.wav``, 48 kHz,
20 ms frames) with pqcall's default settings, where the bitrate is variable
under a hard cap of the packet (:attr:`OpusSettings.vbr`), and, as the
baseline, the same settings at a constant bitrate, which fills every packet
exactly. Two encoder states, as a call runs them
(:mod:`pqcall.transport.media_protocol`): a clean path (complexity
``CALM_COMPLEXITY``, no FEC) and a lossy one (complexity 10, in-band FEC
planned for 20 % loss). For each: CPU time per frame (the best of a few
passes over the speech, so a warm encoder) and Opus bytes per frame (mean
and largest; the padding inside the encryption makes every packet the size of
the cap on the wire either way).

Runtime: a few seconds (``--quick``: one pass over 5 s of speech).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Final

import numpy as np

from pqcall.bench.quality import REFERENCE_RATE_HZ, SAMPLES_DIR, load_reference, resample
from pqcall.bench.report import Figure
from pqcall.media.codec import SAMPLE_RATE_HZ, OpusEncoder, OpusSettings, Pcm
from pqcall.transport.adaptation import CALM_COMPLEXITY, MAX_COMPLEXITY

PASSES: Final = 3
"""Passes over the speech; the fastest counts."""
QUICK_SPEECH_S: Final = 5.0
LOSSY_EXPECTED_LOSS_PERCENT: Final = 20
BASELINE: Final = "constant bitrate, same settings"


def _frames(quick: bool) -> list[Pcm]:
    seconds = QUICK_SPEECH_S if quick else None
    frames: list[Pcm] = []
    for name in ("alice.wav", "bob.wav"):
        speech = load_reference(SAMPLES_DIR / name, seconds)
        pcm = resample(speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ)
        samples = OpusSettings().frame_samples
        frames += [pcm[i : i + samples] for i in range(0, len(pcm) - samples + 1, samples)]
    return frames


def _encode(settings: OpusSettings, frames: Sequence[Pcm], passes: int) -> tuple[float, list[int]]:
    """Best CPU seconds per frame over ``passes`` fresh encoders, and the packet sizes."""
    best = float("inf")
    sizes: list[int] = []
    for _ in range(passes):
        encoder = OpusEncoder(settings)
        start = time.process_time()
        sizes = [len(encoder.encode(frame)) for frame in frames]
        best = min(best, (time.process_time() - start) / len(frames))
    return best, sizes


def run(*, quick: bool = False) -> list[Figure]:
    """Encode the speech both ways in both states; the figures with CBR as the baseline."""
    frames = _frames(quick)
    passes = 1 if quick else PASSES
    states = (
        ("clean path", OpusSettings(complexity=CALM_COMPLEXITY)),
        (
            "lossy path",
            OpusSettings(
                complexity=MAX_COMPLEXITY, expected_loss_percent=LOSSY_EXPECTED_LOSS_PERCENT
            ),
        ),
    )
    figures: list[Figure] = []
    for state, settings in states:
        vbr_s, vbr_sizes = _encode(settings, frames, passes)
        cbr_s, cbr_sizes = _encode(replace(settings, vbr=False), frames, passes)
        label = f"{state}, complexity {settings.complexity}"
        figures += [
            Figure(f"encode CPU per frame, {label}", 1e6 * vbr_s, "us", BASELINE, 1e6 * cbr_s),
            Figure(
                f"Opus bytes per frame (mean), {label}",
                float(np.mean(vbr_sizes)),
                "bytes",
                BASELINE,
                float(np.mean(cbr_sizes)),
            ),
            Figure(
                f"Opus bytes per frame (largest), {label}",
                float(max(vbr_sizes)),
                "bytes",
                BASELINE,
                float(max(cbr_sizes)),
            ),
        ]
    return figures
