"""The echo test on the real device path: bob's speaker, a room, bob's microphone, heard at alice.

Needs the virtual sound card of ``scripts/virtual-soundcard.sh`` and
``PQCALL_TEST_PULSE=1`` (as ``tests/media/test_devices_pulse.py``)::

    eval "$(bash scripts/virtual-soundcard.sh)"
    PQCALL_TEST_PULSE=1 .venv/bin/pytest tests/media/test_echo_pulse.py -s

Two media sessions over UDP on localhost. Alice sends speech; bob plays it on
the real device (``DeviceSink('pulse')`` → the null sink) and captures the
real device (``DeviceSource('pulse')`` → the sink's monitor), so the echo
goes through PulseAudio's and PortAudio's buffers and clocks. The room is
applied in a small source wrapper around that DeviceSource (:class:`RoomMic`),
not in PulseAudio: module-loopback gives a delay but no reverberation tail
without a LADSPA plugin, which the card here does not have. The wrapper
convolves the monitor with :class:`~pqcall.bench.audio_scenes.Room`'s impulse
response (80 ms, -10 dB, RT60 50 ms; from :data:`CHANGE_S` 130 ms, -8 dB,
RT60 80 ms), adds bob's own speech (double talk 10-14 s, the same words
alone 20-24 s while alice is silent) and a -70 dBFS sensor noise, and keeps
the echo and bob's speech apart so they can be measured at alice.

Measured at alice (ERLE: the wrapper's echo power over alice's received
power, median over 0.5 s windows with echo and no bob): steady, after the
double talk and after the echo-path change; bob's level in double talk
against alone; convergence from the first echo. The figures are printed (run
with ``-s``). Timeouts scale with ``PQCALL_TEST_TIMEOUT_SCALE``.

What is asserted is what held in every run whose devices ran cleanly (at
most :data:`MAX_GLITCHES` underflows and overflows after start-up), on a
quiet or a loaded machine (17 runs, docs/decisions/0300): the issue's goals
for ERLE off, bob's level and convergence from the start; steady ERLE at
:data:`RELIABLE_ERLE_DB` (goal 30 dB: 34.3-34.8 dB with clean devices, from 28 dB)
and reconvergence after the path change within :data:`RELIABLE_RECONVERGE_S`
(goal 2 s: 0.5-4.0 s). ERLE and convergence after double talk and after the
path change are printed, not asserted: in some runs AEC3 loses the echo for
1-3 s after bob stops talking (ERLE down to 5 dB, back in 3 s) even with no
device glitch, and device underruns move the echo's delay. A run that misses
a bound while its devices glitched (more than :data:`MAX_GLITCHES` after
start-up, counting a capture that started late, more than
:data:`STARTUP_UNDERFLOWS` underflows in its first second: it measured the
machine, not the canceller) is made again, up to :data:`ATTEMPTS` runs; a miss
with clean devices fails at once; a run with glitches that keeps every bound
passes (in CI the capture queue ran dry 29 times after start-up in a run with
steady ERLE at 35 dB).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pytest

from pqcall.bench.audio_scenes import Room, speech
from pqcall.client.media_options import device_delay_ms
from pqcall.media.audio import ClosingMixin
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm, samples_per_frame, silence
from pqcall.media.devices import DeviceSink, DeviceSource
from pqcall.media.processing import ProcessingOptions, WebRtcProcessing
from pqcall.transport.session import MediaSession
from tests.utils import handshake_pair

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("PQCALL_TEST_PULSE") != "1",
        reason="needs PulseAudio: run scripts/virtual-soundcard.sh and set PQCALL_TEST_PULSE=1",
    ),
    pytest.mark.slow,
]
pytest.importorskip("pywebrtc_audio")

Signal = npt.NDArray[np.float64]

DEVICE: Final = "pulse"
FRAME_MS: Final = 20
FRAME: Final = samples_per_frame(FRAME_MS)
ROOMS: Final = (Room(), Room(delay_ms=130.0, gain=0.4, rt60_ms=80.0, seed=2))
ALICE_TALKS_S: Final = ((0.0, 19.0), (25.0, 33.0))
BOB_TALKS_S: Final = ((10.0, 14.0), (20.0, 24.0))  # double talk, then the same words alone
CHANGE_S: Final = 25.0
CALL_S: Final = 33.5
OFF_CALL_S: Final = 9.0
SENSOR_DBFS: Final = -70.0
WINDOW_S: Final = 0.5
ECHO_ACTIVE_DB: Final = 30.0
CONVERGED_DB: Final = 20.0
SUSTAINED_WINDOWS: Final = 3
BOB_GAIN: Final = 0.7
MAX_LAG_S: Final = 1.0
GOAL_ERLE_DB: Final = 30.0
"""The issue's goal for ERLE (steady, after double talk, after a path change)."""
RELIABLE_ERLE_DB: Final = 25.0
"""What steady ERLE reliably reaches on the real path."""
GOAL_CONVERGE_S: Final = 2.0
RELIABLE_RECONVERGE_S: Final = 5.0
"""What reconvergence after the echo-path change reliably stays within (the goal: 2 s)."""
GOAL_NEAR_DB: Final = 3.0
MAX_GLITCHES: Final = 10
"""Device underflows + overflows after start-up beyond which a missed bound is measured again."""
STARTUP_S: Final = 1.0
"""PulseAudio starts a stream within this; the underflows before it do not move the echo."""
STARTUP_UNDERFLOWS: Final = 10
"""Capture underflows in the start-up second that are the stream starting (200 ms); beyond
them the capture started late, under load (CI: 51, the whole second), which moves the
echo's delay as glitches after start-up do, so they count as glitches."""


