"""The send side's audio processing: echo cancellation, noise suppression, gain, high-pass.

Scope: :class:`WebRtcProcessing`, an :class:`~pqcall.media.pipeline.AudioProcessing`
over WebRTC's audio processing module (AEC3, NS, AGC2 and its high-pass filter,
through the ``pywebrtc-audio`` binding; the choice is in
``docs/decisions/0300-audio-processing.md``). Only this module imports the
binding; the pipeline receives the object and stays free of it.

Calling contract (the pipeline does this once per frame tick)::

    processing.observe_playout(far)        # the frame going to the speaker
    near = processing.process_capture(mic) # the microphone frame, echo removed

Frames are 48 kHz mono int16 (:data:`~pqcall.media.codec.Pcm`) of any multiple
of 10 ms (every selectable frame size); the binding cuts them into the 10 ms
blocks the module works on. Played frames wait in a bounded queue
(:data:`MAX_REFERENCE_MS`) and each captured frame is processed with as many
reference samples, oldest first, so the echo canceller sees the far end
before its echo. The device's output and input latencies are the hint for
AEC3's delay (:meth:`WebRtcProcessing.set_stream_delay_ms`); its own delay
estimator does the rest. The binding reports no echo metrics, so
:meth:`WebRtcProcessing.report` estimates the echo return loss enhancement
from levels: captured against processed power (less the gain applied) over
frames where the far end is playing.

:func:`create_processing` degrades to None (no processing) with one log line
when the binding is missing on a platform.
"""

from __future__ import annotations

import importlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from pqcall.exceptions import LocalProtocolError
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm, silence

__all__ = [
    "BLOCK_SAMPLES",
    "MAX_REFERENCE_MS",
    "ProcessingOptions",
    "ProcessingReport",
    "WebRtcProcessing",
    "create_processing",
]

logger = logging.getLogger(__name__)

BLOCK_SAMPLES: Final = SAMPLE_RATE_HZ // 100
"""Samples in one 10 ms block, the unit WebRTC's module works on."""
MAX_REFERENCE_MS: Final = 500
"""Played audio kept for the echo canceller beyond what capture used (oldest dropped)."""
MAX_STREAM_DELAY_MS: Final = 500
"""The largest delay hint passed on (AEC3 finds longer ones itself, if at all)."""
FAR_ACTIVE_DBFS: Final = -50.0
"""A played frame louder than this counts for the ERLE estimate."""
ERLE_SMOOTHING: Final = 0.05
"""Weight of a new frame in the ERLE estimate's running powers (about 20 frames)."""
ECHO_SEEN_DB: Final = 6.0
"""An ERLE estimate at least this high means echo was there and was removed."""
NS_LEVEL: Final = 2
"""WebRTC noise suppression level, 0-3 (6, 12, 18, 21 dB); 3 gains nothing (decision 0300)."""
_FULL_SCALE_POWER: Final = 32_768.0**2


@dataclass(frozen=True, slots=True)
class ProcessingOptions:
    """Which parts of the stage run (all on by default: for a sound device)."""

    echo_cancel: bool = True
    """Acoustic echo cancellation (AEC3), with the high-pass filter it needs."""
    noise_suppression: bool = True
    """Noise suppression (WebRTC NS at :data:`NS_LEVEL`)."""
    auto_gain: bool = True
    """Automatic gain control (AGC2, adaptive digital)."""
    high_pass: bool = True
    """High-pass filter (always on with echo cancellation)."""
    ns_level: int = NS_LEVEL
    """Noise suppression level, 0-3 (the benchmark compares them)."""

    @property
    def any(self) -> bool:
        """Whether any part runs."""
        return self.echo_cancel or self.noise_suppression or self.auto_gain or self.high_pass


