"""PulseAudio's sinks and sources as device specs, seen without restarting PortAudio.

Scope: PortAudio enumerates devices once, when it initialises, and re-scanning
(:func:`pqcall.media.devices.rescan_devices`) stops every open stream, so a
headset plugged in during a call is not in its list. When PulseAudio (or
PipeWire's pulse server) is the sound server, its sinks and sources are listed
here with ``pactl`` instead, each as the spec ``pulse:NAME``; a stream opened
on such a spec goes through PortAudio's ``pulse`` device and is connected by
PulseAudio to NAME (``PULSE_SINK``/``PULSE_SOURCE`` at open, see
:func:`pulse_target`). Without ``pactl`` or a running server the lists are
empty: nothing here raises. :func:`pulse_devices` adds what ``pactl`` says of
each (channels, rate, whether it is the server's default), for ``pqcall audio-devices``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "PULSE_DEVICE",
    "PULSE_PREFIX",
    "PulseDevice",
    "pulse_devices",
    "pulse_specs",
    "pulse_target",
    "split_pulse_spec",
]

PULSE_PREFIX: Final = "pulse:"
"""A spec starting with this names a PulseAudio sink or source."""
PULSE_DEVICE: Final = "pulse"
"""PortAudio's (ALSA plugin's) device that goes to the PulseAudio server."""
PACTL_TIMEOUT_S: Final = 2.0

Kind = Literal["input", "output"]
_SAMPLE_SPEC = re.compile(r"\b(\d+)ch\b.*?\b(\d+)Hz\b")
"""Channels and rate in ``pactl``'s sample spec: ``s16le 1ch 48000Hz``."""


@dataclass(frozen=True, slots=True)
class PulseDevice:
    """A PulseAudio source (``input``) or sink (``output``), as ``pactl`` lists it now."""

    spec: str
    """``pulse:NAME``: what ``--audio-in`` or ``--audio-out`` takes."""
    kind: Kind
    """``input`` for a source (a sink's monitor too), ``output`` for a sink."""
    channels: int
    """Its channels (0 when ``pactl`` did not say)."""
    samplerate_hz: float
    """Its rate (0 when ``pactl`` did not say)."""
    is_default: bool
    """Whether it is the server's default source or sink (where ``pulse`` goes)."""

    @property
    def name(self) -> str:
        """PulseAudio's name of it (the spec without ``pulse:``)."""
        return self.spec[len(PULSE_PREFIX) :]


def split_pulse_spec(spec: str) -> str | None:
    """The sink or source name of a ``pulse:NAME`` spec; None for any other spec."""
    if spec.startswith(PULSE_PREFIX) and len(spec) > len(PULSE_PREFIX):
        return spec[len(PULSE_PREFIX) :]
    return None


def pulse_specs(kind: Kind) -> list[str]:
    """``pulse:NAME`` for every PulseAudio source (``input``) or sink (``output``) now.

    Sources include the sinks' monitors (what a sink plays). Empty when
    ``pactl`` is missing or no server answers.
    """
    return [PULSE_PREFIX + fields[1] for fields in _listing(kind)]


def pulse_devices(kind: Kind) -> list[PulseDevice]:
    """Every PulseAudio source (``input``) or sink (``output``) now, with its format.

    Empty when ``pactl`` is missing or no server answers.
    """
    listing = _listing(kind)
    if not listing:
        return []
    default = _pactl("info") or ""
    label = "Default Source: " if kind == "input" else "Default Sink: "
    default_name = next(
        (line[len(label) :].strip() for line in default.splitlines() if line.startswith(label)),
        None,
    )
    devices = []
    for fields in listing:
        spec = _SAMPLE_SPEC.search(fields[3]) if len(fields) >= 4 else None
        devices.append(
            PulseDevice(
                spec=PULSE_PREFIX + fields[1],
                kind=kind,
                channels=int(spec.group(1)) if spec else 0,
                samplerate_hz=float(spec.group(2)) if spec else 0.0,
                is_default=fields[1] == default_name,
            )
        )
    return devices


def _listing(kind: Kind) -> list[list[str]]:
    """``pactl list short sources|sinks`` as rows of fields (index, name, driver, spec...)."""
    listing = _pactl("list", "short", "sources" if kind == "input" else "sinks")
    if listing is None:
        return []
    rows = [line.split("\t") for line in listing.splitlines()]
    return [fields for fields in rows if len(fields) >= 2 and fields[1]]


def _pactl(*args: str) -> str | None:
    """What ``pactl ARGS`` prints; None without ``pactl`` or a server that answers."""
    pactl = shutil.which("pactl")
    if pactl is None:
        return None
    try:
        done = subprocess.run(
            [pactl, *args],
            env={**os.environ, "LC_ALL": "C"},  # "Default Sink:", not a translation
            capture_output=True,
            text=True,
            timeout=PACTL_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


@contextmanager
def pulse_target(name: str | None, kind: Kind) -> Iterator[None]:
    """While a stream opens: PulseAudio connects a new stream to ``name`` (None: no change).

    libpulse reads ``PULSE_SOURCE``/``PULSE_SINK`` when the ALSA plugin opens
    its connection; the variable is restored afterwards. Streams should be
    opened from one thread at a time (they are: the session's or the UI's).
    """
    if name is None:
        yield
        return
    variable = "PULSE_SOURCE" if kind == "input" else "PULSE_SINK"
    before = os.environ.get(variable)
    os.environ[variable] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before
