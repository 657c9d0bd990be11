"""Sound devices through PortAudio (``sounddevice``): listing, capture, playback.

Scope: the real-device :class:`~pqcall.media.audio.AudioSource` and
:class:`~pqcall.media.audio.AudioSink`. PortAudio runs each stream's callback
in its own thread; the callback never blocks. Frames cross between that
thread and the caller through a bounded :class:`collections.deque` (appends
and pops are atomic, so no lock is taken in the callback): a full queue
drops its oldest frame and counts an overflow; an empty one plays or yields
silence and counts an underflow. :meth:`DeviceSource.next_frame` wakes an
asyncio task through ``loop.call_soon_threadsafe``.

When a device does not run at 48 kHz, its audio is converted with soxr.

Devices plugged in later: :func:`rescan_devices` restarts PortAudio so it
sees them, but only while no stream is open (a restart would stop them); a
spec ``pulse:NAME`` names a PulseAudio sink or source, listed live with
``pactl`` (:mod:`pqcall.media.pulse_devices`), so during a call a new
headset can be chosen when PulseAudio is the sound server.

``sounddevice`` is imported lazily, on the first use of a device: it raises
``OSError`` at import when libportaudio2 is missing, and files, tones and the
null sink must work without it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import soxr  # type: ignore[import-untyped]

from pqcall.exceptions import DeviceError
from pqcall.media.audio import ClosingMixin
from pqcall.media.codec import (
    CHANNELS,
    DEFAULT_FRAME_MS,
    SAMPLE_RATE_HZ,
    Pcm,
    check_pcm,
    samples_per_frame,
    silence,
)
from pqcall.media.pulse_devices import PULSE_DEVICE, pulse_target, split_pulse_spec

__all__ = [
    "DEFAULT_MAX_QUEUED_FRAMES",
    "DeviceCounters",
    "DeviceInfo",
    "DeviceSink",
    "DeviceSource",
    "find_device",
    "list_devices",
    "open_streams",
    "rescan_devices",
]

DEFAULT_MAX_QUEUED_FRAMES: Final = 10
"""Frames a device queue holds before it drops the oldest (200 ms at 20 ms frames)."""
PORTAUDIO_MISSING: Final = "PortAudio library not found: apt install libportaudio2"
_STEREO: Final = 2

Kind = Literal["input", "output"]


def _sounddevice() -> Any:
    """The ``sounddevice`` module, or a one-line DeviceError if it cannot load."""
    try:
        import sounddevice  # type: ignore[import-untyped]
    except OSError:
        raise DeviceError(PORTAUDIO_MISSING) from None
    except ImportError:
        raise DeviceError("the sounddevice package is missing: pip install sounddevice") from None
    return sounddevice


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One PortAudio device, as :func:`list_devices` reports it."""

    index: int
    """PortAudio's index of the device (valid until PortAudio restarts)."""
    name: str
    """The device's name."""
    host_api: str
    """The audio system it belongs to (ALSA, PulseAudio, Core Audio, WASAPI...)."""
    input_channels: int
    """Maximum capture channels; 0 for an output-only device."""
    output_channels: int
    """Maximum playback channels; 0 for an input-only device."""
    default_samplerate_hz: float
    """The rate the device prefers."""
    is_default_input: bool
    """Whether ``default`` means this device for capture."""
    is_default_output: bool
    """Whether ``default`` means this device for playback."""

    def channels(self, kind: Kind) -> int:
        """Maximum channels of this device for capture or playback."""
        return self.input_channels if kind == "input" else self.output_channels


@dataclass(frozen=True, slots=True)
class DeviceCounters:
    """What a device stream did so far (a snapshot)."""

    frames: int
    """Frames of real audio captured or played."""
    overflows: int
    """Frames dropped because the queue was full."""
    underflows: int
    """Times silence stood in for audio that was not there."""
    xruns: int
    """Callbacks in which PortAudio itself reported an overrun or underrun."""


def _default_index(sd: Any, kind: Kind) -> int | None:
    try:
        index = int(sd.query_devices(kind=kind)["index"])
    except (sd.PortAudioError, ValueError, KeyError):
        return None
    return index if index >= 0 else None


_open_streams = 0  # DeviceSource/DeviceSink streams open now (PortAudio must not restart)
_streams_lock = threading.Lock()  # streams open and close in worker threads too (to_thread)


def open_streams() -> int:
    """How many device streams are open now."""
    return _open_streams