def _int16(signal: Signal) -> Pcm:
    clipped: Pcm = np.clip(np.round(signal), -32_768, 32_767).astype(np.int16)
    return clipped


class ScriptSource(ClosingMixin):
    """Alice: speech during :data:`ALICE_TALKS_S`, silence between and after."""

    def __init__(self, seconds: float) -> None:
        voice = speech("alice", seconds)
        gate = np.zeros(len(voice))
        for start, end in ALICE_TALKS_S:
            gate[round(start * SAMPLE_RATE_HZ) : round(end * SAMPLE_RATE_HZ)] = 1.0
        self._pcm = _int16(voice * gate)
        self._at = 0

    @property
    def frame_samples(self) -> int:
        return FRAME

    def read_frame(self) -> Pcm:
        frame = self._pcm[self._at : self._at + FRAME]
        self._at += FRAME
        return frame if len(frame) == FRAME else silence(FRAME)

    def close(self) -> None:
        pass


class RecordingSink(ClosingMixin):
    """Alice's speaker: keeps every frame."""

    def __init__(self) -> None:
        self.frames: list[Pcm] = []

    def write_frame(self, pcm: Pcm) -> None:
        self.frames.append(pcm.copy())

    def close(self) -> None:
        pass


class RoomMic(ClosingMixin):
    """Bob's microphone: the real device's capture through a room, plus bob and sensor noise.

    The device captures what bob's speaker played (the null sink's monitor);
    this wrapper applies the room's impulse response to it (FFT overlap-save,
    the room switching to ``ROOMS[1]`` at :data:`CHANGE_S` of captured time),
    adds bob's speech during :data:`BOB_TALKS_S` and sensor noise, and keeps
    the echo and bob's part of every frame apart for the measurement.
    """

    def __init__(self, device: DeviceSource, seconds: float) -> None:
        self.device = device
        self._responses = [room.impulse_response() for room in ROOMS]
        self._history = np.zeros(max(len(r) for r in self._responses) - 1)
        bob = speech("bob", BOB_TALKS_S[0][1] - BOB_TALKS_S[0][0]) * BOB_GAIN
        self._near = np.zeros(round(seconds * SAMPLE_RATE_HZ) + FRAME)
        for start, _ in BOB_TALKS_S:
            first = round(start * SAMPLE_RATE_HZ)
            stretch = self._near[first : first + len(bob)]  # cut short by a shorter call
            stretch[:] = bob[: len(stretch)]
        self._rng = np.random.default_rng(7)
        self._at = 0
        self.echo: list[Signal] = []
        self.near: list[Signal] = []
        self.mic: list[Signal] = []

    @property
    def frame_samples(self) -> int:
        return FRAME

    def read_frame(self) -> Pcm | None:
        played = self.device.read_frame()
        if played is None:
            return None
        response = self._responses[0 if self._at < CHANGE_S * SAMPLE_RATE_HZ else 1]
        signal = np.concatenate((self._history, played.astype(np.float64)))
        self._history = signal[FRAME:]
        size = 1 << (len(signal) - 1).bit_length()
        full = np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(response, size), size)
        echo = full[len(signal) - FRAME : len(signal)]
        near = self._near[self._at : self._at + FRAME]
        if len(near) < FRAME:
            near = np.zeros(FRAME)
        sensor = self._rng.standard_normal(FRAME) * 32_768 * 10 ** (SENSOR_DBFS / 20)
        self._at += FRAME
        self.echo.append(echo)
        self.near.append(near)
        mic = echo + near + sensor
        self.mic.append(mic)
        return _int16(mic)

    def close(self) -> None:
        self.device.close()


