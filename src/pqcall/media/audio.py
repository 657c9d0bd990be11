"""Audio sources and sinks: the two protocols, and WAV files, tones, silence, null.

Scope: everything that produces or consumes :data:`~pqcall.media.codec.Pcm`
(mono 48 kHz int16 frames) at the edges of the media path. Sound devices live
in :mod:`pqcall.media.devices` and follow the same two protocols; the factory
that opens whichever one a CLI spec names is :mod:`pqcall.media.audio_spec`.

Sources are pull-based: :meth:`AudioSource.read_frame` returns at once, and
pacing in real time is the caller's job (the session reads one frame per
tick of its clock; a benchmark may read as fast as it likes). A sink takes
frames of any length as they come.
"""

from __future__ import annotations

import enum
import logging
import math
import wave
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Protocol, Self

import numpy as np
import soxr  # type: ignore[import-untyped]

from pqcall.exceptions import DeviceError
from pqcall.media.codec import (
    CHANNELS,
    DEFAULT_FRAME_MS,
    SAMPLE_RATE_HZ,
    SAMPLE_WIDTH_BYTES,
    Pcm,
    check_pcm,
    samples_per_frame,
    silence,
)

__all__ = [
    "DEFAULT_TONE_AMPLITUDE",
    "AudioSink",
    "AudioSource",
    "NullSink",
    "OnEnd",
    "SilenceSource",
    "ToneSource",
    "WavFileSink",
    "WavFileSource",
    "close_all",
]

logger = logging.getLogger(__name__)

DEFAULT_TONE_AMPLITUDE: Final = 0.5
"""Peak of a tone as a fraction of full scale."""
FULL_SCALE: Final = 32_767
WAV_SUFFIX: Final = ".wav"
# how many input frames a WAV source reads from the file at a time
_WAV_READ_FRAMES: Final = 4_096


class AudioSource(Protocol):
    """Produces frames of PCM on demand."""

    @property
    def frame_samples(self) -> int:
        """Samples in every frame :meth:`read_frame` returns."""
        ...

    def read_frame(self) -> Pcm | None:
        """Return the next frame at once, or None when the source has ended for good."""
        ...

    def close(self) -> None:
        """Release the source; calling it again does nothing."""
        ...


class AudioSink(Protocol):
    """Consumes frames of PCM."""

    def write_frame(self, pcm: Pcm) -> None:
        """Take one frame of any length; never blocks on the caller."""
        ...

    def close(self) -> None:
        """Finish and release the sink; calling it again does nothing."""
        ...


