"""Time-scale modification of decoded speech: play it faster or slower at the same pitch.

Scope: a sans-I/O wrapper, :class:`TimeStretcher`, around Debian's ``libsonic``
(Bill Cox's Sonic, Apache-2.0, a pitch-synchronous overlap-add made for
speech; ``libsonic0`` is a dependency of ``espeak-ng``, so it is on every
machine that builds the speech corpus). Nothing is written by hand here: the
signal processing is libsonic's; this module only moves int16 samples in and
out through ctypes.

What it is for (issue 15 part 3, decision 0141): a jitter buffer that holds
more audio than its target can play it a little faster (NetEq's
*accelerate*) instead of discarding a whole 20 ms frame; slower playout
(*preemptive expand*) is possible too but the policy does not use it. The
playout policy (:func:`pqcall.media.jitter_policy.playout_speed`) says
which speed; the caller keeps pulling decoded frames into the stretcher until
it has a frame's worth of output for the sink.

Contract: :meth:`TimeStretcher.write` takes 1-D int16 mono PCM at
``sample_rate_hz``; :meth:`TimeStretcher.read` returns at most ``samples``
of output (fewer while libsonic holds input for its pitch search). At speed
1.0 every sample written is readable at once, unchanged (no added delay);
at another speed libsonic holds up to two of its longest pitch periods
(about 30 ms at 48 kHz) to find where to cut or repeat. Memory: libsonic's
stream buffers, which grow only with unread output.

:func:`available` says whether libsonic can be loaded; without it the
caller plays at speed 1.0 (the jitter buffer's own frame discarding).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from pqcall.exceptions import CodecError
from pqcall.media import sonic
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm, check_pcm

__all__ = ["MAX_SPEED", "MIN_SPEED", "TimeStretcher", "available"]

MIN_SPEED: Final = 0.5
"""Slowest playout the wrapper accepts."""
MAX_SPEED: Final = 2.0
"""Fastest playout the wrapper accepts."""


_LIB: Final = sonic.LIB


def available() -> bool:
    """Whether libsonic could be loaded (``apt-get install libsonic0``)."""
    return _LIB is not None


class TimeStretcher:
    """One stream's time-scale modifier (see the module docstring).

    Raises:
        CodecError: from the constructor, when libsonic is missing or refuses.
    """

    __slots__ = ("_lib", "_out", "_speed", "_stream")

    def __init__(self, sample_rate_hz: int = SAMPLE_RATE_HZ) -> None:
        if _LIB is None:
            raise CodecError("time stretching needs libsonic: apt-get install libsonic0")
        self._lib = _LIB
        self._stream = self._lib.sonicCreateStream(sample_rate_hz, 1)
        if not self._stream:
            raise CodecError("libsonic could not create a stream")
        self._speed = 1.0
        self._out = np.zeros(sample_rate_hz // 10, dtype=np.int16)  # 100 ms read buffer

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream:
            self._lib.sonicDestroyStream(stream)
            self._stream = None

    @property
    def speed(self) -> float:
        """Playout speed now: above 1 plays faster (drains), below 1 slower (fills)."""
        return self._speed

    def set_speed(self, speed: float) -> None:
        """Change the speed from the next samples written on.

        Raises:
            CodecError: ``speed`` is outside :data:`MIN_SPEED`-:data:`MAX_SPEED`.
        """
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise CodecError(f"playout speed must be {MIN_SPEED}-{MAX_SPEED}, got {speed}")
        if speed != self._speed:
            self._speed = speed
            self._lib.sonicSetSpeed(self._stream, speed)

    @property
    def available_samples(self) -> int:
        """Output samples ready to :meth:`read`."""
        return int(self._lib.sonicSamplesAvailable(self._stream))

    def write(self, pcm: Pcm) -> None:
        """Add decoded samples (1-D int16) to the stream.

        Raises:
            LocalProtocolError: ``pcm`` is not 1-D int16.
            CodecError: libsonic ran out of memory.
        """
        samples = np.ascontiguousarray(check_pcm(pcm))
        if len(samples) and not self._lib.sonicWriteShortToStream(
            self._stream, samples.ctypes.data, len(samples)
        ):
            raise CodecError("libsonic could not take the samples")

    def read(self, samples: int) -> Pcm:
        """At most ``samples`` output samples (fewer when fewer are ready)."""
        if samples > len(self._out):
            self._out = np.zeros(samples, dtype=np.int16)
        count = self._lib.sonicReadShortFromStream(self._stream, self._out.ctypes.data, samples)
        return self._out[: max(0, count)].copy()