@dataclass(frozen=True)
class Run:
    """One call's signals in bob's capture time, alice's received audio aligned with them."""

    echo: Signal
    near: Signal
    received: Signal
    lag_ms: float
    erle_estimate_db: float | None
    glitches: str
    """The devices' underflows and xruns, which move the echo path's delay."""
    glitch_count: int


async def call(options: ProcessingOptions, seconds: float) -> Run:
    keys = handshake_pair()
    speaker = DeviceSink(DEVICE, FRAME_MS)
    mic = RoomMic(DeviceSource(DEVICE, FRAME_MS), seconds)
    stage = WebRtcProcessing(options)
    stage.set_stream_delay_ms(device_delay_ms(mic.device, speaker))
    heard = RecordingSink()
    alice = MediaSession(keys.caller.keys, ScriptSource(seconds), heard)
    bob = MediaSession(keys.callee.keys, mic, speaker, processing=stage)
    await alice.open(("127.0.0.1", 0))
    await bob.open(("127.0.0.1", 0))
    try:
        alice.connect(bob.local_address)
        bob.connect(alice.local_address)
        await asyncio.sleep(STARTUP_S)  # PulseAudio starts the streams: underflows, harmless
        started = (speaker.counters(), mic.device.counters())
        await asyncio.sleep(seconds - STARTUP_S)
        assert bob.end_reason is None
    finally:
        await alice.close()
        await bob.close()
    echo, near = np.concatenate(mic.echo), np.concatenate(mic.near)
    received = np.concatenate(heard.frames).astype(np.float64)
    # alice hears bob's capture some frames later: find the lag on what was sent
    reference = near if np.any(near) else np.concatenate(mic.mic)
    lag = _lag(received, reference)
    aligned = _shifted(received, lag, len(echo))
    played, captured = speaker.counters(), mic.device.counters()
    played_late = played.underflows - started[0].underflows
    captured_late = captured.underflows - started[1].underflows
    captured_dropped = captured.overflows - started[1].overflows
    started_late = max(0, started[1].underflows - STARTUP_UNDERFLOWS)
    glitches = (
        f"after {STARTUP_S:g} s: speaker {played_late} underflows, microphone {captured_late}"
        f" underflows {captured_dropped} overflows, {started_late} microphone underflows in"
        f" start-up beyond {STARTUP_UNDERFLOWS} (in all: speaker {played.underflows}"
        f" underflows {played.xruns} xruns, microphone {captured.underflows} underflows"
        f" {captured.overflows} overflows {captured.xruns} xruns)"
    )
    return Run(
        echo,
        near,
        aligned,
        1000 * lag / SAMPLE_RATE_HZ,
        stage.report().erle_db,
        glitches,
        played_late + captured_late + captured_dropped + started_late,
    )


