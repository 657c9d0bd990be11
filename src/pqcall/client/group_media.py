"""A group call's media on one phone: capture → Opus → SFrame → forwarder, and back, mixed.

One UDP socket, connected to the server's group forwarder (the member's grant).
Every frame tick (20 ms) the phone captures one frame, encodes it, protects it
with its own current sender key (:class:`MediaKeys`) and sends it; then it plays
one frame mixed from every sender's jitter buffer (one
:class:`~pqcall.media.pipeline.ReceiveStream` per sender id, added as a sender's
first frame arrives). A bind goes out every ``KEEPALIVE_S`` (the forwarder marks a
silent member gone). Datagrams it cannot open (no key yet, a key already erased,
tampered) are counted and dropped, never raised.

The wire is :mod:`pqcall.transport.group_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Protocol

from pqcall.client.group_speaking import SpeakingMeter
from pqcall.client.media_options import WallClockTrace
from pqcall.exceptions import DecodeError
from pqcall.media.audio import AudioSink, AudioSource
from pqcall.media.codec import OpusSettings
from pqcall.media.pipeline import MediaPipeline
from pqcall.media.stats import CallStatsSnapshot
from pqcall.transport.group_wire import (
    KEEPALIVE_S,
    decode_frame,
    encode_bind,
    encode_frame,
    parse_ack,
)

logger = logging.getLogger(__name__)

MAX_LATE_S = 1.0  # a tick this late resynchronizes the clock instead of catching up
RECEIVE_BUFFER_BYTES = 1024 * 1024  # (n - 1) streams; the default ~200 KiB overflowed at 8


class MediaKeys(Protocol):
    """What the media needs of the group keys (a ``GroupKeyring``)."""

    def protect(self, payload: bytes, metadata: bytes = b"", *, now: float) -> bytes:
        """Our frame under our current sender key."""
        ...

    def unprotect(self, packet: bytes, now: float) -> tuple[int, bytes] | None:
        """``(sender_id, payload)`` of another member's frame, or None if it cannot be opened."""
        ...


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, media: GroupMedia) -> None:
        self._media = media

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._media._received(data)

    def error_received(self, exc: Exception) -> None:
        logger.debug("group media socket: %s", exc)


class GroupMedia:
    """The media of one member of a group call.

    Args:
        keys: our sender key and the others' (the group keyring).
        source: what we send.
        sink: where the mix goes.
        opus: codec settings.
        trace: remembers the first captured and first played frame.
    """

    def __init__(
        self,
        keys: MediaKeys,
        source: AudioSource,
        sink: AudioSink,
        opus: OpusSettings,
        trace: WallClockTrace,
    ) -> None:
        self.keys = keys
        self.source = source
        self.sink = sink
        self.pipeline = MediaPipeline(opus, trace=trace)
        self._trace = trace
        self.frame_s = opus.frame_ms / 1000
        self.others_bound = 0  # other members bound at the forwarder (its last ack)
        self.rejected = 0  # datagrams no key opened
        self.packets_sent = 0
        self.speaking = SpeakingMeter()  # who was heard speaking lately (client/group_speaking.py)
        self._frame_ms = opus.frame_ms
        self._streams: set[int] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self._token = b""
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0
        self._timestamp = 0
        self._owed = 0  # frames the clock ran and has not played yet (a late tick's)
        self._forced = 0  # of those, to play now whether or not their datagrams are here

    async def open(self, host: str, port: int, token: bytes, local_port: int = 0) -> None:
        """Open the socket towards the forwarder and start binding and the frame clock."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self), remote_addr=(host, port), local_addr=("0.0.0.0", local_port)
        )
        sock = transport.get_extra_info("socket")
        if sock is not None:  # what arrives while this process is descheduled waits here
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self._transport = transport
        self._token = token
        self._tasks = [
            asyncio.create_task(self._keepalive(), name="group bind"),
            asyncio.create_task(self._clock(), name="group media"),
        ]

    def rebind(self, token: bytes) -> None:
        """Use a new forwarding token (we rejoined); bind at once."""
        self._token = token
        self._send(encode_bind(token))

    async def close(self) -> None:
        """Stop sending and playing; close the socket (not the source or sink)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def set_muted(self, muted: bool) -> None:
        """Send silence (still one frame per tick)."""
        self.pipeline.set_muted(muted)

    @property
    def senders(self) -> set[int]:
        """Sender ids heard from."""
        return set(self._streams)

    def stats(self, sender_id: int) -> CallStatsSnapshot | None:
        """What we heard from ``sender_id`` (None: nothing yet)."""
        if sender_id not in self._streams:
            return None
        now = asyncio.get_running_loop().time()
        return self.pipeline.snapshot(now, stream=sender_id)

    # ------------------------------------------------------------ internals

    def _send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.sendto(data)

    async def _keepalive(self) -> None:
        while True:
            self._send(encode_bind(self._token))
            await asyncio.sleep(KEEPALIVE_S / 4 if self.others_bound == 0 else KEEPALIVE_S)

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        samples = self.pipeline.frame_samples
        while True:
            now = loop.time()
            frame = self.pipeline.capture(self.source.read_frame(), now)
            if frame:
                payload = encode_frame(self._seq, self._timestamp, frame)
                packet = self.keys.protect(payload, now=now)
                self._send(packet)
                self.pipeline.record_sent(len(packet), now)
                self._trace.frame_captured(self._timestamp, now)
                self.packets_sent += 1
                self._seq += 1
            self._timestamp += samples
            # a frame played at once unless we are catching up (the next one is due already):
            # then it waits for its datagrams, still in the socket (transport/frame_clock.py)
            catching_up = loop.time() - deadline >= self.frame_s
            self._forced = self._owed + (0 if catching_up else 1)
            self._owed += 1
            self._play_owed(now)
            deadline += self.frame_s
            wait = deadline - loop.time()
            if wait < -MAX_LATE_S:
                deadline = loop.time()  # too late: start again from now
                wait = 0
            await asyncio.sleep(max(wait, 0))

    def _received(self, data: bytes) -> None:
        others = parse_ack(data)
        if others is not None:
            self.others_bound = others
            return
        now = asyncio.get_running_loop().time()
        opened = self.keys.unprotect(data, now)
        if opened is None:
            self.rejected += 1
            return
        sender_id, plaintext = opened
        try:
            seq, timestamp, opus = decode_frame(plaintext)
        except DecodeError:
            self.rejected += 1
            return
        if sender_id not in self._streams:
            self.pipeline.add_stream(sender_id, self.speaking.decoder(sender_id, self._frame_ms))
            self._streams.add(sender_id)
        self.pipeline.receive(seq, timestamp, opus, now, stream=sender_id, size=len(data))
        self._play_owed(now)

    def _play_owed(self, now: float) -> None:
        """Play the frames owed: the forced ones whatever, the others once every stream has its."""
        while self._owed:
            if self._forced:
                self._forced -= 1
            elif not self.pipeline.has_next_frame():
                return
            self._owed -= 1
            self.sink.write_frame(self.pipeline.play(now))
