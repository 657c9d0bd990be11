"""Voice disguise: the send side shifts the speaker's pitch and formants before encoding.

Scope: :class:`VoiceDisguise`, a sans-I/O stage over Debian's ``libsonic``
(Bill Cox's Sonic, Apache-2.0, pitch-synchronous overlap-add for speech;
``libsonic0`` comes with ``espeak-ng``). Sonic's pitch change resamples a
time-stretched signal, so the pitch *and* the formants (the vocal tract's
resonances, what speaker recognisers lean on) move by one ratio while the
timing of the words stays. No signal processing is written here: this module
moves int16 samples through ctypes and keeps a fixed delay. The library
choice, and the others measured, are in
``docs/decisions/0800-voice-disguise.md``.

Presets (:data:`PRESETS`) give a range of pitch ratios; :func:`draw_parameters`
picks one ratio per call (``secrets``-backed by default), so two calls of one
person do not share one disguised voice.

Contract: :meth:`VoiceDisguise.process` takes a 1-D int16 mono frame at
48 kHz and returns a frame of the same length, delayed by exactly
:data:`LOOKAHEAD_SAMPLES` (40 ms): the first call's output starts with that
many zeros and Sonic's output queues behind them. Sonic holds about two of
its longest pitch periods (31 ms at 48 kHz) before it releases output, now
and then a little more when lowering; :meth:`VoiceDisguise.flush` drops it
(the pipeline calls it on unmute, see ``MediaPipeline.set_muted``). When the
queue runs dry the missing samples are zeros (:attr:`VoiceDisguise.underruns`
counts them) and as many samples are dropped from the next output beyond the
delay, so the delay stays 40 ms (measured on the corpus's ten voices: none when raising; when
lowering, 0-7 ms of zeros in 9 s, in a few short gaps).
:class:`DisguisedProcessing` chains the disguise after another
:class:`~pqcall.media.pipeline.AudioProcessing` (echo cancellation first, so
the canceller sees the microphone as captured) and is itself one.

:func:`available` says whether libsonic loads; :func:`create_disguise` raises
:class:`~pqcall.exceptions.PqcallError` (one line)
when a preset is asked for and it does not.
"""

from __future__ import annotations

import random
import secrets
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from pqcall.exceptions import PqcallError
from pqcall.media import sonic
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm, check_pcm

if TYPE_CHECKING:
    from pqcall.media.pipeline import AudioProcessing

__all__ = [
    "DEFAULT_PRESET",
    "LOOKAHEAD_SAMPLES",
    "PRESETS",
    "DisguiseParameters",
    "DisguisePreset",
    "DisguisedProcessing",
    "VoiceDisguise",
    "available",
    "create_disguise",
    "draw_parameters",
    "envelope_correlation",
    "with_disguise",
]

LOOKAHEAD_SAMPLES: Final = SAMPLE_RATE_HZ * 40 // 1000
"""The stage's fixed delay: 40 ms at 48 kHz (Sonic's hold, about 31 ms, plus margin)."""
INSTALL_HINT: Final = "voice disguise needs libsonic: apt-get install libsonic0"


@dataclass(frozen=True, slots=True)
class DisguisePreset:
    """A named range the per-call pitch ratio is drawn from."""

    name: str
    low: float
    """Smallest pitch (and formant) ratio."""
    high: float
    """Largest pitch (and formant) ratio."""
    description: str


PRESETS: Final = {
    p.name: p
    for p in (
        DisguisePreset("low", 0.70, 0.80, "lower, larger-sounding voice"),
        DisguisePreset("high", 1.25, 1.40, "higher, smaller-sounding voice"),
    )
}
"""The presets ``--voice-disguise`` accepts."""
DEFAULT_PRESET: Final = "low"


@dataclass(frozen=True, slots=True)
class DisguiseParameters:
    """What one call's disguise does (drawn once per call)."""

    preset: str
    pitch_ratio: float
    """Pitch and formants are multiplied by this."""


def draw_parameters(preset: str, rng: random.Random | None = None) -> DisguiseParameters:
    """One call's parameters: a ratio drawn uniformly within ``preset``'s range.

    Raises:
        PqcallError: no such preset.
    """
    try:
        spec = PRESETS[preset]
    except KeyError:
        raise PqcallError(
            f"no voice disguise preset {preset!r} (choose from {', '.join(PRESETS)})"
        ) from None
    source = rng if rng is not None else secrets.SystemRandom()
    return DisguiseParameters(preset, source.uniform(spec.low, spec.high))


_LIB: Final = sonic.LIB


def available() -> bool:
    """Whether libsonic can be loaded (the disguise works)."""
    return _LIB is not None