def _lag(received: Signal, reference: Signal) -> int:
    """The lag of ``reference`` in ``received``, within +-:data:`MAX_LAG_S` (either first)."""
    size = 1 << (len(received) + len(reference)).bit_length()
    spectrum = np.fft.rfft(received, size) * np.conj(np.fft.rfft(reference, size))
    correlation = np.fft.irfft(spectrum, size)
    most = round(MAX_LAG_S * SAMPLE_RATE_HZ)  # bob says the same words twice, 10 s apart
    candidates = np.concatenate((correlation[size - most :], correlation[:most]))
    return int(np.argmax(candidates)) - most


def _shifted(received: Signal, lag: int, length: int) -> Signal:
    """``received`` moved back by ``lag`` samples (forward if negative), ``length`` long."""
    aligned = np.zeros(length)
    if lag >= 0:
        tail = received[lag : lag + length]
        aligned[: len(tail)] = tail
    else:
        head = received[: length + lag]
        aligned[-lag : -lag + len(head)] = head
    return aligned


def _db(ratio: float) -> float:
    return 10 * float(np.log10(max(ratio, 1e-12)))


def erle_windows(run: Run) -> list[tuple[float, float]]:
    """(window start s, ERLE dB) for every window with echo and without bob."""
    window = round(WINDOW_S * SAMPLE_RATE_HZ)
    floor = 32_768**2 * 10 ** ((SENSOR_DBFS + ECHO_ACTIVE_DB) / 10)
    windows = []
    for first in range(0, len(run.echo) - window + 1, window):
        span = slice(first, first + window)
        echo_power = float(np.mean(run.echo[span] ** 2))
        if np.any(run.near[span]) or echo_power < floor:
            continue
        windows.append(
            (
                first / SAMPLE_RATE_HZ,
                _db(echo_power / float(np.mean(run.received[span] ** 2) + 1e-9)),
            )
        )
    return windows


def median_between(windows: list[tuple[float, float]], first_s: float, last_s: float) -> float:
    values = [db for at, db in windows if first_s <= at <= last_s - WINDOW_S]
    return float(np.median(values)) if values else float("nan")


def converged_after(windows: list[tuple[float, float]], since_s: float, in_a_row: int = 1) -> float:
    """Seconds from the first echo window after ``since_s`` to the end of the first at 20 dB.

    With ``in_a_row`` > 1 that window and the next echo windows up to
    ``in_a_row`` must all reach 20 dB (sustained, as ``pqcall bench audio``).
    """
    after = [(at, db) for at, db in windows if at >= since_s]
    for index, (at, _) in enumerate(after):
        run = after[index : index + in_a_row]
        if len(run) == in_a_row and all(db >= CONVERGED_DB for _, db in run):
            return at + WINDOW_S - after[0][0]
    return float("inf")


def level_db(run: Run, start_s: float, end_s: float) -> float:
    span = slice(round(start_s * SAMPLE_RATE_HZ), round(end_s * SAMPLE_RATE_HZ))
    return _db(float(np.mean(run.received[span] ** 2)))


ATTEMPTS: Final = 3
"""Calls made while every run with device glitches misses a bound (glitches move the echo's
delay); a run with clean devices that misses one fails at once."""


