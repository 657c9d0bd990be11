"""Sound devices through a fake ``sounddevice``: listing, choice, callbacks, queues.

The real PortAudio path is in ``test_devices_pulse.py`` (needs a sound server).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from typing import Any

import numpy as np
import pytest

from pqcall.exceptions import DeviceError
from pqcall.media import devices
from pqcall.media.audio import ToneSource
from pqcall.media.audio_spec import open_sink, open_source
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm
from pqcall.media.devices import (
    PORTAUDIO_MISSING,
    DeviceInfo,
    DeviceSink,
    DeviceSource,
    find_device,
    list_devices,
)


class FakePortAudioError(Exception):
    pass


class FakeStream:
    """Records how it was opened; the test drives its callback by hand."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.callback = kwargs["callback"]
        self.is_started = False
        self.is_closed = False

    def start(self) -> None:
        self.is_started = True

    def stop(self, ignore_errors: bool = True) -> None:
        self.is_started = False

    abort = stop

    def close(self, ignore_errors: bool = True) -> None:
        self.is_closed = True


class FakeSoundDevice(types.ModuleType):
    """Just enough of the ``sounddevice`` module for pqcall.media.devices."""

    PortAudioError = FakePortAudioError

    def __init__(self, raw_devices: list[dict[str, Any]], default: tuple[int, int]) -> None:
        super().__init__("sounddevice")
        self.raw_devices = raw_devices
        self.default_input, self.default_output = default
        self.rates: dict[int, set[int]] = {}
        self.stereo_only: set[int] = set()
        self.streams: list[FakeStream] = []
        self.open_error: str | None = None

    def query_devices(self, kind: str | None = None) -> Any:
        if kind is None:
            return self.raw_devices
        index = self.default_input if kind == "input" else self.default_output
        if index < 0:
            raise FakePortAudioError(f"Error querying device {index}")
        return self.raw_devices[index]

    def query_hostapis(self) -> tuple[dict[str, Any], ...]:
        return ({"name": "ALSA"}, {"name": "PulseAudio"})

    def _check(self, kind: str, device: int, samplerate: int, channels: int, dtype: str) -> None:
        raw = self.raw_devices[device]
        if channels > raw[f"max_{kind}_channels"] or (channels == 1 and device in self.stereo_only):
            raise FakePortAudioError("Invalid number of channels")
        if samplerate not in self.rates.get(device, {48_000}):
            raise FakePortAudioError("Invalid sample rate")

    def check_input_settings(self, **kwargs: Any) -> None:
        self._check("input", **kwargs)

    def check_output_settings(self, **kwargs: Any) -> None:
        self._check("output", **kwargs)

    def _stream(self, **kwargs: Any) -> FakeStream:
        if self.open_error:
            raise FakePortAudioError(self.open_error)
        stream = FakeStream(**kwargs)
        self.streams.append(stream)
        return stream

    def InputStream(self, **kwargs: Any) -> FakeStream:  # noqa: N802 (sounddevice's name)
        return self._stream(**kwargs)

    def OutputStream(self, **kwargs: Any) -> FakeStream:  # noqa: N802 (sounddevice's name)
        return self._stream(**kwargs)


def raw_device(index: int, name: str, inputs: int, outputs: int, rate: float = 48_000.0):
    return {
        "index": index,
        "name": name,
        "hostapi": 0,
        "max_input_channels": inputs,
        "max_output_channels": outputs,
        "default_samplerate": rate,
    }


@pytest.fixture
def sd(monkeypatch) -> FakeSoundDevice:
    fake = FakeSoundDevice(
        [
            raw_device(0, "HDA Intel PCH: ALC892 Analog (hw:0,0)", 2, 8, 44_100.0),
            raw_device(1, "USB Headset Mono", 1, 2),
            raw_device(2, "USB Headset Mono (alt)", 1, 0),
            raw_device(3, "pulse", 32, 32),
            raw_device(4, "HDMI 0", 0, 8, 44_100.0),
        ],
        default=(3, 3),
    )
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    return fake


def capture(source: DeviceSource, stream: FakeStream, block: Pcm, channels: int = 1) -> None:
    """Play PortAudio's part: deliver one captured block to the source's callback."""
    stream.callback(np.repeat(block[:, np.newaxis], channels, axis=1), len(block), None, 0)


def playback(stream: FakeStream, frames: int, channels: int = 1) -> Pcm:
    """Play PortAudio's part: ask the sink's callback for ``frames`` samples."""
    outdata = np.full((frames, channels), 12_345, dtype=np.int16)
    stream.callback(outdata, frames, None, 0)
    assert np.array_equal(outdata[:, 0], outdata[:, -1])
    return outdata[:, 0].copy()


def read(source: DeviceSource) -> Pcm:
    frame = source.read_frame()
    assert frame is not None
    return frame


def block_of(value: int, samples: int = 960) -> Pcm:
    return np.full(samples, value, dtype=np.int16)


# listing and choosing


