"""PulseAudio's sinks and sources as device specs, seen without restarting PortAudio.

Scope: PortAudio enumerates devices once, when it initialises, and re-scanning
(:func:`pqcall.media.devices.rescan_devices`) stops every open stream, so a
headset plugged in during a call is not in its list. When PulseAudio (or
PipeWire's pulse server) is the sound server, its sinks and sources are listed
here with ``pactl`` instead, each as the spec ``pulse:NAME``; a stream opened
on such a spec goes through PortAudio's ``pulse`` device and is connected by
PulseAudio to NAME (``PULSE_SINK``/``PULSE_SOURCE`` at open, see
:func:`pulse_target`). Without ``pactl`` or a running server the lists are
empty: nothing here raises.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, Literal

__all__ = ["PULSE_DEVICE", "PULSE_PREFIX", "pulse_specs", "pulse_target", "split_pulse_spec"]

PULSE_PREFIX: Final = "pulse:"
"""A spec starting with this names a PulseAudio sink or source."""
PULSE_DEVICE: Final = "pulse"
"""PortAudio's (ALSA plugin's) device that goes to the PulseAudio server."""
PACTL_TIMEOUT_S: Final = 2.0

Kind = Literal["input", "output"]


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
    pactl = shutil.which("pactl")
    if pactl is None:
        return []
    what = "sources" if kind == "input" else "sinks"
    try:
        listing = subprocess.run(
            [pactl, "list", "short", what],
            capture_output=True,
            text=True,
            timeout=PACTL_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    names = []
    for line in listing.stdout.splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1]:
            names.append(PULSE_PREFIX + fields[1])
    return names


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
