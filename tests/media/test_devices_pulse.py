"""The real device path: a tone played to PulseAudio and recorded back.

Needs the virtual sound card of ``scripts/virtual-soundcard.sh`` (a null sink
whose monitor is the default source) and ``PQCALL_TEST_PULSE=1``::

    eval "$(bash scripts/virtual-soundcard.sh)"
    PQCALL_TEST_PULSE=1 .venv/bin/pytest tests/media/test_devices_pulse.py

Timeouts are multiplied by ``PQCALL_TEST_TIMEOUT_SCALE`` (default 1).
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from pqcall.media.audio import ToneSource
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm
from pqcall.media.devices import DeviceSink, DeviceSource, list_devices

pytestmark = pytest.mark.skipif(
    os.environ.get("PQCALL_TEST_PULSE") != "1",
    reason="needs PulseAudio: run scripts/virtual-soundcard.sh and set PQCALL_TEST_PULSE=1",
)

TIMEOUT_SCALE = float(os.environ.get("PQCALL_TEST_TIMEOUT_SCALE", "1"))
DEVICE = "pulse"
TONE_HZ = 1_000
TONE_AMPLITUDE = 0.5
TONE_RMS = TONE_AMPLITUDE * 32767 / 2**0.5
FRAME_S = 0.02
# PulseAudio may take a second or two to start a new stream
START_TIMEOUT_S = 10 * TIMEOUT_SCALE
RECORD_FRAMES = 50


async def next_frame(source: DeviceSource) -> Pcm:
    frame = await source.next_frame()
    assert frame is not None
    return frame


def rms(pcm: Pcm) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


async def play_and_record(samplerate_hz: int | None) -> tuple[list[Pcm], DeviceSource, DeviceSink]:
    """Play a tone in real time to the device and record it back through the monitor."""
    loop = asyncio.get_running_loop()
    with (
        DeviceSource(DEVICE, samplerate_hz=samplerate_hz) as source,
        DeviceSink(DEVICE, samplerate_hz=samplerate_hz) as sink,
    ):
        tone = ToneSource(TONE_HZ, TONE_AMPLITUDE)

        async def play() -> None:
            next_tick = loop.time()
            while True:
                sink.write_frame(tone.read_frame())
                next_tick += FRAME_S
                await asyncio.sleep(max(0.0, next_tick - loop.time()))

        player = asyncio.create_task(play())
        recorded: list[Pcm] = []
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                # wait for the tone to come back, then keep a second of it
                while not recorded or rms(recorded[0]) < 0.5 * TONE_RMS:
                    recorded = [await next_frame(source)]
                while len(recorded) < RECORD_FRAMES:
                    recorded.append(await next_frame(source))
        finally:
            player.cancel()
        return recorded, source, sink


def test_pulse_is_listed():
    names = [device.name for device in list_devices()]
    assert DEVICE in names


@pytest.mark.parametrize(
    "samplerate_hz",
    [pytest.param(None, id="48kHz"), pytest.param(44_100, id="44.1kHz-resampled")],
)
def test_tone_played_to_pulse_is_recorded_back(samplerate_hz):
    recorded, source, sink = asyncio.run(play_and_record(samplerate_hz))
    assert source.samplerate_hz == sink.samplerate_hz == (samplerate_hz or SAMPLE_RATE_HZ)
    pcm = np.concatenate(recorded)
    assert {len(frame) for frame in recorded} == {960}
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    assert np.argmax(spectrum) * SAMPLE_RATE_HZ / len(pcm) == pytest.approx(TONE_HZ, abs=2)
    assert rms(pcm) == pytest.approx(TONE_RMS, rel=0.1)
    assert source.counters().frames >= RECORD_FRAMES