def _count_stream(change: int) -> None:
    global _open_streams
    with _streams_lock:
        _open_streams += change


def rescan_devices() -> bool:
    """Restart PortAudio so :func:`list_devices` sees new devices; only if no stream is open.

    Returns:
        Whether PortAudio was restarted (False: a stream is open; PulseAudio's
        ``pulse:NAME`` specs still show new devices then).

    Raises:
        DeviceError: the PortAudio library is missing or fails.
    """
    sd = _sounddevice()
    with _streams_lock:  # no stream opens or closes meanwhile
        if _open_streams:
            return False
        try:
            sd._terminate()
            sd._initialize()
        except sd.PortAudioError as error:
            raise DeviceError(f"cannot rescan audio devices: {error}") from None
    return True


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio sees; an empty list on a machine with none.

    Raises:
        DeviceError: the PortAudio library is missing or fails.
    """
    sd = _sounddevice()
    try:
        raw_devices = sd.query_devices()
        host_apis = sd.query_hostapis()
    except sd.PortAudioError as error:
        raise DeviceError(f"cannot list audio devices: {error}") from None
    default_input = _default_index(sd, "input")
    default_output = _default_index(sd, "output")
    return [
        DeviceInfo(
            index=int(raw["index"]),
            name=str(raw["name"]),
            host_api=str(host_apis[raw["hostapi"]]["name"]),
            input_channels=int(raw["max_input_channels"]),
            output_channels=int(raw["max_output_channels"]),
            default_samplerate_hz=float(raw["default_samplerate"]),
            is_default_input=raw["index"] == default_input,
            is_default_output=raw["index"] == default_output,
        )
        for raw in raw_devices
    ]


def find_device(spec: str, kind: Kind) -> DeviceInfo:
    """The device ``spec`` names for capture (``input``) or playback (``output``).

    Args:
        spec: ``default``; an index; ``pulse:NAME`` (PortAudio's ``pulse``
            device, connected to PulseAudio's NAME when opened); or a
            case-insensitive substring of the name (an exact name wins).

    Raises:
        DeviceError: no such device, no device of that kind, or the name is
            ambiguous (the message lists the candidates with their indices).
    """
    usable = [device for device in list_devices() if device.channels(kind) > 0]
    if split_pulse_spec(spec) is not None:
        spec = PULSE_DEVICE
    if spec == "default":
        for device in usable:
            if device.is_default_input if kind == "input" else device.is_default_output:
                return device
        raise DeviceError(f"no default {kind} device (see `pqcall audio-devices`)")
    if spec.isdigit():
        for device in usable:
            if device.index == int(spec):
                return device
        raise DeviceError(f"no {kind} device with index {spec} (see `pqcall audio-devices`)")
    wanted = spec.casefold()
    exact = [device for device in usable if device.name.casefold() == wanted]
    matches = exact or [device for device in usable if wanted in device.name.casefold()]
    if not matches:
        raise DeviceError(f"no {kind} device matches {spec!r} (see `pqcall audio-devices`)")
    if len(matches) > 1:
        names = ", ".join(f"{device.index} {device.name!r}" for device in matches)
        raise DeviceError(f"{spec!r} matches several {kind} devices, give an index: {names}")
    return matches[0]


def _stream_format(
    sd: Any, device: DeviceInfo, kind: Kind, samplerate_hz: int | None
) -> tuple[int, int]:
    """The (rate, channels) to open ``device`` with: 48 kHz mono when it takes it."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    rates = (
        [samplerate_hz] if samplerate_hz else [SAMPLE_RATE_HZ, round(device.default_samplerate_hz)]
    )
    channel_counts = dict.fromkeys((CHANNELS, min(_STEREO, device.channels(kind))))
    for rate in rates:
        for channels in channel_counts:
            try:
                check(device=device.index, samplerate=rate, channels=channels, dtype="int16")
            except (sd.PortAudioError, ValueError):
                continue
            return rate, channels
    tried = " or ".join(str(rate) for rate in dict.fromkeys(rates))
    raise DeviceError(f"{kind} device {device.name!r} takes no 16-bit audio at {tried} Hz")


def _open_error(kind: Kind, device: DeviceInfo, error: Exception) -> DeviceError:
    return DeviceError(f"cannot open {kind} device {device.name!r}: {error}")