class ClosingMixin:
    """Context-manager support: ``with`` calls ``close()`` on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class OnEnd(enum.Enum):
    """What a WAV source does after its last sample."""

    STOP = "stop"
    """:meth:`~WavFileSource.read_frame` returns None."""
    SILENCE = "silence"
    """Silent frames forever."""
    LOOP = "loop"
    """Start again from the beginning."""


class SilenceSource(ClosingMixin):
    """Zeros, forever."""

    def __init__(self, frame_ms: int = DEFAULT_FRAME_MS) -> None:
        self._frame_samples = samples_per_frame(frame_ms)

    @property
    def frame_samples(self) -> int:
        """Samples in every frame."""
        return self._frame_samples

    def read_frame(self) -> Pcm:
        """A new silent frame."""
        return silence(self._frame_samples)

    def close(self) -> None:
        """Nothing to release."""


class ToneSource(ClosingMixin):
    """A sine wave, forever, continuous in phase from frame to frame."""

    def __init__(
        self,
        frequency_hz: float,
        amplitude: float = DEFAULT_TONE_AMPLITUDE,
        frame_ms: int = DEFAULT_FRAME_MS,
    ) -> None:
        """Make a tone source.

        Raises:
            DeviceError: the frequency is not in (0, 24000) Hz or the amplitude
                not in [0, 1].
        """
        if not 0 < frequency_hz < SAMPLE_RATE_HZ / 2:
            raise DeviceError(
                f"tone frequency must be between 0 and {SAMPLE_RATE_HZ // 2} Hz, "
                f"got {frequency_hz:g}"
            )
        if not 0.0 <= amplitude <= 1.0:
            raise DeviceError(f"tone amplitude must be between 0 and 1, got {amplitude:g}")
        self.frequency_hz = frequency_hz
        """Frequency of the sine."""
        self.amplitude = amplitude
        """Peak as a fraction of full scale."""
        self._frame_samples = samples_per_frame(frame_ms)
        self._phase_step = 2 * math.pi * frequency_hz / SAMPLE_RATE_HZ
        self._phase = 0.0

    @property
    def frame_samples(self) -> int:
        """Samples in every frame."""
        return self._frame_samples

    def read_frame(self) -> Pcm:
        """The next frame of the tone."""
        phases = self._phase + self._phase_step * np.arange(self._frame_samples)
        self._phase = (self._phase + self._phase_step * self._frame_samples) % (2 * math.pi)
        samples: Pcm = np.round(self.amplitude * FULL_SCALE * np.sin(phases)).astype(np.int16)
        return samples

    def close(self) -> None:
        """Nothing to release."""


class NullSink(ClosingMixin):
    """Accepts frames and throws them away, counting them."""

    def __init__(self) -> None:
        self.frames_written = 0
        """Frames taken so far."""
        self.samples_written = 0
        """Samples taken so far."""

    def write_frame(self, pcm: Pcm) -> None:
        """Count the frame and drop it.

        Raises:
            LocalProtocolError: ``pcm`` is not media-layer PCM.
        """
        check_pcm(pcm)
        self.frames_written += 1
        self.samples_written += len(pcm)

    def close(self) -> None:
        """Nothing to release."""


def _to_int16(raw: bytes, sample_width: int) -> np.ndarray:
    """Samples of a PCM WAV chunk as int16 (interleaved channels kept)."""
    if sample_width == 1:  # 8-bit WAV is unsigned
        return ((np.frombuffer(raw, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if sample_width == 2:
        return np.frombuffer(raw, "<i2").astype(np.int16)
    if sample_width == 3:
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        # the top two bytes of a little-endian 24-bit sample are its int16 value
        return (triples[:, 1].astype(np.uint16) | (triples[:, 2].astype(np.uint16) << 8)).view(
            np.int16
        )
    if sample_width == 4:
        return (np.frombuffer(raw, "<i4") >> 16).astype(np.int16)
    raise DeviceError(f"unsupported WAV sample width: {sample_width} bytes")


class WavFileSource(ClosingMixin):
    """Frames from a WAV file, converted to mono 48 kHz as they are read.

    Reads any PCM WAV the stdlib :mod:`wave` module opens (8, 16, 24 or 32
    bit, any rate, any channel count). Channels are averaged; the rate is
    converted with soxr. The last frame is padded with silence; then
    :class:`OnEnd` decides what follows.
    """

    def __init__(
        self,
        path: str | Path,
        frame_ms: int = DEFAULT_FRAME_MS,
        on_end: OnEnd = OnEnd.STOP,
    ) -> None:
        """Open ``path`` for reading.

        Raises:
            DeviceError: the file is missing or not a readable PCM WAV file.
        """
        self.path = Path(path)
        """The file read."""
        self.on_end = on_end
        """What happens after the last sample."""
        self._frame_samples = samples_per_frame(frame_ms)
        try:
            self._wav = wave.open(str(self.path), "rb")
        except FileNotFoundError:
            raise DeviceError(f"WAV file not found: {self.path}") from None
        except OSError as error:
            raise DeviceError(f"cannot read WAV file {self.path}: {error.strerror}") from None
        except (EOFError, wave.Error) as error:
            reason = str(error) or "truncated"
            raise DeviceError(f"{self.path} is not a readable WAV file: {reason}") from None
        self._channels = self._wav.getnchannels()
        self._sample_width = self._wav.getsampwidth()
        self._rate_hz = self._wav.getframerate()
        if self._sample_width not in (1, 2, 3, 4) or self._channels < 1 or self._rate_hz < 1:
            self._wav.close()
            raise DeviceError(f"unsupported WAV format in {self.path}")
        self._resampler = self._new_resampler()
        self._pending = silence(0)
        self._is_exhausted = False

    @property
    def frame_samples(self) -> int:
        """Samples in every frame."""
        return self._frame_samples

    @property
    def duration_s(self) -> float:
        """Length of the file's audio in seconds."""
        return self._wav.getnframes() / self._rate_hz

    def read_frame(self) -> Pcm | None:
        """The next frame; after the end, None, silence or the start again (``on_end``)."""
        while len(self._pending) < self._frame_samples and not self._is_exhausted:
            self._pending = np.concatenate((self._pending, self._read_chunk()))
        if len(self._pending) >= self._frame_samples:
            frame = self._pending[: self._frame_samples]
            self._pending = self._pending[self._frame_samples :]
            return frame
        if len(self._pending) > 0:  # the tail, padded to a whole frame
            frame = np.concatenate((self._pending, silence(self._frame_samples)))
            self._pending = silence(0)
            return frame[: self._frame_samples]
        if self.on_end is OnEnd.SILENCE:
            return silence(self._frame_samples)
        if self.on_end is OnEnd.LOOP and self._wav.getnframes() > 0:
            self._wav.rewind()
            self._resampler = self._new_resampler()
            self._is_exhausted = False
            return self.read_frame()
        return None

    def close(self) -> None:
        """Close the file."""
        self._wav.close()

    def _new_resampler(self) -> soxr.ResampleStream | None:
        if self._rate_hz == SAMPLE_RATE_HZ:
            return None
        return soxr.ResampleStream(self._rate_hz, SAMPLE_RATE_HZ, CHANNELS, dtype="int16")

    def _read_chunk(self) -> Pcm:
        raw = self._wav.readframes(_WAV_READ_FRAMES)
        self._is_exhausted = len(raw) < _WAV_READ_FRAMES * self._channels * self._sample_width
        samples = _to_int16(raw, self._sample_width)
        if self._channels > 1:
            frames = samples[: len(samples) // self._channels * self._channels]
            mixed = frames.reshape(-1, self._channels).mean(axis=1)
            samples = np.round(mixed).astype(np.int16)
        if self._resampler is None:
            return samples
        out: Pcm = self._resampler.resample_chunk(samples, last=self._is_exhausted)
        return out


class WavFileSink(ClosingMixin):
    """Writes frames to a 48 kHz mono 16-bit WAV file.

    The header is rewritten and the file flushed after every frame, so a
    crashed process still leaves a readable file up to its last frame.
    """

    def __init__(self, path: str | Path) -> None:
        """Create (or truncate) ``path``.

        Raises:
            DeviceError: the file cannot be created.
        """
        self.path = Path(path)
        """The file written."""
        self.samples_written = 0
        """Samples written so far."""
        try:
            self._file: BinaryIO = self.path.open("wb")
        except OSError as error:
            raise DeviceError(f"cannot write WAV file {self.path}: {error.strerror}") from None
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(CHANNELS)
        self._wav.setsampwidth(SAMPLE_WIDTH_BYTES)
        self._wav.setframerate(SAMPLE_RATE_HZ)
        self._is_closed = False

    def write_frame(self, pcm: Pcm) -> None:
        """Append one frame of any length.

        Raises:
            LocalProtocolError: ``pcm`` is not media-layer PCM.
            DeviceError: the sink is closed or the disk refused the write.
        """
        check_pcm(pcm)
        if self._is_closed:
            raise DeviceError(f"WAV file {self.path} is already closed")
        try:
            # writeframes (unlike writeframesraw) patches the header each time
            self._wav.writeframes(pcm.astype("<i2").tobytes())
            self._file.flush()
        except OSError as error:
            raise DeviceError(f"cannot write WAV file {self.path}: {error.strerror}") from None
        self.samples_written += len(pcm)

    def close(self) -> None:
        """Fix the header and close the file."""
        if self._is_closed:
            return
        self._is_closed = True
        try:
            self._wav.close()
        finally:
            self._file.close()


def close_all(audio: Iterable[AudioSource | AudioSink | None]) -> None:
    """Close each source or sink given (None: skip); a failure is logged, and the rest close."""
    for closable in audio:
        if closable is None:
            continue
        try:
            closable.close()
        except Exception:
            logger.exception("failed to close %r", closable)
