"""The prototype's media path, rebuilt as the media benchmark's baseline.

Benchmark code, not product code: it emulates the system pqcall replaces so
both can be measured side by side, through the same relay and impairments.
The prototype's design (``DESIGN.md``, "What it replaces"):

* 16 kHz mono 16-bit PCM in 64 ms frames: 1024 samples, 2048 bytes a frame,
  no codec.
* Each frame sealed alone with AES-256-GCM under one session key: a random
  12-byte nonce, then the ciphertext and its 16-byte tag (2076 bytes of UDP
  payload, 2104 with IPv4 and UDP headers: 263 kbit/s). No header, no
  sequence number, no replay window.
* The sender is paced by a clock: frame ``k`` leaves when it is complete, at
  ``start + (k + 1) * 64 ms``.
* No jitter buffer and no concealment: each frame that decrypts is written
  to the sound device on arrival, in arrival order, as a blocking
  ``stream.write(frame)`` would. The device (:class:`PlaybackTimeline`)
  plays queued frames back to back and plays silence when nothing is
  queued. So a lost frame is a gap of silence, a late frame plays late and
  pushes every later frame back (delay only ever grows), and reordered
  frames play in the order they arrived.

The emulated device has a small buffer of its own (:data:`DEVICE_BUFFER_MS`):
after running dry it starts playing that long after a frame arrives, as a
real sound card refills its buffer first. It absorbs the event loop's timer
noise (about 1 ms on loopback; without it every frame a millisecond late
would click) but not network jitter.

Latency instrumentation (not on the wire): the sender tells a
:class:`FrameLog` when each frame was complete, keyed by its nonce, and the
receiver when the frame reaches the device's fixed buffer: on arrival, or,
when a backlog of late frames is queued ahead of it, its playout time minus
:data:`DEVICE_BUFFER_MS`. The device buffer is left out as pqcall's
latency is measured where frames enter its sink (a sound card adds its own
buffer to both alike).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pqcall.bench.quality import Samples

__all__ = [
    "DEVICE_BUFFER_MS",
    "FRAME_BYTES",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "NONCE_BYTES",
    "RATE_HZ",
    "TAG_BYTES",
    "FrameLog",
    "PlaybackTimeline",
    "PrototypeEndpoint",
]

RATE_HZ: Final = 16_000
FRAME_MS: Final = 64
FRAME_SAMPLES: Final = RATE_HZ * FRAME_MS // 1000  # 1024
FRAME_BYTES: Final = FRAME_SAMPLES * 2  # 2048
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
KEY_BYTES: Final = 32  # AES-256
DEVICE_BUFFER_MS: Final = 10
"""The emulated sound card's own buffer: an idle device starts this long after a frame."""


class FrameLog:
    """When each frame was complete at its source and when it reached the sink.

    Implements ``pqcall.transport.session.MediaTrace`` (keys are the sender's
    timestamps there, nonces here). Only the first playout of a key counts.
    """

    def __init__(self) -> None:
        self.captured: dict[Hashable, float] = {}
        """Key -> time the frame was complete at the source (loop clock, s)."""
        self.played: dict[Hashable, float] = {}
        """Key -> time its first sample was handed to the sink (loop clock, s)."""

    def frame_captured(self, timestamp: Hashable, now: float) -> None:
        """Record that frame ``timestamp`` is complete at the source."""
        self.captured.setdefault(timestamp, now)

    def frame_played(self, timestamp: Hashable, now: float) -> None:
        """Record that frame ``timestamp`` reached the sink."""
        self.played.setdefault(timestamp, now)

    def latencies_s(self, receiver: FrameLog) -> list[float]:
        """One-way latency of every frame we captured that ``receiver`` played, in order."""
        pairs = sorted(
            (sent, receiver.played[key])
            for key, sent in self.captured.items()
            if key in receiver.played
        )
        return [played - sent for sent, played in pairs]