class DeviceSource(ClosingMixin):
    """Captures from a sound device; an :class:`~pqcall.media.audio.AudioSource`.

    Capture starts when the source is made. :meth:`read_frame` never waits:
    it gives the oldest captured frame, or silence (an underflow) when none is
    ready, so a caller that paces itself by its own clock keeps its pace.
    :meth:`next_frame` instead waits for the device.
    """

    def __init__(
        self,
        spec: str = "default",
        frame_ms: int = DEFAULT_FRAME_MS,
        *,
        max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
        samplerate_hz: int | None = None,
    ) -> None:
        """Open and start the capture device ``spec`` names (see :func:`find_device`).

        Args:
            samplerate_hz: run the device at this rate instead of choosing
                (48 kHz when it takes it, else its own default rate).

        Raises:
            DeviceError: no PortAudio, no such device, or it will not open.
        """
        sd = _sounddevice()
        self.device = find_device(spec, "input")
        """The device captured from."""
        self.samplerate_hz, channels = _stream_format(sd, self.device, "input", samplerate_hz)
        """The rate the device runs at; converted to 48 kHz when different."""
        self._frame_samples = samples_per_frame(frame_ms)
        self._max_pending = max_queued_frames * self._frame_samples
        # written by the callback thread only
        self._blocks: deque[Pcm] = deque(maxlen=max_queued_frames)
        self._overflows = 0
        self._xruns = 0
        # used by the reading thread only
        self._pending = silence(0)
        self._frames = 0
        self._underflows = 0
        self._dropped_pending = 0
        self._resampler = (
            None
            if self.samplerate_hz == SAMPLE_RATE_HZ
            else soxr.ResampleStream(self.samplerate_hz, SAMPLE_RATE_HZ, CHANNELS, dtype="int16")
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Event | None = None
        self._is_closed = False
        try:
            with pulse_target(split_pulse_spec(spec), "input"):
                self._stream = sd.InputStream(
                    device=self.device.index,
                    samplerate=self.samplerate_hz,
                    channels=channels,
                    dtype="int16",
                    blocksize=self.samplerate_hz * frame_ms // 1000,
                    latency="low",
                    callback=self._on_capture,
                )
                self._stream.start()
        except (sd.PortAudioError, ValueError) as error:
            raise _open_error("input", self.device, error) from None
        _count_stream(1)

    @property
    def latency_s(self) -> float:
        """The input latency PortAudio reports for the stream (an echo canceller's delay hint)."""
        return float(self._stream.latency)

    @property
    def frame_samples(self) -> int:
        """Samples in every frame."""
        return self._frame_samples

    def counters(self) -> DeviceCounters:
        """A snapshot of what the stream did so far."""
        return DeviceCounters(
            frames=self._frames,
            overflows=self._overflows + self._dropped_pending,
            underflows=self._underflows,
            xruns=self._xruns,
        )

    def read_frame(self) -> Pcm | None:
        """The oldest captured frame, silence if none is ready, None once closed."""
        if self._is_closed:
            return None
        frame = self._take_frame()
        if frame is None:
            self._underflows += 1
            return silence(self._frame_samples)
        return frame

    async def next_frame(self) -> Pcm | None:
        """Wait for the next captured frame; None once the source is closed."""
        if self._ready is None:
            self._ready = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        while not self._is_closed:
            frame = self._take_frame()
            if frame is not None:
                return frame
            self._ready.clear()
            # a block may have landed between the take and the clear
            frame = self._take_frame()
            if frame is not None:
                return frame
            await self._ready.wait()
        return None

    def close(self) -> None:
        """Stop capturing and release the device."""
        if self._is_closed:
            return
        self._is_closed = True
        self._loop = None
        self._stream.abort(ignore_errors=True)
        self._stream.close(ignore_errors=True)
        _count_stream(-1)
        if self._ready is not None:
            self._ready.set()

    def _on_capture(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: copy, queue, wake; never block
        if status:
            self._xruns += 1
        if indata.shape[1] == 1:
            block = indata[:, 0].copy()
        else:
            block = indata.mean(axis=1).astype(np.int16)
        if len(self._blocks) == self._blocks.maxlen:
            self._overflows += 1
        self._blocks.append(block)
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop closed under us
                self._loop = None

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()

    def _take_frame(self) -> Pcm | None:
        while self._blocks:
            block = self._blocks.popleft()
            if self._resampler is not None:
                block = self._resampler.resample_chunk(block)
            self._pending = np.concatenate((self._pending, block))
        excess = len(self._pending) - self._max_pending
        if excess > 0:  # the reader fell behind the device clock: keep the newest audio
            self._dropped_pending += -(-excess // self._frame_samples)
            self._pending = self._pending[excess:]
        if len(self._pending) < self._frame_samples:
            return None
        frame = self._pending[: self._frame_samples]
        self._pending = self._pending[self._frame_samples :]
        self._frames += 1
        return frame


class DeviceSink(ClosingMixin):
    """Plays to a sound device; an :class:`~pqcall.media.audio.AudioSink`.

    :meth:`write_frame` queues and returns at once; the device pulls from the
    queue in its own thread and plays silence when it runs dry.
    """

    def __init__(
        self,
        spec: str = "default",
        frame_ms: int = DEFAULT_FRAME_MS,
        *,
        max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
        samplerate_hz: int | None = None,
    ) -> None:
        """Open and start the playback device ``spec`` names (see :func:`find_device`).

        Args:
            frame_ms: the device's block duration (frames written may differ).
            samplerate_hz: run the device at this rate instead of choosing.

        Raises:
            DeviceError: no PortAudio, no such device, or it will not open.
        """
        sd = _sounddevice()
        self.device = find_device(spec, "output")
        """The device played to."""
        self.samplerate_hz, channels = _stream_format(sd, self.device, "output", samplerate_hz)
        """The rate the device runs at; 48 kHz audio is converted when different."""
        # written by the writing thread only
        self._chunks: deque[Pcm] = deque(maxlen=max_queued_frames)
        self._overflows = 0
        self._has_audio = False
        # used by the callback thread only
        self._leftover = silence(0)
        self._frames = 0
        self._underflows = 0
        self._xruns = 0
        self._resampler = (
            None
            if self.samplerate_hz == SAMPLE_RATE_HZ
            else soxr.ResampleStream(SAMPLE_RATE_HZ, self.samplerate_hz, CHANNELS, dtype="int16")
        )
        self._is_closed = False
        try:
            with pulse_target(split_pulse_spec(spec), "output"):
                self._stream = sd.OutputStream(
                    device=self.device.index,
                    samplerate=self.samplerate_hz,
                    channels=channels,
                    dtype="int16",
                    blocksize=self.samplerate_hz * frame_ms // 1000,
                    latency="low",
                    callback=self._on_playback,
                )
                self._stream.start()
        except (sd.PortAudioError, ValueError) as error:
            raise _open_error("output", self.device, error) from None
        _count_stream(1)

    @property
    def latency_s(self) -> float:
        """The output latency PortAudio reports for the stream (an echo canceller's delay hint)."""
        return float(self._stream.latency)

    @property
    def queued_samples(self) -> int:
        """Samples (at the device rate) written but not yet handed to the device."""
        # list() copies the deque without giving up the GIL, so it is consistent
        return sum(len(chunk) for chunk in list(self._chunks)) + len(self._leftover)

    def counters(self) -> DeviceCounters:
        """A snapshot of what the stream did so far."""
        return DeviceCounters(
            frames=self._frames,
            overflows=self._overflows,
            underflows=self._underflows,
            xruns=self._xruns,
        )

    def write_frame(self, pcm: Pcm) -> None:
        """Queue one frame of any length for playback; a full queue drops its oldest.

        Raises:
            LocalProtocolError: ``pcm`` is not media-layer PCM.
            DeviceError: the sink is closed.
        """
        check_pcm(pcm)
        if self._is_closed:
            raise DeviceError(f"output device {self.device.name!r} is closed")
        chunk = pcm if self._resampler is None else self._resampler.resample_chunk(pcm)
        if len(self._chunks) == self._chunks.maxlen:
            self._overflows += 1
        self._chunks.append(chunk)
        self._has_audio = True

    def close(self) -> None:
        """Stop playing (what the device already holds still plays) and release it."""
        if self._is_closed:
            return
        self._is_closed = True
        self._stream.stop(ignore_errors=True)
        self._stream.close(ignore_errors=True)
        _count_stream(-1)

    def _on_playback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread: fill from the queue, pad with silence; never block
        if status:
            self._xruns += 1
        mono = np.zeros(frames, dtype=np.int16)
        filled = 0
        while filled < frames:
            if len(self._leftover) == 0:
                try:
                    self._leftover = self._chunks.popleft()
                except IndexError:
                    break
                self._frames += 1
            take = min(frames - filled, len(self._leftover))
            mono[filled : filled + take] = self._leftover[:take]
            self._leftover = self._leftover[take:]
            filled += take
        if filled < frames and self._has_audio:
            self._underflows += 1
        outdata[:] = mono[:, np.newaxis]
