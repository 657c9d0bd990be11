"""One benchmark call, pqcall's or the prototype's, in real time on loopback UDP.

Scope: run a full-duplex call between two endpoints in this process, through
an :class:`~pqcall.netem.ImpairmentRelay` in a child process
(:mod:`pqcall.bench.relay_process`), and record what the
media benchmark scores: the audio the callee heard, per-frame one-way
latency, jitter-buffer delay over time, wire bitrate and CPU time. Scoring
and tables live in :mod:`pqcall.bench.media`.

How each figure is measured:

* Latency: each sender reports when a frame was complete at its source and
  each receiver when that frame's first sample reached its sink (pqcall's
  ``MediaTrace``; the prototype's :class:`~pqcall.bench.baseline.FrameLog`),
  both on this process's loop clock; the latency is the difference, for
  the caller-to-callee direction.
* CPU: the relay runs in a process of its own, so this process runs only
  the two call sides; their CPU time is this process's CPU time over the call
  (``time.process_time``: user and system, all threads), divided by the wall
  time and by the two sides: percent of one core per full-duplex side. It
  includes what the benchmark adds per side (sampling statistics ten times
  a second, keeping the received audio), which is small.
* Bitrate: pqcall from its own statistics (``tx_kbps``: every datagram
  plus 28 bytes of IPv4 and UDP headers, over a 2 s window, sampled and
  averaged once the window is full); the prototype from the bytes it sent
  plus the same 28 bytes a datagram, over the time it sent.
* Jitter-buffer delay: pqcall's ``jitter_buffer_ms`` (audio queued ahead of
  playout, the frame being played included), sampled every
  :data:`SAMPLE_INTERVAL_S`; the prototype has no jitter buffer, so its
  figure is, per frame, how long it queued in the sound device behind
  late frames (beyond the device's own buffer, see ``baseline``).
* What a user hears beyond the score (pqcall only): each side's concealed
  ms and late packets from its statistics at the end, and the caller's
  encoder mode (clean / fec / redundancy, the impaired direction's sender)
  sampled with the delay: its share of the samples is the mode's time share.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqcall.bench import baseline
from pqcall.bench.baseline import FrameLog, PrototypeEndpoint
from pqcall.bench.quality import REFERENCE_RATE_HZ, Samples, resample
from pqcall.bench.relay_process import RelayProcess
from pqcall.crypto.handshake import CalleeHandshake, CallerHandshake, CallKeys
from pqcall.crypto.identity import IdentityPrivateKey
from pqcall.media.codec import SAMPLE_RATE_HZ, Pcm, samples_per_frame, silence
from pqcall.netem import Address, Impairment
from pqcall.transport.session import MediaSession, MediaSettings

__all__ = [
    "IPV4_UDP_OVERHEAD_BYTES",
    "SAMPLE_INTERVAL_S",
    "CallRecord",
    "PcmSource",
    "RecordingSink",
    "Scenario",
    "call_keys",
    "run_call",
]

LOOPBACK: Final = "127.0.0.1"
IPV4_UDP_OVERHEAD_BYTES: Final = 28
SAMPLE_INTERVAL_S: Final = 0.1
"""How often session statistics are sampled."""
BITRATE_WARMUP_S: Final = 2.5
"""pqcall's bitrate is sampled once its 2 s window has filled."""
TAIL_S: Final = 1.0
"""The call goes on this long after the speech, so the last frames are played."""
HANGUP_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """What one benchmark call does to the network, and for how long."""

    name: str
    """Label in tables and JSON."""
    impairment: Impairment = field(default_factory=Impairment)
    """Impairment of the caller-to-callee direction (the reverse uses ``seed + 1``)."""
    speech_s: float = 20.0
    """Seconds of speech sent (at most the sample's length)."""
    settings: MediaSettings | None = None
    """pqcall's media settings (None: the defaults)."""
    impaired_between_s: tuple[float, float] | None = None
    """Apply the impairment only in this span after the call starts (None: throughout)."""
    phase_frames: float = 0.5
    """pqcall only: the callee's clocks start this many frames after the caller's.

    Both sides run in one event loop, so without an offset the callee's
    playout ticks would fire just before each packet arrives: a phase of 0
    (the worst case). Real peers' clocks have a random phase; half a frame
    is its median, and puts arrivals midway between playout ticks.
    """