class VoiceDisguise:
    """Pitch and formant shift of a 48 kHz mono stream, at a fixed 40 ms delay."""

    __slots__ = ("_debt", "_lib", "_queue", "_read", "_stream", "parameters", "underruns")

    def __init__(self, parameters: DisguiseParameters) -> None:
        if _LIB is None:
            raise PqcallError(INSTALL_HINT)
        self._lib = _LIB
        self.parameters = parameters
        self.underruns = 0
        """Output samples that were zeros because Sonic held more than the delay."""
        self._debt = 0  # of those, samples not yet dropped from later output
        self._stream: int | None = self._new_stream()
        self._queue: deque[npt.NDArray[np.int16]] = deque([np.zeros(LOOKAHEAD_SAMPLES, np.int16)])
        self._read = np.zeros(SAMPLE_RATE_HZ // 10, np.int16)

    def _new_stream(self) -> int:
        stream: int | None = self._lib.sonicCreateStream(SAMPLE_RATE_HZ, 1)
        if not stream:
            raise MemoryError("libsonic could not create a stream")
        self._lib.sonicSetPitch(stream, self.parameters.pitch_ratio)
        return stream

    def flush(self) -> None:
        """Forget what is held: the next output is :data:`LOOKAHEAD_SAMPLES` zeros, then new audio.

        For a gap in the input (the pipeline skips the stage while muted): without it,
        the first 40 ms after the gap would be audio from before it.
        """
        old, self._stream = self._stream, self._new_stream()
        self._lib.sonicDestroyStream(old)
        self._queue = deque([np.zeros(LOOKAHEAD_SAMPLES, np.int16)])
        self._debt = 0

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream:
            self._lib.sonicDestroyStream(stream)
            self._stream = None

    @property
    def queued_samples(self) -> int:
        """Output samples waiting (the delay now; :data:`LOOKAHEAD_SAMPLES` in steady state)."""
        return sum(len(chunk) for chunk in self._queue) + int(
            self._lib.sonicSamplesAvailable(self._stream)
        )

    def process(self, pcm: Pcm) -> Pcm:
        """The disguised frame, as long as ``pcm``, :data:`LOOKAHEAD_SAMPLES` behind it."""
        frame = np.ascontiguousarray(check_pcm(pcm))
        if len(frame) and not self._lib.sonicWriteShortToStream(
            self._stream, frame.ctypes.data, len(frame)
        ):
            raise MemoryError("libsonic could not take more samples")
        while True:
            count = self._lib.sonicReadShortFromStream(
                self._stream, self._read.ctypes.data, len(self._read)
            )
            if count <= 0:
                break
            self._queue.append(self._read[:count].copy())
        if self._debt:  # an earlier underrun padded zeros: drop what is beyond the delay
            spare = sum(len(chunk) for chunk in self._queue) - len(frame)
            drop = min(self._debt, max(spare, 0))
            self._take(drop, count=False)
            self._debt -= drop
        return self._take(len(frame))

    def _take(self, samples: int, *, count: bool = True) -> Pcm:
        out = np.zeros(samples, np.int16)
        filled = 0
        while filled < samples and self._queue:
            chunk = self._queue[0]
            n = min(samples - filled, len(chunk))
            out[filled : filled + n] = chunk[:n]
            filled += n
            if n == len(chunk):
                self._queue.popleft()
            else:
                self._queue[0] = chunk[n:]
        if count and filled < samples:
            self.underruns += samples - filled
            self._debt += samples - filled
        return out


class DisguisedProcessing:
    """An :class:`~pqcall.media.pipeline.AudioProcessing`: ``inner`` first, then the disguise."""

    __slots__ = ("disguise", "inner")

    def __init__(self, inner: AudioProcessing | None, disguise: VoiceDisguise) -> None:
        self.inner = inner
        self.disguise = disguise

    def process_capture(self, pcm: Pcm) -> Pcm:
        if self.inner is not None:
            pcm = self.inner.process_capture(pcm)
        return self.disguise.process(pcm)

    def observe_playout(self, pcm: Pcm) -> None:
        if self.inner is not None:
            self.inner.observe_playout(pcm)

    def flush(self) -> None:
        """After a gap in the capture (unmute): the disguise forgets the audio it held."""
        self.disguise.flush()


def create_disguise(preset: str, rng: random.Random | None = None) -> VoiceDisguise:
    """A stage with parameters drawn for one call from ``preset``.

    Raises:
        PqcallError: no such preset, or libsonic is missing.
    """
    return VoiceDisguise(draw_parameters(preset, rng))


def with_disguise(
    inner: AudioProcessing | None, preset: str | None
) -> AudioProcessing | DisguisedProcessing | None:
    """``inner`` unchanged when ``preset`` is None, else ``inner`` followed by a new disguise."""
    if preset is None:
        return inner
    return DisguisedProcessing(inner, create_disguise(preset))


def envelope_correlation(
    original: npt.NDArray[np.int16],
    disguised: npt.NDArray[np.int16],
    delay_samples: int = LOOKAHEAD_SAMPLES,
    frame_samples: int = SAMPLE_RATE_HZ // 50,
) -> float:
    """Pearson correlation of the 20 ms RMS envelopes, ``disguised`` advanced by ``delay_samples``.

    Speech timing and syllables survive a disguise when this is high (issue 23
    asks for at least 0.7).
    """
    a = original.astype(np.float64)
    b = disguised.astype(np.float64)[delay_samples:]
    n = min(len(a), len(b)) // frame_samples
    if n < 2:
        raise ValueError("signals too short for an envelope")
    ea = np.sqrt(np.mean(a[: n * frame_samples].reshape(n, frame_samples) ** 2, axis=1))
    eb = np.sqrt(np.mean(b[: n * frame_samples].reshape(n, frame_samples) ** 2, axis=1))
    return float(np.corrcoef(ea, eb)[0, 1])