def measure() -> tuple[dict[str, float], Run, Run]:
    """One call with cancellation and one without; the figures, printed."""
    on = asyncio.run(call(ProcessingOptions(), CALL_S))
    off = asyncio.run(call(ProcessingOptions(echo_cancel=False, auto_gain=False), OFF_CALL_S))
    on_windows, off_windows = erle_windows(on), erle_windows(off)
    (talk_start, talk_end), (alone_start, alone_end) = BOB_TALKS_S
    figures = {
        "ERLE steady (4-10 s)": median_between(on_windows, 4.0, talk_start),
        "ERLE after double talk (15-19 s)": median_between(on_windows, talk_end + 1.0, 19.0),
        "ERLE after echo-path change (27-33 s)": median_between(on_windows, CHANGE_S + 2.0, CALL_S),
        "ERLE off (2-9 s)": median_between(off_windows, 2.0, OFF_CALL_S),
        "bob in double talk vs alone (dB)": level_db(on, talk_start + 0.5, talk_end)
        - level_db(on, alone_start + 0.5, alone_end),
        "convergence from start (s)": converged_after(on_windows, 0.0),
        "convergence after double talk (s)": converged_after(on_windows, talk_end),
        "convergence after path change (s)": converged_after(on_windows, CHANGE_S),
        "sustained convergence from start (s)": converged_after(on_windows, 0.0, SUSTAINED_WINDOWS),
        "sustained convergence after double talk (s)": converged_after(
            on_windows, talk_end, SUSTAINED_WINDOWS
        ),
        "sustained convergence after path change (s)": converged_after(
            on_windows, CHANGE_S, SUSTAINED_WINDOWS
        ),
        "stage's own ERLE estimate": on.erle_estimate_db or float("nan"),
        "capture to alice (ms)": on.lag_ms,
    }
    lines = [f"echo on the pulse path: {name}: {value:.1f}" for name, value in figures.items()]
    missed = [
        name
        for name in ("ERLE steady (4-10 s)", "ERLE after double talk (15-19 s)")
        if not figures[name] >= GOAL_ERLE_DB
    ] + [
        name
        for name in (
            "convergence after path change (s)",
            "sustained convergence from start (s)",
            "sustained convergence after double talk (s)",
            "sustained convergence after path change (s)",
        )
        if not figures[name] <= GOAL_CONVERGE_S
    ]
    lines.append(f"echo on the pulse path: goals missed in this run: {missed or 'none'}")
    lines.append(f"echo on the pulse path: devices: {on.glitches}")
    by_window = " ".join(f"{at:g}:{db:.0f}" for at, db in on_windows)
    lines.append(f"echo on the pulse path: ERLE by window: {by_window}")
    print("\n".join(lines))  # noqa: T201  (pytest -s shows the measured figures)
    return figures, on, off


def bounds_missed(figures: dict[str, float]) -> list[str]:
    """The asserted bounds this run's figures miss."""
    checks = {
        # goals that held in every run
        "ERLE off within 3 dB of 0": abs(figures["ERLE off (2-9 s)"]) < 3,
        "bob's level within 3 dB": abs(figures["bob in double talk vs alone (dB)"]) <= GOAL_NEAR_DB,
        "converged within 2 s of the start": figures["convergence from start (s)"]
        <= GOAL_CONVERGE_S,
        # below the goals (the gap is in docs/decisions/0300): what held in every run
        f"steady ERLE at least {RELIABLE_ERLE_DB:g} dB": figures["ERLE steady (4-10 s)"]
        >= RELIABLE_ERLE_DB,
        f"reconverged within {RELIABLE_RECONVERGE_S:g} s of the path change": figures[
            "convergence after path change (s)"
        ]
        <= RELIABLE_RECONVERGE_S,
    }
    return [name for name, held in checks.items() if not held]


def test_echo_cancelled_on_the_real_device_path() -> None:
    # Device glitches (a starved capture queue, a capture that started late) move the
    # echo's delay, so a run that misses a bound while its devices glitched measured
    # the machine, not the canceller: it is made again, up to ATTEMPTS runs. A miss
    # with clean devices fails at once; glitches alone fail nothing.
    runs = []
    for _ in range(ATTEMPTS):
        figures, on, off = measure()
        missed = bounds_missed(figures)
        glitched = max(on.glitch_count, off.glitch_count) > MAX_GLITCHES
        runs.append(
            f"missed {missed or 'nothing'} (devices: {on.glitches}; without: {off.glitches})"
        )
        if not missed or not glitched:
            break
    assert not missed, (
        f"missed: {missed} with {'glitching' if glitched else 'clean'} devices; runs: {runs}"
    )
