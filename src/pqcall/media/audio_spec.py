"""The CLI syntax of audio sources and sinks, and the factory that opens what it names.

Scope: :func:`open_source` and :func:`open_sink` turn a spec typed by a user (or
set in a config) into a source or sink of :mod:`pqcall.media.audio` or
:mod:`pqcall.media.devices`; both of those stay free of each other's names::

    SRC   default | DEVICE-NAME | DEVICE-INDEX | pulse:SOURCE | tone:FREQ | silence | PATH.wav
    SINK  default | DEVICE-NAME | DEVICE-INDEX | pulse:SINK | null | PATH.wav

(``pulse:NAME``: a PulseAudio source or sink, including ones plugged in
after start; :mod:`pqcall.media.pulse_devices`.)

Every bad spec is a :class:`~pqcall.exceptions.DeviceError` with one line for the
user. PortAudio is loaded only when a device is opened.
"""

from __future__ import annotations

import math
from pathlib import Path

from pqcall.exceptions import DeviceError
from pqcall.media import devices
from pqcall.media.audio import (
    WAV_SUFFIX,
    AudioSink,
    AudioSource,
    NullSink,
    OnEnd,
    SilenceSource,
    ToneSource,
    WavFileSink,
    WavFileSource,
)
from pqcall.media.codec import DEFAULT_FRAME_MS

__all__ = ["open_sink", "open_source"]


def _tone_frequency(spec: str) -> float:
    text = spec.removeprefix("tone:")
    try:
        frequency = float(text)
    except ValueError:
        frequency = math.nan
    if not math.isfinite(frequency):
        raise DeviceError(
            f"invalid source {spec!r}: expected tone:FREQ with FREQ in Hz, e.g. tone:440"
        )
    return frequency


def _is_wav_path(spec: str) -> bool:
    return spec.lower().endswith(WAV_SUFFIX) or "/" in spec or Path(spec).is_file()


def open_source(
    spec: str, frame_ms: int = DEFAULT_FRAME_MS, on_end: OnEnd = OnEnd.STOP
) -> AudioSource:
    """Open the source the CLI syntax names.

    Args:
        spec: ``default``, a device name (a case-insensitive substring) or
            index, ``tone:FREQ``, ``silence``, or the path of a WAV file (a
            name ending in ``.wav``, containing ``/``, or naming a file).
        frame_ms: frame duration of the source.
        on_end: what a WAV source does after its end.

    Raises:
        DeviceError: an empty or invalid spec, a missing file, no such
            device, or no PortAudio library; the message is one line for the user.
    """
    spec = spec.strip()
    if not spec:
        raise DeviceError(
            "empty audio source: use default, a device, tone:FREQ, silence or a WAV file"
        )
    if spec.startswith("tone:"):
        return ToneSource(_tone_frequency(spec), frame_ms=frame_ms)
    if spec == "silence":
        return SilenceSource(frame_ms)
    if _is_wav_path(spec):
        return WavFileSource(spec, frame_ms, on_end)
    return devices.DeviceSource(spec, frame_ms)


def open_sink(spec: str) -> AudioSink:
    """Open the sink the CLI syntax names.

    Args:
        spec: ``default``, a device name (a case-insensitive substring) or
            index, ``null``, or the path of a WAV file to write (a name
            ending in ``.wav`` or containing ``/``).

    Raises:
        DeviceError: an empty or invalid spec, an unwritable file, no such
            device, or no PortAudio library; the message is one line for the user.
    """
    spec = spec.strip()
    if not spec:
        raise DeviceError("empty audio sink: use default, a device, null or a WAV file")
    if spec == "null":
        return NullSink()
    if spec == "silence" or spec.startswith("tone:"):
        raise DeviceError(
            f"{spec!r} is a source, not a sink: use default, a device, null or a WAV file"
        )
    if spec.lower().endswith(WAV_SUFFIX) or "/" in spec:
        return WavFileSink(spec)
    return devices.DeviceSink(spec)
