"""Audio sources and sinks without a sound card: WAV files, tone, silence, null, factory."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from pqcall.exceptions import DeviceError, LocalProtocolError
from pqcall.media import devices
from pqcall.media.audio import (
    AudioSink,
    AudioSource,
    NullSink,
    OnEnd,
    SilenceSource,
    ToneSource,
    WavFileSink,
    WavFileSource,
    close_all,
)
from pqcall.media.audio_spec import open_sink, open_source
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm


def sine(frequency_hz: float, seconds: float, rate_hz: int, amplitude: float) -> np.ndarray:
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    return amplitude * np.sin(2 * np.pi * frequency_hz * t)


def write_wav(path: Path, channels: np.ndarray, rate_hz: int, sample_width: int = 2) -> Path:
    """Write float channels (shape: channels x samples, full scale 1.0) as a PCM WAV file."""
    interleaved = np.atleast_2d(channels).T.reshape(-1)
    if sample_width == 1:
        raw = np.round(interleaved * 127 + 128).astype(np.uint8).tobytes()
    elif sample_width == 3:
        as_int32 = np.round(interleaved * (2**23 - 1)).astype("<i4")
        raw = as_int32.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        dtype = {2: "<i2", 4: "<i4"}[sample_width]
        raw = np.round(interleaved * (2 ** (8 * sample_width - 1) - 1)).astype(dtype).tobytes()
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(np.atleast_2d(channels).shape[0])
        wav.setsampwidth(sample_width)
        wav.setframerate(rate_hz)
        wav.writeframes(raw)
    return path


def read_all(source: AudioSource, limit: int = 10_000) -> list[Pcm]:
    frames: list[Pcm] = []
    while (frame := source.read_frame()) is not None and len(frames) < limit:
        frames.append(frame)
    return frames


def read_one(source: AudioSource) -> Pcm:
    frame = source.read_frame()
    assert frame is not None
    return frame


def rms(pcm: Pcm) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def dominant_frequency_hz(pcm: Pcm) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * SAMPLE_RATE_HZ / len(pcm))


# sources


def test_sources_and_sinks_implement_the_protocols(tmp_path):
    sources: list[AudioSource] = [
        SilenceSource(),
        ToneSource(440),
        WavFileSource(write_wav(tmp_path / "a.wav", sine(440, 0.1, 48_000, 0.5), 48_000)),
    ]
    sinks: list[AudioSink] = [NullSink(), WavFileSink(tmp_path / "b.wav")]
    for source in sources:
        source.close()
    for sink in sinks:
        sink.close()


def test_wav_source_resamples_16_khz_stereo_to_48_khz_mono(tmp_path):
    left, right = sine(440, 1.0, 16_000, 0.6), sine(440, 1.0, 16_000, 0.2)
    path = write_wav(tmp_path / "stereo16k.wav", np.stack([left, right]), 16_000)
    with WavFileSource(path) as source:
        assert source.duration_s == 1.0
        frames = read_all(source)
    assert len(frames) == 50  # 1 s of 20 ms frames
    assert {(len(frame), frame.dtype) for frame in frames} == {(960, np.dtype(np.int16))}
    pcm = np.concatenate(frames)
    middle = pcm[4_800:-4_800]
    assert dominant_frequency_hz(middle) == pytest.approx(440, abs=2)
    # the mono mix is the mean of the channels: amplitude 0.4, rms 0.4 / sqrt(2)
    assert rms(middle) == pytest.approx(0.4 / np.sqrt(2) * 32767, rel=0.02)


def test_wav_source_pads_the_last_frame_and_stops(tmp_path):
    path = write_wav(tmp_path / "short.wav", sine(440, 0.05, 48_000, 0.5), 48_000)
    with WavFileSource(path) as source:
        frames = read_all(source)
        assert source.read_frame() is None
    assert len(frames) == 3  # 2400 samples: 960 + 960 + 480 and 480 of silence
    assert np.array_equal(frames[2][480:], np.zeros(480, np.int16))
    assert rms(frames[2][:400]) > 1_000


def test_wav_source_can_go_on_in_silence(tmp_path):
    path = write_wav(tmp_path / "short.wav", sine(440, 0.04, 48_000, 0.5), 48_000)
    with WavFileSource(path, on_end=OnEnd.SILENCE) as source:
        frames = [read_one(source) for _ in range(10)]
    assert rms(frames[1]) > 1_000
    assert all(not frame.any() for frame in frames[2:])


def test_wav_source_can_loop(tmp_path):
    path = write_wav(tmp_path / "short.wav", sine(440, 0.04, 48_000, 0.5), 48_000)
    with WavFileSource(path, on_end=OnEnd.LOOP) as source:
        frames = [read_one(source) for _ in range(6)]
    assert np.array_equal(frames[0], frames[2])
    assert np.array_equal(frames[1], frames[5])


@pytest.mark.parametrize("sample_width", [1, 2, 3, 4], ids=lambda w: f"{8 * w}bit")
def test_wav_source_reads_every_pcm_sample_width(tmp_path, sample_width):
    path = write_wav(tmp_path / "w.wav", sine(1_000, 0.2, 48_000, 0.5), 48_000, sample_width)
    with WavFileSource(path) as source:
        pcm = np.concatenate(read_all(source))
    assert len(pcm) == 9_600
    expected = np.round(sine(1_000, 0.2, 48_000, 0.5) * 32767)
    # 8-bit keeps 8 bits of the sample, the others at least 16
    tolerance = 256 if sample_width == 1 else 2
    assert np.max(np.abs(pcm - expected)) <= tolerance


def test_wav_source_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(DeviceError) as raised:
        WavFileSource(tmp_path / "missing.wav")
    assert str(raised.value) == f"WAV file not found: {tmp_path / 'missing.wav'}"


def test_wav_source_of_a_file_that_is_not_wav(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("hello")
    with pytest.raises(DeviceError, match=r"text\.wav is not a readable WAV file: "):
        WavFileSource(path)


def test_tone_has_its_frequency_and_amplitude_and_no_seams():
    with ToneSource(1_000, amplitude=0.25) as source:
        frames = [source.read_frame() for _ in range(50)]
    pcm = np.concatenate(frames)
    assert dominant_frequency_hz(pcm) == pytest.approx(1_000, abs=1)
    assert np.max(np.abs(pcm)) == pytest.approx(0.25 * 32767, abs=1)
    # one step of a 1 kHz sine at this amplitude is at most 2*pi*1000/48000 of its peak
    assert np.max(np.abs(np.diff(pcm.astype(np.int32)))) <= 0.25 * 32767 * 0.131 + 1


@pytest.mark.parametrize(
    ("frequency", "amplitude", "message"),
    [
        (0, 0.5, "tone frequency must be between 0 and 24000 Hz, got 0"),
        (24_000, 0.5, "tone frequency must be between 0 and 24000 Hz, got 24000"),
        (440, 1.5, "tone amplitude must be between 0 and 1, got 1.5"),
    ],
)
def test_tone_refuses_what_it_cannot_play(frequency, amplitude, message):
    with pytest.raises(DeviceError) as raised:
        ToneSource(frequency, amplitude)
    assert str(raised.value) == message


@pytest.mark.parametrize("frame_ms", [10, 20, 40, 60])
def test_silence_is_zeros_of_the_frame_size(frame_ms):
    frame = SilenceSource(frame_ms).read_frame()
    assert frame.dtype == np.int16
    assert len(frame) == 48 * frame_ms
    assert not frame.any()


# sinks


def test_null_sink_counts_what_it_drops():
    sink = NullSink()
    sink.write_frame(np.ones(960, np.int16))
    sink.write_frame(np.ones(480, np.int16))
    assert (sink.frames_written, sink.samples_written) == (2, 1_440)
    with pytest.raises(LocalProtocolError):
        sink.write_frame(np.ones(960, np.float64))


def test_wav_sink_round_trip(tmp_path):
    frames = [ToneSource(440).read_frame() for _ in range(10)] + [np.arange(480, dtype=np.int16)]
    with WavFileSink(tmp_path / "out.wav") as sink:
        for frame in frames:
            sink.write_frame(frame)
    with wave.open(str(tmp_path / "out.wav"), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 48_000)
        written = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert np.array_equal(written, np.concatenate(frames))
    with WavFileSource(tmp_path / "out.wav") as source:
        assert np.array_equal(read_one(source), frames[0])


def test_wav_sink_file_is_readable_before_close(tmp_path):
    """A process that dies mid-call still leaves a valid file up to its last frame."""
    sink = WavFileSink(tmp_path / "live.wav")
    for _ in range(5):
        sink.write_frame(np.full(960, 7, np.int16))
    with wave.open(str(tmp_path / "live.wav"), "rb") as wav:
        assert wav.getnframes() == 4_800
        assert np.all(np.frombuffer(wav.readframes(4_800), "<i2") == 7)
    sink.close()
    sink.close()
    with pytest.raises(DeviceError, match="already closed"):
        sink.write_frame(np.zeros(960, np.int16))


def test_wav_sink_that_cannot_be_created(tmp_path):
    with pytest.raises(DeviceError, match=r"^cannot write WAV file .*: No such file or directory$"):
        WavFileSink(tmp_path / "no" / "such" / "dir.wav")


# the factory


class FakeDevice:
    """Stands in for DeviceSource / DeviceSink and records how it was made."""

    def __init__(self, spec: str, frame_ms: int = 20) -> None:
        self.spec = spec
        self.frame_ms = frame_ms


@pytest.fixture
def fake_devices(monkeypatch):
    monkeypatch.setattr(devices, "DeviceSource", FakeDevice)
    monkeypatch.setattr(devices, "DeviceSink", FakeDevice)


def test_open_source_parses_every_form(tmp_path, monkeypatch, fake_devices):
    wav = write_wav(tmp_path / "speech.wav", sine(440, 0.1, 8_000, 0.5), 8_000)
    bare = write_wav(tmp_path / "recording", sine(440, 0.1, 8_000, 0.5), 8_000)
    monkeypatch.chdir(tmp_path)

    tone = open_source("tone:440.5", frame_ms=10)
    assert isinstance(tone, ToneSource)
    assert (tone.frequency_hz, tone.frame_samples) == (440.5, 480)
    assert isinstance(open_source("silence"), SilenceSource)
    for spec in (str(wav), "speech.wav", "recording", str(bare)):
        source = open_source(spec)
        assert isinstance(source, WavFileSource), spec
        source.close()
    looping = open_source("speech.wav", on_end=OnEnd.LOOP)
    assert isinstance(looping, WavFileSource)
    assert looping.on_end is OnEnd.LOOP
    for spec in ("default", "3", "USB Audio", " pulse "):
        device = open_source(spec, frame_ms=40)
        assert isinstance(device, FakeDevice)
        assert (device.spec, device.frame_ms) == (spec.strip(), 40)


def test_open_sink_parses_every_form(tmp_path, fake_devices):
    assert isinstance(open_sink("null"), NullSink)
    sink = open_sink(str(tmp_path / "out.wav"))
    assert isinstance(sink, WavFileSink)
    sink.close()
    for spec in ("default", "0", "Speakers"):
        device = open_sink(spec)
        assert isinstance(device, FakeDevice)
        assert device.spec == spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty audio source: use default, a device, tone:FREQ, silence or a WAV file"),
        ("tone:", "invalid source 'tone:': expected tone:FREQ with FREQ in Hz, e.g. tone:440"),
        (
            "tone:abc",
            "invalid source 'tone:abc': expected tone:FREQ with FREQ in Hz, e.g. tone:440",
        ),
        (
            "tone:nan",
            "invalid source 'tone:nan': expected tone:FREQ with FREQ in Hz, e.g. tone:440",
        ),
        ("tone:-5", "tone frequency must be between 0 and 24000 Hz, got -5"),
        ("tone:30000", "tone frequency must be between 0 and 24000 Hz, got 30000"),
        ("missing.wav", "WAV file not found: missing.wav"),
    ],
)
def test_open_source_rejects_bad_specs_clearly(spec, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeviceError) as raised:
        open_source(spec)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("  ", "empty audio sink: use default, a device, null or a WAV file"),
        ("silence", "'silence' is a source, not a sink: use default, a device, null or a WAV file"),
        (
            "tone:440",
            "'tone:440' is a source, not a sink: use default, a device, null or a WAV file",
        ),
    ],
)
def test_open_sink_rejects_bad_specs_clearly(spec, message):
    with pytest.raises(DeviceError) as raised:
        open_sink(spec)
    assert str(raised.value) == message


class BrokenSink:
    def write_frame(self, pcm: Pcm) -> None:
        pass

    def close(self) -> None:
        raise OSError("device vanished")


def test_close_all_closes_the_rest_when_one_fails(tmp_path, caplog):
    wav = WavFileSink(tmp_path / "out.wav")
    wav.write_frame(np.ones(960, dtype=np.int16))
    close_all([BrokenSink(), None, wav])
    with wave.open(str(tmp_path / "out.wav"), "rb") as written:  # closed: a whole file
        assert written.getnframes() == 960
    assert "device vanished" in caplog.text