@dataclass
class CallRecord:
    """What one call produced, for scoring (plain data: it crosses processes)."""

    system: str
    """``"pqcall"`` or ``"prototype"``."""
    scenario: str
    """The scenario's name."""
    received: Samples
    """What the callee heard, at 16 kHz."""
    latencies_ms: list[float]
    """One-way latency of each caller frame the callee played, in send order."""
    buffer_ms: list[tuple[float, float]]
    """(seconds since the call started, jitter-buffer delay in ms), over time."""
    kbps: float
    """Mean wire bitrate of one direction, IPv4 and UDP headers included."""
    cpu_s: float
    """CPU time of both call sides together."""
    wall_s: float
    """Wall time of the call."""
    sides: int = 2
    """Call sides that ``cpu_s`` covers."""
    relay_sent: int = 0
    """Datagrams that entered the relay, caller to callee."""
    relay_dropped: int = 0
    """Of those, dropped by the impairment."""
    playout: dict[str, int | float] = field(default_factory=dict)
    """The callee's jitter-buffer counters at the end (pqcall only)."""
    concealed_ms: tuple[float, float] = (0.0, 0.0)
    """Audio made up by concealment at the end: (caller side, callee side) (pqcall only)."""
    late_packets: tuple[int, int] = (0, 0)
    """Packets that came after their playout time: (caller side, callee side) (pqcall only)."""
    encoder_modes: list[str] = field(default_factory=list)
    """The caller's encoder mode at each sample (pqcall only): clean, fec, redundancy, backup."""
    queue_ms: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the start, the relay's caller-to-callee bottleneck backlog in ms), sampled
    with the delay, when the scenario has a bottleneck."""
    opus_kbps: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the start, the caller's Opus bitrate cap in kbit/s) (pqcall only)."""

    def mode_share(self, mode: str) -> float:
        """The share of the samples, 0-1, in which the caller's encoder was in ``mode``."""
        if not self.encoder_modes:
            return 0.0
        return self.encoder_modes.count(mode) / len(self.encoder_modes)

    @property
    def cpu_percent_per_side(self) -> float:
        """CPU per call side, in percent of one core."""
        return 100.0 * self.cpu_s / self.wall_s / self.sides


class PcmSource:
    """An audio source over PCM in memory; silence after its end (the call goes on)."""

    def __init__(self, pcm: Pcm, frame_ms: int) -> None:
        self._pcm = pcm.view()  # 48 kHz mono
        self._pcm.flags.writeable = False  # frames are views: a sink must not change them
        self._frame_samples = samples_per_frame(frame_ms)
        self._offset = 0  # next sample to read

    @property
    def frame_samples(self) -> int:
        """Samples in every frame."""
        return self._frame_samples

    def read_frame(self) -> Pcm:
        """The next frame (a read-only view of the PCM), padded with silence at the end."""
        chunk = self._pcm[self._offset : self._offset + self._frame_samples]
        self._offset += self._frame_samples
        if len(chunk) == self._frame_samples:
            return chunk
        frame = silence(self._frame_samples)
        frame[: len(chunk)] = chunk
        return frame

    def close(self) -> None:
        """Nothing to release."""


class RecordingSink:
    """An audio sink that keeps everything written to it."""

    def __init__(self) -> None:
        self._frames: list[Pcm] = []

    def write_frame(self, pcm: Pcm) -> None:
        """Keep a copy of ``pcm``."""
        self._frames.append(np.array(pcm, dtype=np.int16))

    def pcm(self) -> Pcm:
        """Everything written so far, in one array."""
        return np.concatenate(self._frames) if self._frames else silence(0)

    def close(self) -> None:
        """Nothing to release."""


