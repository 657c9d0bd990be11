"""How a phone's calls carry audio: the options, the call's devices, its first-frame times.

Scope: :class:`MediaOptions`, the one configuration of a call's media from
the client's side (device specs, ports, path timeouts, and the
:class:`~pqcall.transport.session.MediaSettings` that flow on to the codec and
the media protocol); :func:`open_call_audio`, which opens a call's source and
sink from their specs; :func:`open_processing`, the send side's echo/noise/gain
stage for them; and :class:`WallClockTrace`, which remembers when the
first frame was captured and played. Defaults are the lower layers' named
constants, never repeated here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pqcall.client.call_outcome import AudioOpenFailed
from pqcall.exceptions import DeviceError
from pqcall.media.audio import AudioSink, AudioSource, OnEnd, close_all
from pqcall.media.audio_spec import open_sink, open_source
from pqcall.media.devices import DeviceSink, DeviceSource
from pqcall.media.processing import ProcessingOptions, WebRtcProcessing, create_processing
from pqcall.transport.pathcheck import DIRECT_TIMEOUT_S, PATH_TIMEOUT_S
from pqcall.transport.session import MediaSettings

__all__ = [
    "MediaOptions",
    "WallClockTrace",
    "device_delay_ms",
    "open_call_audio",
    "open_processing",
]


@dataclass(frozen=True, slots=True)
class MediaOptions:
    """How a phone's calls carry audio."""

    audio_in: str = "default"
    """Source spec: ``default``, a device, ``tone:FREQ``, ``silence`` or a WAV path."""
    audio_out: str = "default"
    """Sink spec: ``default``, a device, ``null`` or a WAV path."""
    media_port: int = 0
    """Local UDP port for media (0: any free port)."""
    advertise: tuple[str, int] | None = None
    """The only address offered for the direct path (port forwarding), if set."""
    stun: tuple[str, int] | None = None
    """STUN server for the server-reflexive candidate (``--stun``); None: the pqcall server."""
    settings: MediaSettings = field(default_factory=MediaSettings)
    """Codec and media-session settings."""
    direct_timeout_s: float = DIRECT_TIMEOUT_S
    """How long the caller tries the direct path before the relay."""
    path_timeout_s: float = PATH_TIMEOUT_S
    """How long finding any path may take."""
    echo_cancel: bool = True
    """Cancel the speaker's echo in the microphone (a sound-device source only)."""
    noise_suppression: bool = True
    """Suppress background noise (a sound-device source only)."""
    auto_gain: bool = True
    """Automatic gain control (a sound-device source only)."""
    voice_disguise: str | None = None
    """Voice disguise preset (``--voice-disguise``, :mod:`pqcall.media.disguise`); None: off."""


class WallClockTrace:
    """Remembers the wall-clock times of the first captured and first played frame."""

    def __init__(self) -> None:
        self.first_capture_unix: float | None = None  # when our first frame was captured
        self.first_playout_unix: float | None = None  # when the peer's first frame played

    def frame_captured(self, timestamp: int, now: float) -> None:
        if self.first_capture_unix is None:
            self.first_capture_unix = _wall_clock(now)

    def frame_played(self, timestamp: int, now: float) -> None:
        if self.first_playout_unix is None:
            self.first_playout_unix = _wall_clock(now)


def _wall_clock(loop_time: float) -> float:
    """``loop_time`` (the event loop's clock) as unix time."""
    return time.time() - (asyncio.get_running_loop().time() - loop_time)


def open_processing(
    options: MediaOptions, source: AudioSource, sink: AudioSink
) -> WebRtcProcessing | None:
    """The send side's processing stage for a call: on for a sound-device source only.

    Echo cancellation, noise suppression and gain control as ``options`` say
    (WAV files, tones and silence get none, so codec benchmarks stay comparable);
    AEC3's delay hint is the devices' reported output and input latency.
    None when nothing is on, or the binding is missing (logged once).
    """
    if not isinstance(source, DeviceSource):
        return None
    processing = ProcessingOptions(
        echo_cancel=options.echo_cancel,
        noise_suppression=options.noise_suppression,
        auto_gain=options.auto_gain,
    )
    return create_processing(processing, stream_delay_ms=device_delay_ms(source, sink))


def device_delay_ms(source: AudioSource, sink: AudioSink) -> float:
    """The devices' reported latency, capture plus playback (0 for what is not a device)."""
    total = 0.0
    for end in (source, sink):
        if isinstance(end, (DeviceSource, DeviceSink)):
            total += end.latency_s * 1000
    return total


def open_call_audio(
    audio_in: str | None, audio_out: str | None, frame_ms: int
) -> tuple[AudioSource | None, AudioSink | None]:
    """Open a call's source and sink (None: not that one); both or neither.

    Raises:
        DeviceError: a spec cannot be opened.
    """
    source = None if audio_in is None else open_source(audio_in, frame_ms, OnEnd.SILENCE)
    try:
        sink = None if audio_out is None else open_sink(audio_out)
    except Exception:
        close_all((source,))
        raise
    return source, sink


def open_call_devices(
    audio_in: str, audio_out: str, frame_ms: int
) -> tuple[AudioSource, AudioSink]:
    """Open a call's microphone and speaker, saying which one failed.

    Raises:
        AudioOpenFailed: the microphone or the speaker cannot be opened (nothing stays open).
    """
    try:
        source = open_source(audio_in, frame_ms, OnEnd.SILENCE)
    except DeviceError as exc:
        raise AudioOpenFailed("microphone", exc) from exc
    try:
        sink = open_sink(audio_out)
    except DeviceError as exc:
        close_all((source,))
        raise AudioOpenFailed("speaker", exc) from exc
    return source, sink
