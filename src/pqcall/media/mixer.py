"""The group call's mix: the sum of every sender's frame, kept within 16 bits by a limiter.

Contract of :class:`Mixer` (one per listener, it keeps the limiter's gain between frames):

- transparent: while the limiter is at rest (gain 1) and a frame's sum stays within
  16 bits, the output is the sum itself, bit for bit;
- never clips: when the sum would go beyond full scale, the gain drops so that no
  output sample exceeds :data:`CEILING` (-0.1 dBFS, below the samples a clip
  counter such as ``pqcall bench group`` counts as clipped);
- the gain falls ahead of a peak within the frame (:data:`ATTACK_S`, a ramp, so a
  peak is not a step in the gain), then recovers exponentially
  (:data:`RELEASE_S` time constant) once the sum is quiet enough again, so a loud
  moment does not leave the call quieter afterwards.

Why hand-written: the maintained limiter we found is pedalboard's (JUCE's
``Limiter``), a compiled dependency of tens of MB for a few lines of gain
arithmetic, and it ends in a hard clipper (it clips on overshoot, which is what
this replaces). This is numpy only; it is a gain computation, not a crypto primitive.
The gain is computed only while the limiter is active (a frame exceeding full
scale, or the release that follows); other frames take the sum alone.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm

__all__ = ["ATTACK_S", "CEILING", "RELEASE_S", "Mixer", "mix"]

INT16_MAX: Final = 32_767
CEILING: Final = INT16_MAX * 10 ** (-0.1 / 20)
"""The largest magnitude the limiter lets through while it acts (-0.1 dBFS)."""
ATTACK_S: Final = 0.001
"""How far ahead of a peak (within the frame) the gain starts to fall."""
RELEASE_S: Final = 0.05
"""The time constant of the gain's recovery towards 1."""
_AT_REST: Final = 1.0 - 1e-6  # a gain this close to 1 is 1 (the release has ended)


class Mixer:
    """Sums equally long frames and limits the sum; keeps its gain from frame to frame."""

    def __init__(self, sample_rate: int = SAMPLE_RATE_HZ) -> None:
        self._attack = max(1, round(ATTACK_S * sample_rate))  # samples
        self._release = math.exp(-1.0 / (RELEASE_S * sample_rate))  # per sample
        self._gain = 1.0
        self.limited_frames = 0  # frames whose sum went beyond full scale

    @property
    def gain(self) -> float:
        """The limiter's gain at the end of the last frame (1: at rest)."""
        return self._gain

    def mix(self, frames: list[Pcm]) -> Pcm:
        """The sum of ``frames`` (equally long), limited so that it never clips."""
        total = np.sum(np.stack(frames).astype(np.int32), axis=0)
        within = not len(total) or (
            int(np.max(total)) <= INT16_MAX and int(np.min(total)) >= -INT16_MAX - 1
        )
        if self._gain >= _AT_REST and within:
            self._gain = 1.0
            exact: Pcm = total.astype(np.int16)  # bit-exact: within 16 bits
            return exact
        if not within:
            self.limited_frames += 1
        gains = self._gains(total.astype(np.float64))
        limited = np.rint(total * gains)
        mixed: Pcm = np.clip(limited, -INT16_MAX, INT16_MAX).astype(np.int16)
        return mixed

    def _gains(self, total: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        # the gain each sample needs to stay under the ceiling
        magnitude = np.abs(total)
        needed = np.minimum(1.0, CEILING / np.maximum(magnitude, 1.0))
        # in reductions (1 - gain), vectorised over the frame:
        # attack: the reduction of a peak k samples ahead, scaled by (1 - k / attack)
        wanted = 1.0 - needed
        ahead = wanted.copy()
        attack = self._attack
        for step in range(1, min(attack, len(wanted))):
            weighted = wanted[step:] * (1.0 - step / attack)
            np.maximum(ahead[:-step], weighted, out=ahead[:-step])
        # release: reduction[n] = max(ahead[n], release * reduction[n - 1]), unrolled as
        # release**n * running max of (ahead[k] / release**k), the last frame's carried in
        powers = self._release ** np.arange(len(ahead), dtype=np.float64)
        carried = (1.0 - self._gain) * self._release
        running = np.maximum.accumulate(np.maximum(ahead / powers, 0.0))
        reduction = np.maximum(powers * np.maximum(running, carried), ahead)
        gains = 1.0 - reduction
        self._gain = float(gains[-1]) if len(gains) else self._gain
        return gains


def mix(frames: list[Pcm]) -> Pcm:
    """The sum of equally long frames, limited by a fresh :class:`Mixer` (no gain carried over)."""
    return Mixer().mix(frames)
