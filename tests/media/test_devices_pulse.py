"""The real device path: a tone played to PulseAudio and recorded back; a speaker swapped mid-call.

Needs the virtual sound card of ``scripts/virtual-soundcard.sh`` (a null sink
whose monitor is the default source) and ``PQCALL_TEST_PULSE=1``::

    eval "$(bash scripts/virtual-soundcard.sh)"
    PQCALL_TEST_PULSE=1 .venv/bin/pytest tests/media/test_devices_pulse.py

Timeouts are multiplied by ``PQCALL_TEST_TIMEOUT_SCALE`` (default 1).
"""

from __future__ import annotations

import asyncio
import os
import subprocess

import numpy as np
import pytest

from pqcall.media.audio import NullSink, SilenceSource, ToneSource
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm
from pqcall.media.devices import DeviceSink, DeviceSource, list_devices
from pqcall.transport.session import MediaSession
from tests.harness import TIMEOUT_SCALE
from tests.utils import handshake_pair

pytestmark = pytest.mark.skipif(
    os.environ.get("PQCALL_TEST_PULSE") != "1",
    reason="needs PulseAudio: run scripts/virtual-soundcard.sh and set PQCALL_TEST_PULSE=1",
)

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


async def until_level(source: DeviceSource, loud: bool) -> None:
    """Read the monitor until a frame is loud with the tone (or quiet without it)."""
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            level = rms(await next_frame(source))
            if (level > 0.5 * TONE_RMS) if loud else (level < 0.05 * TONE_RMS):
                return


def playback_streams() -> int:
    """Streams playing into PulseAudio now (its sink inputs)."""
    listing = subprocess.run(
        ["pactl", "list", "short", "sink-inputs"], capture_output=True, text=True, check=True
    )
    return len(listing.stdout.splitlines())


def test_speaker_replaced_mid_call_stops_playing():
    keys = handshake_pair()

    async def main() -> None:
        speaker = DeviceSink(DEVICE)
        caller = MediaSession(keys.caller.keys, ToneSource(TONE_HZ, TONE_AMPLITUDE), NullSink())
        callee = MediaSession(keys.callee.keys, SilenceSource(), speaker)
        await caller.open(("127.0.0.1", 0))
        await callee.open(("127.0.0.1", 0))
        try:
            with DeviceSource(DEVICE) as monitor:  # what the null sink plays
                caller.connect(callee.local_address)
                callee.connect(caller.local_address)
                await until_level(monitor, loud=True)  # the caller's tone on the speaker
                assert playback_streams() == 1
                await callee.replace_audio(sink=NullSink())  # the user picks another output
                assert speaker.counters().frames > 0
                await until_level(monitor, loud=False)  # the device stopped
                assert playback_streams() == 0  # and PulseAudio has it back
                await asyncio.sleep(0.3)
                assert callee.end_reason is None  # the call goes on
                assert callee.snapshot().packets_received > 20
        finally:
            await caller.close()
            await callee.close()

    asyncio.run(main())


def _pactl(*args: str) -> str:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, check=True).stdout


def _index(kind: str, name: str) -> str:
    """PulseAudio's index of the sink or source ``name``."""
    for line in _pactl("list", "short", kind).splitlines():
        fields = line.split("\t")
        if fields[1] == name:
            return fields[0]
    raise AssertionError(f"no {name} in {kind}")


def _used_by(streams: str) -> list[str]:
    """The sinks (or sources) that PulseAudio's playback (or record) streams go to."""
    return [line.split("\t")[1] for line in _pactl("list", "short", streams).splitlines()]


def test_headset_plugged_in_mid_call_is_listed_and_chosen():
    """A sink loaded while streams are open: listed as pulse:NAME, played to, recorded back."""
    from pqcall.media.devices import open_streams, rescan_devices
    from pqcall.media.pulse_devices import pulse_specs

    async def main() -> None:
        with DeviceSource(DEVICE) as microphone, DeviceSink(DEVICE) as speaker:
            assert microphone.device.name == speaker.device.name == DEVICE
            assert open_streams() >= 2
            assert not rescan_devices()  # PortAudio cannot restart under open streams
            module = _pactl(
                "load-module", "module-null-sink", "sink_name=headset", "rate=48000", "channels=1"
            ).strip()
            try:
                assert "pulse:headset" in pulse_specs("output")
                assert "pulse:headset.monitor" in pulse_specs("input")
                with (
                    DeviceSink("pulse:headset") as headset,
                    DeviceSource("pulse:headset.monitor") as monitor,
                ):
                    tone = ToneSource(TONE_HZ, TONE_AMPLITUDE)
                    loop = asyncio.get_running_loop()

                    async def play() -> None:
                        next_tick = loop.time()
                        while True:
                            headset.write_frame(tone.read_frame())
                            next_tick += FRAME_S
                            await asyncio.sleep(max(0.0, next_tick - loop.time()))

                    player = asyncio.create_task(play())
                    try:
                        await until_level(monitor, loud=True)  # the tone went to the headset
                    finally:
                        player.cancel()
                    assert _index("sinks", "headset") in _used_by("sink-inputs")
                    assert _index("sources", "headset.monitor") in _used_by("source-outputs")
            finally:
                _pactl("unload-module", module)
            assert "pulse:headset" not in pulse_specs("output")  # unplugged: gone from the list

    asyncio.run(main())


def test_rescan_with_no_stream_open_restarts_portaudio():
    from pqcall.media.devices import open_streams, rescan_devices

    assert open_streams() == 0
    assert rescan_devices()
    assert DEVICE in [device.name for device in list_devices()]