class PlaybackTimeline:
    """A sound device fed without a jitter buffer: frames play back to back as they come.

    A frame written at ``now`` plays right after the frames already queued;
    if the device has run dry, it starts ``buffer_ms`` after ``now``. Between
    frames the device plays silence. :meth:`render` returns what the
    listener heard.
    """

    def __init__(self, rate_hz: int = RATE_HZ, buffer_ms: float = DEVICE_BUFFER_MS) -> None:
        self._rate_hz = rate_hz  # device sample rate
        self._buffer = round(buffer_ms * rate_hz / 1000)  # prefill after running dry, samples
        self._origin: float | None = None  # time of sample 0
        self._end = 0  # sample index where queued audio ends
        self._chunks: list[tuple[int, Samples]] = []  # (start sample, frame)

    def play(self, pcm: Samples, now: float) -> float:
        """Queue ``pcm`` at ``now``; return the time its first sample plays."""
        if self._origin is None:
            self._origin = now
        arrival = round((now - self._origin) * self._rate_hz)
        start = self._end if arrival < self._end else arrival + self._buffer
        self._chunks.append((start, pcm))
        self._end = start + len(pcm)
        return self._origin + start / self._rate_hz

    def render(self) -> Samples:
        """Everything played so far, silence included."""
        out = np.zeros(self._end, dtype=np.int16)
        for start, pcm in self._chunks:
            out[start : start + len(pcm)] = pcm
        return out


@dataclass
class EndpointCounters:
    """What one prototype endpoint sent and received."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    frames_rejected: int = 0


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: PrototypeEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._endpoint.datagram_received(data)


class PrototypeEndpoint:
    """One side of a prototype call: a paced sender and a play-on-arrival receiver.

    Args:
        key: the AES-256 session key (both directions use it, as the prototype did).
        speech: 16 kHz PCM to send; silence is sent after it ends.
        log: where sent frames' completion and received frames' playout are recorded.

    Call :meth:`open`, then :meth:`connect`; :meth:`close` when done.
    """

    def __init__(self, key: bytes, speech: Samples, log: FrameLog) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the prototype's key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)  # the session key
        self._speech = speech  # what we send
        self._log = log  # latency instrumentation
        self.device = PlaybackTimeline()
        """What this side's listener hears."""
        self.counters = EndpointCounters()
        """Frames and bytes so far."""
        self.queue_waits: list[tuple[float, float]] = []
        """(arrival time, seconds it queued behind earlier frames) per frame played."""
        self._transport: asyncio.DatagramTransport | None = None
        self._peer: tuple[str, int] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._start = 0.0  # loop time the first frame began
        self._next_frame = 0  # index of the next frame to send

    async def open(self, local_addr: tuple[str, int] = ("127.0.0.1", 0)) -> tuple[str, int]:
        """Bind the UDP socket; return its address."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=local_addr
        )
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    def connect(self, peer: tuple[str, int]) -> None:
        """Start sending to ``peer``: one frame every 64 ms, from now."""
        loop = asyncio.get_running_loop()
        self._peer = peer
        self._start = loop.time()
        self._schedule(loop)

    def close(self) -> None:
        """Stop sending and close the socket."""
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes) -> None:
        """Open a frame and hand it to the device at once; drop what does not open."""
        now = asyncio.get_running_loop().time()
        nonce, sealed = data[:NONCE_BYTES], data[NONCE_BYTES:]
        try:
            plain = self._aead.decrypt(nonce, sealed, None)
        except InvalidTag:
            self.counters.frames_rejected += 1
            return
        if len(plain) != FRAME_BYTES:
            self.counters.frames_rejected += 1
            return
        self.counters.frames_received += 1
        pcm = np.frombuffer(plain, "<i2").astype(np.int16)
        # the frame enters the device's fixed buffer at `entered` (see the module doc),
        # at once unless the frames queued before it hold more than that buffer
        entered = max(now, self.device.play(pcm, now) - DEVICE_BUFFER_MS / 1000)
        self.queue_waits.append((now, entered - now))
        self._log.frame_played(nonce, entered)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self._start + (self._next_frame + 1) * FRAME_MS / 1000
        self._timer = loop.call_at(due, self._send_frame, loop, due)

    def _send_frame(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        assert self._transport is not None and self._peer is not None
        offset = self._next_frame * FRAME_SAMPLES
        frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        chunk = self._speech[offset : offset + FRAME_SAMPLES]
        frame[: len(chunk)] = chunk
        nonce = os.urandom(NONCE_BYTES)
        datagram = nonce + self._aead.encrypt(nonce, frame.astype("<i2").tobytes(), None)
        self._log.frame_captured(nonce, loop.time())  # as pqcall's session records it
        self._transport.sendto(datagram, self._peer)
        self.counters.frames_sent += 1
        self.counters.bytes_sent += len(datagram)
        self._next_frame += 1
        self._schedule(loop)