@dataclass(frozen=True, slots=True)
class ProcessingReport:
    """What the stage does and has seen, for the status line and the call's JSON."""

    echo_cancel: bool
    noise_suppression: bool
    auto_gain: bool
    erle_db: float | None
    """Estimated echo return loss enhancement (None: no far-end audio played yet)."""
    gain_db: float | None
    """The gain AGC applies now (None: AGC off)."""
    stream_delay_ms: int
    """The delay hint given to the echo canceller."""

    @property
    def echo_cancelled(self) -> bool:
        """Whether echo was detected and removed (the estimate is at least :data:`ECHO_SEEN_DB`)."""
        return self.erle_db is not None and self.erle_db >= ECHO_SEEN_DB

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields, prefixed ``processing_``/``echo_``."""
        return {
            "processing_echo_cancel": self.echo_cancel,
            "processing_noise_suppression": self.noise_suppression,
            "processing_auto_gain": self.auto_gain,
            "echo_cancelled": self.echo_cancelled,
            "echo_erle_db": None if self.erle_db is None else round(self.erle_db, 1),
            "processing_gain_db": None if self.gain_db is None else round(self.gain_db, 1),
            "processing_stream_delay_ms": self.stream_delay_ms,
        }


class WebRtcProcessing:
    """An :class:`~pqcall.media.pipeline.AudioProcessing` over WebRTC's module.

    Args:
        options: which parts run.
        stream_delay_ms: the first delay hint for AEC3 (0: let it estimate).

    Raises:
        ImportError: the ``pywebrtc_audio`` binding is missing (see :func:`create_processing`).
    """

    def __init__(self, options: ProcessingOptions, *, stream_delay_ms: int = 0) -> None:
        binding = importlib.import_module("pywebrtc_audio")
        self.options = options
        self._apm: Any = binding.AudioProcessor(
            sample_rate=SAMPLE_RATE_HZ,
            num_channels=1,
            echo_cancellation=options.echo_cancel,
            noise_suppression=options.noise_suppression,
            high_pass_filter=options.high_pass,
            auto_gain_control=options.auto_gain,
            ns_level=options.ns_level,
        )
        self._reference = silence(0)  # played samples not yet paired with capture
        self._max_reference = SAMPLE_RATE_HZ * MAX_REFERENCE_MS // 1000
        self._delay_ms = 0
        self.set_stream_delay_ms(stream_delay_ms)
        self._near_power = 0.0  # running powers over far-active frames, for the ERLE estimate
        self._out_power = 0.0
        self._far_frames = 0

    # AudioProcessing

    def process_capture(self, pcm: Pcm) -> Pcm:
        """The captured frame with echo, noise and level dealt with (same length).

        Raises:
            LocalProtocolError: the frame is not a whole number of 10 ms blocks.
        """
        samples = len(pcm)
        if samples % BLOCK_SAMPLES:
            raise LocalProtocolError(
                f"audio processing takes whole 10 ms blocks, not {samples} samples"
            )
        far = self._take_reference(samples)
        if self.options.echo_cancel:
            out: Pcm = self._apm.process(pcm, far)
        else:
            out = self._apm.process(pcm)
        self._measure(pcm, far, out)
        return out

    def observe_playout(self, pcm: Pcm) -> None:
        """Keep the frame going to the speaker as the echo canceller's reference."""
        if not self.options.echo_cancel:
            return
        reference = np.concatenate((self._reference, pcm))
        if len(reference) > self._max_reference:
            reference = reference[-self._max_reference :]
        self._reference = reference

    # control

    @property
    def stream_delay_ms(self) -> int:
        """The delay hint AEC3 has now."""
        return self._delay_ms

    def set_stream_delay_ms(self, delay_ms: float) -> None:
        """Tell AEC3 how long played audio takes to come back in the capture (device latencies)."""
        self._delay_ms = max(0, min(MAX_STREAM_DELAY_MS, round(delay_ms)))
        self._apm.stream_delay_ms = self._delay_ms

    def reset(self) -> None:
        """Start over (the output device changed: the echo path is new)."""
        self._apm.reset()
        self._apm.stream_delay_ms = self._delay_ms
        self._reference = silence(0)
        self._near_power = self._out_power = 0.0
        self._far_frames = 0

    def report(self) -> ProcessingReport:
        """What runs, and the ERLE estimate so far."""
        gain_db = float(self._apm.gain_db) if self.options.auto_gain else None
        erle_db = None
        if self.options.echo_cancel and self._far_frames:
            erle_db = 10 * math.log10((self._near_power + 1e-12) / (self._out_power + 1e-12))
        return ProcessingReport(
            echo_cancel=self.options.echo_cancel,
            noise_suppression=self.options.noise_suppression,
            auto_gain=self.options.auto_gain,
            erle_db=erle_db,
            gain_db=gain_db,
            stream_delay_ms=self._delay_ms,
        )

    # helpers

    def _take_reference(self, samples: int) -> Pcm:
        """The next ``samples`` played samples, oldest first; silence where none were played."""
        reference = self._reference
        if len(reference) >= samples:
            self._reference = reference[samples:]
            return reference[:samples]
        self._reference = silence(0)
        return np.concatenate((silence(samples - len(reference)), reference))

    def _measure(self, near: Pcm, far: Pcm, out: Pcm) -> None:
        """Update the ERLE estimate's running powers if the far end was playing."""
        if not self.options.echo_cancel or _power_dbfs(far) < FAR_ACTIVE_DBFS:
            return
        gain = 10 ** (float(self._apm.gain_db) / 10) if self.options.auto_gain else 1.0
        weight = 1.0 if self._far_frames == 0 else ERLE_SMOOTHING
        self._near_power += weight * (_power(near) - self._near_power)
        self._out_power += weight * (_power(out) / gain - self._out_power)
        self._far_frames += 1


def create_processing(
    options: ProcessingOptions, *, stream_delay_ms: float = 0
) -> WebRtcProcessing | None:
    """The processing stage for ``options``, or None: nothing on, or no binding (logged once)."""
    if not options.any:
        return None
    try:
        processing = WebRtcProcessing(options)
    except ImportError as error:
        _warn_missing(error)
        return None
    processing.set_stream_delay_ms(stream_delay_ms)
    return processing


_warned = False


def _warn_missing(error: ImportError) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("audio processing off: the pywebrtc-audio binding is missing (%s)", error)


def _power(pcm: Pcm) -> float:
    samples = pcm.astype(np.float64)
    return float(np.dot(samples, samples)) / max(1, len(samples)) / _FULL_SCALE_POWER


def _power_dbfs(pcm: Pcm) -> float:
    return 10 * math.log10(_power(pcm) + 1e-12)