def test_list_devices_reports_plain_records(sd):
    listed = list_devices()
    assert listed[3] == DeviceInfo(
        index=3,
        name="pulse",
        host_api="ALSA",
        input_channels=32,
        output_channels=32,
        default_samplerate_hz=48_000.0,
        is_default_input=True,
        is_default_output=True,
    )
    assert [d.index for d in listed if d.is_default_input or d.is_default_output] == [3]


def test_list_devices_on_a_machine_without_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice([], default=(-1, -1)))
    assert list_devices() == []
    refusal = r"^no default input device \(see `pqcall audio-devices`\)$"
    with pytest.raises(DeviceError, match=refusal):
        find_device("default", "input")


@pytest.mark.parametrize(
    ("spec", "kind", "index"),
    [
        ("default", "input", 3),
        ("default", "output", 3),
        ("1", "input", 1),
        ("alc892", "input", 0),
        ("HDMI", "output", 4),
        # an exact name wins over the longer names containing it
        ("usb headset mono", "input", 1),
        # input-only devices are not candidates for playback
        ("USB Headset", "output", 1),
    ],
)
def test_find_device(sd, spec, kind, index):
    assert find_device(spec, kind).index == index


@pytest.mark.parametrize(
    ("spec", "kind", "message"),
    [
        ("usb", "input", "'usb' matches several input devices, give an index: "
         "1 'USB Headset Mono', 2 'USB Headset Mono (alt)'"),
        ("hdmi", "input", "no input device matches 'hdmi' (see `pqcall audio-devices`)"),
        ("2", "output", "no output device with index 2 (see `pqcall audio-devices`)"),
        ("99", "input", "no input device with index 99 (see `pqcall audio-devices`)"),
    ],
)  # fmt: skip
def test_find_device_refuses_clearly(sd, spec, kind, message):
    with pytest.raises(DeviceError) as raised:
        find_device(spec, kind)
    assert str(raised.value) == message


def test_real_listing_gives_records_or_one_clear_error():
    """Whatever this machine has (no PortAudio, no devices, a sound server), no crash."""
    try:
        listed = list_devices()
    except DeviceError as error:
        assert str(error) == PORTAUDIO_MISSING or str(error).startswith("cannot list")
    else:
        assert all(isinstance(device, DeviceInfo) for device in listed)
        assert sum(device.is_default_input for device in listed) <= 1


# a machine without libportaudio2


