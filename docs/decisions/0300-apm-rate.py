"""Decision 0300's rate experiment: the APM at 48 kHz against 32/16 kHz with soxr around it.

Run: ``.venv/bin/python docs/decisions/0300-apm-rate.py`` (about 20 s). Prints,
per rate, the CPU of the full stage (AEC3 + NS + AGC2 + high-pass) over 10 s
of the echo scene, the CPU of the three soxr streams a lower rate needs, and
the delay of clicks through resampler + stage + resampler (gain control off).
Calls the binding directly: a measurement, not a part of pqcall.
"""

from __future__ import annotations

import time

import numpy as np
import pywebrtc_audio  # type: ignore[import-untyped]
import soxr  # type: ignore[import-untyped]

from pqcall.bench.audio_scenes import Room, echo_scene

RATE = 48_000
FRAME = 960


class Fifo:
    """A soxr stream handing out exactly ``want`` samples per push (zeros while it fills)."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="LQ")
        self.pending = np.zeros(0, np.int16)

    def push(self, chunk: np.ndarray, want: int) -> np.ndarray:
        self.pending = np.concatenate((self.pending, self.stream.resample_chunk(chunk)))
        if len(self.pending) < want:
            self.pending = np.concatenate(
                (np.zeros(want - len(self.pending), np.int16), self.pending)
            )
        out, self.pending = self.pending[:want], self.pending[want:]
        return out


def stage(rate: int, gain: bool) -> object:
    return pywebrtc_audio.AudioProcessor(
        sample_rate=rate,
        echo_cancellation=True,
        noise_suppression=True,
        high_pass_filter=True,
        auto_gain_control=gain,
        ns_level=2,
    )


def run(rate: int, mic: np.ndarray, far: np.ndarray, gain: bool = True) -> tuple[np.ndarray, float]:
    apm, frame = stage(rate, gain), rate // 50
    down, down_far, up = Fifo(RATE, rate), Fifo(RATE, rate), Fifo(rate, RATE)
    out, start = [], time.process_time()
    for i in range(0, len(mic) - FRAME + 1, FRAME):
        near, played = mic[i : i + FRAME], far[i : i + FRAME]
        if rate != RATE:
            near, played = down.push(near, frame), down_far.push(played, frame)
        done = apm.process(near, played)
        out.append(done if rate == RATE else up.push(done, FRAME))
    return np.concatenate(out), time.process_time() - start


def clicks() -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(11)
    signal = rng.standard_normal(4 * RATE) * 30.0
    click = np.hanning(240) * rng.standard_normal(240) * 8_000
    starts = [k * RATE // 2 for k in range(2, 8)]
    for start in starts:
        signal[start : start + 240] += click
    return signal.astype(np.int16), click, starts


scene = echo_scene(10.0, (Room(), Room()), (3.0, 5.0), 10.0)
mic = np.clip(scene.mic, -32_768, 32_767).astype(np.int16)
far = np.clip(scene.far, -32_768, 32_767).astype(np.int16)
signal, click, starts = clicks()
for rate in (48_000, 32_000, 16_000):
    cpu = min(run(rate, mic, far)[1] for _ in range(3))
    out, _ = run(rate, signal, np.zeros_like(signal), gain=False)
    lags = [
        int(np.argmax(np.abs(np.correlate(out[s : s + 4800 + 240].astype(float), click, "valid"))))
        for s in starts
    ]
    print(  # noqa: T201  (a measurement script)
        f"{rate} Hz: stage + resampling {100 * cpu / 10:.2f} % of a core, "
        f"click delay {1000 * float(np.median(lags)) / RATE:.1f} ms"
    )
