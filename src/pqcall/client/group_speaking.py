"""Who is speaking and who muted in a group call, as one phone knows it.

Speaking is measured on this phone, from the audio it decodes: each sender's
stream gets a :class:`LevelDecoder` (the Opus decoder with a level meter around
it), and :meth:`SpeakingMeter.speaking` says whether a frame of that sender
played in the last :data:`SPEAKING_HOLD_S` seconds was louder than
:data:`SPEAKING_THRESHOLD_DBFS`. Nothing about levels leaves the phone: the
server sees no audio-level hint (decision 0600).

Mute is said, not guessed (silence and a muted microphone sound alike): a member
that mutes or unmutes seals one byte to each other member over the pairwise
channel (:func:`mute_message`, inner type :data:`INNER_MUTED`, docs/protocol.md
"Group calls"), and to a member whose channel comes up later while it is muted.
The server sees a small sealed message at that moment, as it sees a 1:1 call's
FLAGS datagram.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from pqcall.media.codec import AudioDecoder, OpusDecoder, Pcm

INNER_MUTED = 0x13
"""Sealed inner message: ``0x13 | 0 or 1`` (1: the sender muted its microphone)."""
SPEAKING_THRESHOLD_DBFS = -45.0
"""A frame louder than this is speech (the corpus talks at -26 dBov; Opus silence is far below)."""
SPEAKING_HOLD_S = 0.6
"""A sender counts as speaking this long after its last loud frame (no flicker between words)."""
_FULL_SCALE = 32_768.0


def level_dbfs(pcm: Pcm) -> float:
    """The RMS level of a frame in dBFS (-inf for digital silence)."""
    if not len(pcm):
        return -math.inf
    samples = pcm.astype(np.float32)
    rms = math.sqrt(float(np.dot(samples, samples)) / len(samples)) / _FULL_SCALE
    return 20 * math.log10(rms) if rms > 0 else -math.inf


class LevelDecoder:
    """An :class:`~pqcall.media.codec.AudioDecoder` that tells ``on_frame`` each frame's level."""

    def __init__(self, inner: AudioDecoder, on_frame: Callable[[float], None]) -> None:
        self._inner = inner
        self._on_frame = on_frame

    @property
    def frame_samples(self) -> int:
        return self._inner.frame_samples

    def decode(self, packet: bytes) -> Pcm:
        return self._seen(self._inner.decode(packet))

    def conceal(self) -> Pcm:
        return self._seen(self._inner.conceal())

    def decode_fec(self, next_packet: bytes) -> Pcm:
        return self._seen(self._inner.decode_fec(next_packet))

    def reset(self) -> None:
        self._inner.reset()

    def _seen(self, pcm: Pcm) -> Pcm:
        self._on_frame(level_dbfs(pcm))
        return pcm


class SpeakingMeter:
    """The time of each sender's last loud frame (``clock``: monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._loud: dict[int, float] = {}  # sender id -> when its last loud frame played

    def decoder(self, sender_id: int, frame_ms: int) -> LevelDecoder:
        """An Opus decoder for ``sender_id``'s stream that feeds this meter."""
        return LevelDecoder(OpusDecoder(frame_ms), lambda level: self.frame(sender_id, level))

    def frame(self, sender_id: int, level: float) -> None:
        """One frame of ``sender_id`` was decoded at ``level`` dBFS."""
        if level > SPEAKING_THRESHOLD_DBFS:
            self._loud[sender_id] = self._clock()

    def speaking(self, sender_id: int) -> bool:
        """Whether ``sender_id`` was heard speaking in the last :data:`SPEAKING_HOLD_S`."""
        loud = self._loud.get(sender_id)
        return loud is not None and self._clock() - loud <= SPEAKING_HOLD_S


def mute_message(muted: bool) -> bytes:
    """The sealed inner message saying we muted (or unmuted)."""
    return bytes([INNER_MUTED, 1 if muted else 0])


def parse_mute(inner: bytes) -> bool | None:
    """The state a mute message says, or None when ``inner`` is not one."""
    if len(inner) == 2 and inner[0] == INNER_MUTED and inner[1] in (0, 1):
        return inner[1] == 1
    return None
