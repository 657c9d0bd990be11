"""Speech quality for the media benchmark: PESQ wideband of received audio.

Scope: load the reference speech, bring received audio to the reference's
rate, align it, and score it with ITU-T P.862.2 (PESQ wideband, the ``pesq``
package). Nothing here knows about sockets or sessions.

Alignment, and why: the received signal starts later than the reference by
the call's setup and pipeline delay (hundreds of ms of leading silence) and
PESQ's own alignment only searches a limited range. So the offset is found
first, as the lag that maximises the cross-correlation of received and
reference (computed with an FFT, lags >= 0 only: audio never arrives before
it is sent); the received signal is trimmed at that lag and cut or
zero-padded to the reference's length. PESQ then does its own per-utterance
alignment on top, which absorbs the small shifts a jitter buffer makes when
it grows or shrinks during the call.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import soxr  # type: ignore[import-untyped]

from pqcall.exceptions import PqcallError

__all__ = [
    "PESQ_WB_MAX",
    "PESQ_WB_MIN",
    "REFERENCE_RATE_HZ",
    "SAMPLES_DIR",
    "align",
    "check_pesq",
    "load_reference",
    "pesq_wb",
    "resample",
]

REFERENCE_RATE_HZ: Final = 16_000
"""PESQ wideband scores 16 kHz audio."""
PESQ_WB_MIN: Final = 1.0
"""Lowest score the benchmark reports (P.862.2's mapping floors near 1.04)."""
PESQ_WB_MAX: Final = 4.65
"""Highest score (P.862.2's mapping tops out near 4.64)."""
SAMPLES_DIR: Final = Path(__file__).resolve().parent.parent / "media" / "samples"
"""The shipped speech samples."""

Samples = npt.NDArray[np.int16]


def load_reference(path: Path, seconds: float | None = None) -> Samples:
    """The first ``seconds`` (all if None) of a 16 kHz mono 16-bit WAV file.

    Raises:
        ValueError: the file is not 16 kHz mono 16-bit PCM.
    """
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (
            REFERENCE_RATE_HZ,
            1,
            2,
        ):
            raise ValueError(f"{path} is not 16 kHz mono 16-bit PCM")
        frames = wav.getnframes()
        if seconds is not None:
            frames = min(frames, round(seconds * REFERENCE_RATE_HZ))
        raw = wav.readframes(frames)
    return np.frombuffer(raw, "<i2").astype(np.int16)


def resample(samples: Samples, from_hz: int, to_hz: int) -> Samples:
    """``samples`` at another rate (soxr, high quality)."""
    if from_hz == to_hz:
        return samples
    out: Samples = soxr.resample(samples, from_hz, to_hz)
    return out


def align(received: Samples, reference: Samples) -> tuple[Samples, int]:
    """Cut ``received`` to the stretch that lines up with ``reference``.

    Returns:
        The aligned signal (exactly ``len(reference)`` samples, zero-padded
        if the received audio ends early) and the lag in samples.
    """
    if len(received) == 0 or not np.any(received):
        return np.zeros(len(reference), dtype=np.int16), 0
    size = 1 << (len(received) + len(reference)).bit_length()
    spectrum = np.fft.rfft(received.astype(np.float64), size) * np.conj(
        np.fft.rfft(reference.astype(np.float64), size)
    )
    correlation = np.fft.irfft(spectrum, size)[: len(received)]  # lags 0 .. len-1
    lag = int(np.argmax(correlation))
    aligned = np.zeros(len(reference), dtype=np.int16)
    tail = received[lag : lag + len(reference)]
    aligned[: len(tail)] = tail
    return aligned, lag


def check_pesq() -> None:
    """Fail early, with one line for the user, if the ``pesq`` package is missing.

    Raises:
        PqcallError: ``pesq`` cannot be imported.
    """
    try:
        import pesq  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise PqcallError("the media benchmark needs the pesq package: pip install pesq") from None


def pesq_wb(reference: Samples, degraded: Samples) -> float:
    """PESQ-WB (MOS-LQO) of ``degraded`` against ``reference``, both 16 kHz and aligned.

    A degraded signal PESQ finds no speech in (e.g. all silence) scores the
    floor, :data:`PESQ_WB_MIN`, rather than raising.

    Raises:
        PqcallError: the ``pesq`` package is missing.
    """
    check_pesq()
    from pesq import NoUtterancesError, pesq  # an optional dependency: imported on use

    if not np.any(degraded):
        return PESQ_WB_MIN  # pesq's level normalisation divides by zero on digital silence
    try:
        score = float(
            pesq(
                REFERENCE_RATE_HZ,
                reference.astype(np.float32),
                degraded.astype(np.float32),
                "wb",
            )
        )
    except NoUtterancesError:
        return PESQ_WB_MIN
    return min(max(score, PESQ_WB_MIN), PESQ_WB_MAX)