def call_keys() -> tuple[CallKeys, CallKeys]:
    """A fresh handshake between two new identities: (caller's keys, callee's keys)."""
    alice, bob = IdentityPrivateKey.generate(), IdentityPrivateKey.generate()
    caller = CallerHandshake(
        call_id=b"bench-media",
        our_name="alice",
        our_identity=alice,
        their_name="bob",
        their_identity=bob.public_key(),
    )
    callee = CalleeHandshake(call_id=b"bench-media", our_name="bob", our_identity=bob)
    callee.receive_offer(caller.offer(now=time.time()), now=time.time())
    callee.receive_confirm(caller.receive_answer(callee.answer()))
    return caller.keys, callee.keys


def _relay(scenario: Scenario, caller: Address, callee: Address) -> RelayProcess:
    is_impaired = scenario.impaired_between_s is None
    return RelayProcess(scenario.impairment, is_impaired, caller, callee)


async def _schedule_impairment(relay: RelayProcess, scenario: Scenario, start: float) -> None:
    if scenario.impaired_between_s is None:
        return
    loop = asyncio.get_running_loop()
    on_at, off_at = scenario.impaired_between_s
    await asyncio.sleep(max(0.0, start + on_at - loop.time()))
    relay.impair(True)
    await asyncio.sleep(max(0.0, start + off_at - loop.time()))
    relay.impair(False)


async def _pqcall_call(scenario: Scenario, speech: Pcm, reply: Pcm) -> CallRecord:
    loop = asyncio.get_running_loop()
    settings = scenario.settings or MediaSettings()
    caller_keys, callee_keys = call_keys()
    caller_log, callee_log = FrameLog(), FrameLog()
    heard = RecordingSink()
    caller = MediaSession(
        caller_keys,
        PcmSource(speech, settings.opus.frame_ms),
        RecordingSink(),
        settings=settings,
        trace=caller_log,
    )
    callee = MediaSession(
        callee_keys,
        PcmSource(reply, settings.opus.frame_ms),
        heard,
        settings=settings,
        trace=callee_log,
    )
    caller_addr = await caller.open((LOOPBACK, 0))
    callee_addr = await callee.open((LOOPBACK, 0))
    buffer_ms: list[tuple[float, float]] = []
    kbps: list[float] = []
    modes: list[str] = []
    queue_ms: list[tuple[float, float]] = []
    opus_kbps: list[tuple[float, float]] = []
    bottleneck = bool(scenario.impairment.rate_kbps)
    try:
        with _relay(scenario, caller_addr, callee_addr) as relay:
            cpu0 = time.process_time()
            start = loop.time()
            caller.connect(relay.address_a)
            await asyncio.sleep(scenario.phase_frames * settings.opus.frame_ms / 1000)
            callee.connect(relay.address_b)
            switch = asyncio.create_task(_schedule_impairment(relay, scenario, start))
            end = start + scenario.speech_s + TAIL_S
            tick = 0
            while (now := loop.time()) < end:
                tick += 1
                await asyncio.sleep(max(0.0, start + tick * SAMPLE_INTERVAL_S - now))
                elapsed = loop.time() - start
                buffer_ms.append((elapsed, callee.snapshot().jitter_buffer_ms))
                ours = caller.snapshot()
                modes.append(ours.encoder_mode)
                opus_kbps.append(
                    (elapsed, caller.adaptation.bitrate_bps(settings.opus.frame_ms) / 1e3)
                )
                if bottleneck:
                    queue_ms.append((elapsed, relay.queue()))
                if BITRATE_WARMUP_S <= elapsed <= scenario.speech_s:
                    kbps.append(ours.tx_kbps)
            wall = loop.time() - start
            cpu = time.process_time() - cpu0
            await switch
            received, dropped = relay.counts()
            playout = callee.jitter_stats.as_dict()
            ends = caller.snapshot(), callee.snapshot()
            await caller.hangup()
            await asyncio.wait_for(callee.wait_ended(), HANGUP_TIMEOUT_S)
    finally:
        await caller.close()
        await callee.close()
    return CallRecord(
        system="pqcall",
        scenario=scenario.name,
        received=resample(heard.pcm(), SAMPLE_RATE_HZ, REFERENCE_RATE_HZ),
        latencies_ms=[1000.0 * s for s in caller_log.latencies_s(callee_log)],
        buffer_ms=buffer_ms,
        kbps=statistics.fmean(kbps) if kbps else 0.0,
        cpu_s=cpu,
        wall_s=wall,
        relay_sent=received,
        relay_dropped=dropped,
        playout=playout,
        concealed_ms=(ends[0].concealed_ms, ends[1].concealed_ms),
        late_packets=(ends[0].packets_late, ends[1].packets_late),
        encoder_modes=modes,
        queue_ms=queue_ms,
        opus_kbps=opus_kbps,
    )