class _NoPortAudio:
    """An import hook that fails as ``import sounddevice`` does without libportaudio2."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return None


@pytest.fixture
def no_portaudio(monkeypatch) -> Iterator[None]:
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    hook = _NoPortAudio()
    sys.meta_path.insert(0, hook)
    yield
    sys.meta_path.remove(hook)


def test_missing_portaudio_is_one_clear_line(no_portaudio):
    assert PORTAUDIO_MISSING == "PortAudio library not found: apt install libportaudio2"
    for attempt in (list_devices, lambda: open_source("default"), lambda: open_sink("2")):
        with pytest.raises(DeviceError) as raised:
            attempt()
        assert str(raised.value) == PORTAUDIO_MISSING


def test_files_and_tones_work_without_portaudio(no_portaudio, tmp_path):
    source = open_source("tone:440")
    sink = open_sink(str(tmp_path / "out.wav"))
    sink.write_frame(ToneSource(440).read_frame())
    sink.close()
    assert source.read_frame() is not None
    assert "sounddevice" not in sys.modules


# capture


def test_source_opens_48_khz_mono_and_hands_over_captured_frames(sd):
    source = DeviceSource("pulse")
    (stream,) = sd.streams
    assert stream.is_started
    assert stream.kwargs | {"callback": None} == {
        "device": 3,
        "samplerate": 48_000,
        "channels": 1,
        "dtype": "int16",
        "blocksize": 960,
        "latency": "low",
        "callback": None,
    }
    capture(source, stream, block_of(1))
    capture(source, stream, block_of(2))
    assert np.array_equal(read(source), block_of(1))
    assert np.array_equal(read(source), block_of(2))
    assert source.counters() == devices.DeviceCounters(frames=2, overflows=0, underflows=0, xruns=0)
    source.close()
    assert stream.is_closed
    assert source.read_frame() is None


def test_source_gives_silence_when_nothing_was_captured_and_counts_it(sd):
    with DeviceSource("pulse") as source:
        frame = read(source)
        assert len(frame) == 960
        assert not frame.any()
        assert source.counters().underflows == 1


def test_source_queue_is_bounded_and_keeps_the_newest_audio(sd):
    with DeviceSource("pulse", max_queued_frames=4) as source:
        (stream,) = sd.streams
        for value in range(10):
            capture(source, stream, block_of(value))
        frames = [read(source) for _ in range(5)]
        assert [int(frame[0]) for frame in frames[:4]] == [6, 7, 8, 9]
        assert source.counters().overflows == 6
        assert source.counters().underflows == 1


def test_source_drops_audio_when_the_reader_falls_behind_the_device(sd):
    with DeviceSource("pulse", max_queued_frames=4) as source:
        (stream,) = sd.streams
        for _ in range(3):  # the device delivers 4 frames per read
            for value in range(4):
                capture(source, stream, block_of(value))
            source.read_frame()
        assert source.counters().overflows > 0
        assert source.counters().frames == 3


def test_source_mixes_a_stereo_only_device_down(sd):
    sd.stereo_only.add(0)
    with DeviceSource("0") as source:
        (stream,) = sd.streams
        assert stream.kwargs["channels"] == 2
        left_right = np.stack([block_of(100), block_of(300)], axis=1)
        stream.callback(left_right, 960, None, 0)
        assert np.array_equal(read(source), block_of(200))


def test_device_without_a_usable_format_is_refused(sd):
    sd.rates[0] = {96_000}  # neither 48 kHz nor its own default of 44.1 kHz
    with pytest.raises(DeviceError) as raised:
        DeviceSource("0")
    assert str(raised.value) == (
        "input device 'HDA Intel PCH: ALC892 Analog (hw:0,0)' "
        "takes no 16-bit audio at 48000 or 44100 Hz"
    )


def test_source_converts_a_44_1_khz_device_to_48_khz(sd):
    sd.rates[0] = {44_100}
    with DeviceSource("alc892", max_queued_frames=100) as source:
        stream = sd.streams[-1]
        assert (source.samplerate_hz, stream.kwargs["blocksize"]) == (44_100, 882)
        t = np.arange(44_100) / 44_100
        second = np.round(0.5 * 32767 * np.sin(2 * np.pi * 1_000 * t)).astype(np.int16)
        for start in range(0, 44_100, 882):
            capture(source, stream, second[start : start + 882], channels=2)
        frames: list[Pcm] = []
        while source.counters().underflows == 0:
            frames.append(read(source))
    pcm = np.concatenate(frames[:-1])
    assert 45 <= len(frames) - 1 <= 50  # the converter holds back a few ms
    spectrum = np.abs(np.fft.rfft(pcm[4_800:] * np.hanning(len(pcm) - 4_800)))
    assert np.argmax(spectrum) * SAMPLE_RATE_HZ / (len(pcm) - 4_800) == pytest.approx(1_000, abs=3)


def test_next_frame_waits_for_the_device_thread(sd):
    async def scenario() -> tuple[Pcm | None, Pcm | None]:
        source = DeviceSource("pulse")
        (stream,) = sd.streams
        timer = threading.Timer(0.05, capture, (source, stream, block_of(5)))
        timer.start()
        first = await asyncio.wait_for(source.next_frame(), timeout=5)
        asyncio.get_running_loop().call_later(0.05, source.close)
        after_close = await asyncio.wait_for(source.next_frame(), timeout=5)
        timer.join()
        return first, after_close

    first, after_close = asyncio.run(scenario())
    assert first is not None
    assert np.array_equal(first, block_of(5))
    assert after_close is None


def test_source_open_failure_is_a_device_error(sd):
    sd.open_error = "Device unavailable"
    with pytest.raises(DeviceError) as raised:
        DeviceSource("pulse")
    assert str(raised.value) == "cannot open input device 'pulse': Device unavailable"


# playback


def test_sink_plays_what_is_written_then_silence_counting_underflows(sd):
    with DeviceSink("pulse") as sink:
        (stream,) = sd.streams
        assert (stream.kwargs["samplerate"], stream.kwargs["channels"]) == (48_000, 1)
        assert not playback(stream, 960).any()
        assert sink.counters().underflows == 0  # nothing was written yet: not an underflow
        sink.write_frame(block_of(1))
        sink.write_frame(block_of(2, 480))
        assert sink.queued_samples == 1_440
        assert np.array_equal(playback(stream, 720), block_of(1, 720))
        played = playback(stream, 960)
        assert np.array_equal(
            played, np.concatenate([block_of(1, 240), block_of(2, 480), block_of(0, 240)])
        )
        assert sink.counters() == devices.DeviceCounters(
            frames=2, overflows=0, underflows=1, xruns=0
        )
    with pytest.raises(DeviceError, match=r"^output device 'pulse' is closed$"):
        sink.write_frame(block_of(1))


def test_sink_queue_is_bounded_and_drops_the_oldest(sd):
    with DeviceSink("pulse", max_queued_frames=3) as sink:
        (stream,) = sd.streams
        for value in range(5):
            sink.write_frame(block_of(value))
        assert sink.counters().overflows == 2
        assert [int(playback(stream, 960)[0]) for _ in range(3)] == [2, 3, 4]


def test_sink_converts_48_khz_for_a_device_that_lacks_it_and_fills_every_channel(sd):
    sd.rates[4] = {44_100}
    sd.stereo_only.add(4)
    with DeviceSink("HDMI") as sink:
        (stream,) = sd.streams
        assert (sink.samplerate_hz, stream.kwargs["blocksize"]) == (44_100, 882)
        assert stream.kwargs["channels"] == 2
        tone = ToneSource(1_000)
        for _ in range(50):
            sink.write_frame(tone.read_frame())
        played = np.concatenate([playback(stream, 882, channels=2) for _ in range(45)])
    spectrum = np.abs(np.fft.rfft(played * np.hanning(len(played))))
    assert np.argmax(spectrum) * 44_100 / len(played) == pytest.approx(1_000, abs=3)
