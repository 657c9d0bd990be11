"""The signals ``pqcall bench audio`` feeds the processing stage: a room's echo, speech, noise.

Scope: pure numpy, no devices. :class:`Room` is the echo path of a phone
without a headset: a delay (the device buffers and the air), an attenuation
and an exponentially decaying reverberation tail; :func:`echo_scene` builds
the far-end speech, its echo at the microphone (with an echo-path change part
way), the near talker's double-talk stretch and a little sensor noise;
:func:`noise` makes white, babble and fan-like noise and :func:`mix_at_snr`
mixes it under speech at a given SNR. Everything is 48 kHz and seeded, so two
runs give the same signals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from pqcall.bench.quality import REFERENCE_RATE_HZ, SAMPLES_DIR, load_reference, resample
from pqcall.media.codec import SAMPLE_RATE_HZ

__all__ = [
    "NOISES",
    "EchoScene",
    "Room",
    "echo_scene",
    "mix_at_snr",
    "noise",
    "speech",
]

Signal = npt.NDArray[np.float64]

NOISES: Final = ("white", "babble", "fan")
"""The noise kinds of the noise test."""
SENSOR_NOISE_DBFS: Final = -70.0
"""The microphone's own noise floor in the echo scene."""


@dataclass(frozen=True, slots=True)
class Room:
    """An echo path: ``gain`` times a unit-energy tail starting ``delay_ms`` after the sound."""

    delay_ms: float = 80.0
    """Output buffer + air + input buffer, from speaker frame to its echo in the capture."""
    gain: float = 0.3
    """Echo amplitude against the played signal (0.3: about -10 dB)."""
    rt60_ms: float = 50.0
    """Reverberation time of the tail (60 dB decay)."""
    seed: int = 1

    def impulse_response(self) -> Signal:
        """The echo path's impulse response at 48 kHz."""
        rng = np.random.default_rng(self.seed)
        delay = round(self.delay_ms * SAMPLE_RATE_HZ / 1000)
        length = max(1, round(self.rt60_ms * SAMPLE_RATE_HZ / 1000))
        decay = np.exp(-6.91 * np.arange(length) / length)  # -60 dB at the end
        tail = rng.standard_normal(length) * decay
        tail[0] = 2.0  # the direct sound
        response = np.zeros(delay + length)
        response[delay:] = self.gain * tail / np.sqrt(np.sum(tail**2))
        return response

    def apply(self, played: Signal) -> Signal:
        """What the microphone hears of ``played``."""
        response = self.impulse_response()
        size = 1 << (len(played) + len(response)).bit_length()
        spectrum = np.fft.rfft(played, size) * np.fft.rfft(response, size)
        echo: Signal = np.fft.irfft(spectrum, size)[: len(played)]
        return echo


@dataclass(frozen=True, slots=True)
class EchoScene:
    """The echo test's signals, all the same length, 48 kHz."""

    far: Signal
    """What the speaker plays (the far end's speech)."""
    echo: Signal
    """Its echo at the microphone."""
    near: Signal
    """The near talker at the microphone (silent outside the double talk)."""
    sensor: Signal
    """The microphone's noise."""
    double_talk_s: tuple[float, float]
    """When the near talker speaks."""
    change_s: float
    """When the echo path changes (``rooms[1]`` from then on)."""

    @property
    def mic(self) -> Signal:
        """The capture: echo + near talker + noise."""
        return self.echo + self.near + self.sensor


def speech(name: str, seconds: float) -> Signal:
    """A shipped speech sample at 48 kHz, looped to ``seconds``."""
    reference = load_reference(SAMPLES_DIR / f"{name}.wav")
    voice = resample(reference, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ).astype(np.float64)
    total = round(seconds * SAMPLE_RATE_HZ)
    repeats = -(-total // len(voice))
    return np.tile(voice, repeats)[:total]


def echo_scene(
    seconds: float,
    rooms: tuple[Room, Room],
    double_talk_s: tuple[float, float],
    change_s: float,
    near_gain: float = 0.7,
) -> EchoScene:
    """Far-end speech (alice) echoed by ``rooms[0]``, then ``rooms[1]`` from ``change_s``.

    The near talker (bob, at ``near_gain``) speaks during ``double_talk_s``.
    """
    far = speech("alice", seconds)
    split = round(change_s * SAMPLE_RATE_HZ)
    echo = np.concatenate((rooms[0].apply(far)[:split], rooms[1].apply(far)[split:]))
    near = np.zeros_like(far)
    start, end = (round(t * SAMPLE_RATE_HZ) for t in double_talk_s)
    near[start:end] = near_gain * speech("bob", (end - start) / SAMPLE_RATE_HZ)
    rng = np.random.default_rng(7)
    sensor = rng.standard_normal(len(far)) * 32_768 * 10 ** (SENSOR_NOISE_DBFS / 20)
    return EchoScene(far, echo, near, sensor, double_talk_s, change_s)


def noise(kind: str, samples: int, seed: int = 3) -> Signal:
    """``samples`` of white, babble (six overlapping talkers) or fan-like noise.

    Raises:
        ValueError: an unknown kind.
    """
    rng = np.random.default_rng(seed)
    if kind == "white":
        return rng.standard_normal(samples)
    if kind == "babble":
        seconds = samples / SAMPLE_RATE_HZ + 1
        voices = [speech("alice", seconds), speech("bob", seconds)]
        total = np.zeros(samples)
        for index in range(6):
            voice = voices[index % 2]
            if index >= 2:
                voice = voice[::-1]  # reversed speech: speech-like, not intelligible
            offset = int(rng.integers(0, SAMPLE_RATE_HZ))
            total += voice[offset : offset + samples]
        return total
    if kind == "fan":
        # broadband rumble (1/f^2 above 60 Hz) with the blade-pass tone and its harmonics
        spectrum = np.fft.rfft(rng.standard_normal(samples))
        freqs = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE_HZ)
        spectrum /= np.maximum(freqs, 60.0)
        rumble = np.fft.irfft(spectrum, samples)
        rumble /= np.std(rumble)
        t = np.arange(samples) / SAMPLE_RATE_HZ
        hum = sum(0.5 / k * np.sin(2 * np.pi * 120.0 * k * t) for k in (1, 2, 3))
        return rumble + hum
    raise ValueError(f"unknown noise {kind!r}: one of {', '.join(NOISES)}")


def mix_at_snr(clean: Signal, interference: Signal, snr_db: float) -> Signal:
    """``clean`` plus ``interference`` scaled to ``snr_db`` below it (active-speech power)."""
    active = np.abs(clean) > 0.01 * np.max(np.abs(clean))
    speech_power = float(np.mean(clean[active] ** 2))
    noise_power = float(np.mean(interference**2))
    scale = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    mixed: Signal = clean + scale * interference
    return mixed