async def _prototype_call(scenario: Scenario, speech: Samples, reply: Samples) -> CallRecord:
    loop = asyncio.get_running_loop()
    key = AESGCM.generate_key(bit_length=8 * baseline.KEY_BYTES)
    caller_log, callee_log = FrameLog(), FrameLog()
    caller = PrototypeEndpoint(key, speech, caller_log)
    callee = PrototypeEndpoint(key, reply, callee_log)
    caller_addr = await caller.open((LOOPBACK, 0))
    callee_addr = await callee.open((LOOPBACK, 0))
    try:
        with _relay(scenario, caller_addr, callee_addr) as relay:
            cpu0 = time.process_time()
            start = loop.time()
            caller.connect(relay.address_a)
            callee.connect(relay.address_b)
            switch = asyncio.create_task(_schedule_impairment(relay, scenario, start))
            queue_ms = await _sample_queue(relay, scenario, start)
            await switch
            wall = loop.time() - start
            cpu = time.process_time() - cpu0
            received, dropped = relay.counts()
    finally:
        caller.close()
        callee.close()
    sent = caller.counters
    return CallRecord(
        system="prototype",
        scenario=scenario.name,
        received=callee.device.render(),
        latencies_ms=[1000.0 * s for s in caller_log.latencies_s(callee_log)],
        buffer_ms=[(t - start, 1000.0 * wait) for t, wait in callee.queue_waits],
        kbps=8 * (sent.bytes_sent + IPV4_UDP_OVERHEAD_BYTES * sent.frames_sent) / wall / 1000,
        cpu_s=cpu,
        wall_s=wall,
        relay_sent=received,
        relay_dropped=dropped,
        queue_ms=queue_ms,
    )


async def _sample_queue(
    relay: RelayProcess, scenario: Scenario, start: float
) -> list[tuple[float, float]]:
    """Until the call's end: the relay's bottleneck backlog every sample (none without one)."""
    loop = asyncio.get_running_loop()
    end = start + scenario.speech_s + TAIL_S
    samples: list[tuple[float, float]] = []
    tick = 0
    while scenario.impairment.rate_kbps and (now := loop.time()) < end:
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * SAMPLE_INTERVAL_S - now))
        samples.append((loop.time() - start, relay.queue()))
    await asyncio.sleep(max(0.0, end - loop.time()))
    return samples


def run_call(system: str, scenario: Scenario, speech: Samples, reply: Samples) -> CallRecord:
    """Run one call in real time (blocking, a new event loop); ``speech`` and ``reply`` at 16 kHz.

    Raises:
        ValueError: ``system`` is neither ``"pqcall"`` nor ``"prototype"``.
    """
    speech = speech[: round(scenario.speech_s * REFERENCE_RATE_HZ)]
    reply = reply[: round(scenario.speech_s * REFERENCE_RATE_HZ)]
    if system == "pqcall":
        return asyncio.run(
            _pqcall_call(
                scenario,
                resample(speech, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ),
                resample(reply, REFERENCE_RATE_HZ, SAMPLE_RATE_HZ),
            )
        )
    if system == "prototype":
        return asyncio.run(_prototype_call(scenario, speech, reply))
    raise ValueError(f"unknown system {system!r}")
