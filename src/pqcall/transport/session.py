"""The media session: one call's audio over one UDP socket (asyncio wrapper).

Scope: the pump around :class:`~pqcall.transport.media_protocol.MediaProtocol`
(which holds every protocol rule) and the media stages, as DESIGN.md draws
the path::

    source → Opus encode → MediaProtocol (SFrame protect) → UDP
    UDP → MediaProtocol (SFrame unprotect, replay check) → JitterBuffer → Opus decode → sink

Two timers drive it, both on ``loop.time()``: the frame tick, every
``frame_ms`` at ``start + n * frame`` (so it does not drift, and a late tick
catches up), which sends our next frame and then plays the peer's next one;
and the protocol's own timer (pings, reports, repeats, media timeout), re-armed
only when its deadline moves. Received datagrams are handled as they come.
One tick for both directions halves the event-loop wake-ups of two timers
that were due at the same instants anyway; sending first puts the frame on
the wire before the decode's work.

Only datagrams from the connected peer's address are processed; others are
counted as foreign. An optional side channel sees every datagram first and takes
those of another protocol sharing the socket (the path checks of
:mod:`pqcall.transport.pathcheck`, whose late copies may arrive after media
started); what it takes is neither media nor rejected. Nothing a peer sends can
stop the session: each datagram, each tick and each decode is wrapped, and a
failure is counted (``packets_rejected`` in :meth:`MediaSession.snapshot`),
never raised.

The encoder follows :attr:`MediaProtocol.adaptation`: its bitrate, and with it
the cap on its variable-size packets, is set so one frame (or, with
redundancy, two) fits the same padded packet, and
its expected loss (in-band FEC) follows the peer's reports, and its
complexity drops to ``CALM_COMPLEXITY`` while no loss is planned for. Packet sizes on
the wire therefore never change with the mode (``docs/protocol.md#media-packets``).

Example::

    session = MediaSession(keys, ToneSource(440), NullSink())
    await session.open(("127.0.0.1", 0))   # ``async with`` alone opens on 0.0.0.0
    # or adopt the socket path selection ran on: await session.open(sock=sock)
    async with session:
        session.connect(peer_address)
        ...
        await session.hangup()             # or: print(await session.wait_ended())
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Final, Protocol

import numpy as np

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import LocalProtocolError
from pqcall.media.audio import AudioSink, AudioSource, close_all
from pqcall.media.codec import (
    OpusDecoder,
    OpusEncoder,
    OpusSettings,
    Pcm,
    has_fec,
    silence,
)
from pqcall.media.jitter import JitterBuffer, JitterBufferStats, PlayoutAction, PlayoutDecision
from pqcall.media.stats import CallStats, CallStatsSnapshot
from pqcall.transport.media_packets import AUDIO_HEADER_LENGTH, HangupReason
from pqcall.transport.media_protocol import (
    MEDIA_TIMEOUT_S,
    AdaptationChanged,
    AudioReceived,
    MediaProtocol,
    MediaProtocolStats,
    MediaTimedOut,
    PeerHungUp,
    PeerMuted,
    RttMeasured,
    SenderAdaptation,
)

__all__ = [
    "MEDIA_TIMEOUT_S",
    "EndReason",
    "MediaSession",
    "MediaSettings",
    "MediaTrace",
    "SideChannel",
]

logger = logging.getLogger(__name__)

Address = tuple[str, int]

HANGUP_WAIT_S: Final = 1.0
"""Longest :meth:`MediaSession.hangup` waits for its copies to go out."""
MAX_CATCH_UP_FRAMES: Final = 5
"""A tick this many frames late skips ahead instead of catching up (an event-loop stall)."""
MAX_TRACKED_TIMESTAMPS: Final = 512
"""Sequence numbers whose timestamps are kept for :class:`MediaTrace`."""
FULL_SCALE: Final = 32_768.0


class EndReason(enum.StrEnum):
    """Why a session ended (what :meth:`MediaSession.wait_ended` returns)."""

    LOCAL_HANGUP = "local hangup"
    PEER_HANGUP = "peer hangup"
    TIMEOUT = "timeout"
    """Nothing authenticated from the peer for ``media_timeout_s``."""
    CLOSED = "closed"
    """:meth:`MediaSession.close` without a hang-up."""
    SOCKET_ERROR = "socket error"
    """The socket closed under us."""


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """How a :class:`MediaSession` runs."""

    opus: OpusSettings = field(default_factory=OpusSettings)
    """Encoder settings; ``bitrate_bps`` is a ceiling (see ``MediaProtocol``)."""
    pad_to: int | None = None
    """SFrame padding multiple: every packet has the same size (0: no padding).

    None: one audio packet, the 7-byte media header and one frame at the
    configured bitrate (106 bytes at the defaults: 99 Opus bytes at 39.6
    kbit/s and 20 ms; 56 at 10 ms frames, where a fixed 106 would nearly
    double the bitrate on the wire).
    """
    redundancy: bool | None = None
    """None: automatic (on when loss is reported and the encoder has no FEC); True/False force."""
    ping_interval_s: float = 1.0
    """Seconds between RTT pings."""
    report_interval_s: float = 1.0
    """Seconds between receiver reports."""
    media_timeout_s: float = MEDIA_TIMEOUT_S
    """Seconds without an authenticated packet from the peer that end the call."""

    @property
    def packet_pad_to(self) -> int:
        """The padding multiple in use: ``pad_to``, or one audio packet when it is None."""
        if self.pad_to is not None:
            return self.pad_to
        return AUDIO_HEADER_LENGTH + self.opus.max_packet_bytes


class MediaTrace(Protocol):
    """Optional observer for latency measurement."""

    def frame_captured(self, timestamp: int, now: float) -> None:
        """Sender: the frame with this timestamp was complete at the source (the send tick)."""
        ...

    def frame_played(self, timestamp: int, now: float) -> None:
        """Receiver: a decoded frame with this sender timestamp went to the sink."""
        ...


class SideChannel(Protocol):
    """Another protocol on the media socket (path checks); sees every datagram first."""

    def __call__(
        self, data: bytes, addr: Address, now: float
    ) -> Sequence[tuple[bytes, Address]] | None:
        """Take ``data`` from ``addr`` if it is this protocol's.

        Returns:
            None: not taken, the session handles it as media; else the datagrams to
            send in answer, each with its destination (maybe none).
        """
        ...


class _DatagramProtocol(asyncio.DatagramProtocol):
    """Hands the socket's datagrams to the session."""

    def __init__(self, session: MediaSession) -> None:
        self._session = session
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(addr) != 2:  # IPv6: (host, port, flow info, scope id)
            addr = (str(addr[0]), int(addr[1]))
        # IPv4's (host, port) as it is, rather than a new tuple per datagram
        self._session._datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a peer that went away) must not stop the session
        logger.debug("media session socket: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._session._connection_lost()


@dataclass
class _Tick:
    """A drift-free periodic callback: due at ``start + index * period``."""

    start: float  # loop time of tick 0
    period: float  # seconds between ticks
    index: int = 0  # the next tick to run
    handle: asyncio.TimerHandle | None = None  # its scheduled callback

    @property
    def due(self) -> float:
        return self.start + self.index * self.period

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class MediaSession:
    """One side of a call's media over UDP: send, receive, play, report.

    Args:
        keys: the call's keys from the handshake.
        source: where our audio comes from (one frame of ``opus.frame_ms`` per read).
        sink: where the peer's audio goes.
        settings: codec, padding, redundancy and timers.
        trace: optional observer of capture and playout times.
        side_channel: optional taker of the datagrams of another protocol on the
            socket (a :class:`~pqcall.transport.pathcheck.PathResponder`).

    Raises:
        LocalProtocolError: the source's frame length does not match the codec's.
    """

    # fixed attributes, used on every packet: slots make each read a direct load
    # (CPython 3.11 stops sharing an instance dict's keys at 30 attributes, and reads
    # from an unshared dict are hashed lookups; the media path measured 5 % slower)
    __slots__ = (
        "_buffer",
        "_datagram_protocol",
        "_decode_errors",
        "_decoder",
        "_encoder",
        "_end_reason",
        "_ended",
        "_errors",
        "_foreign",
        "_frame_s",
        "_loop",
        "_muted",
        "_peer",
        "_played_pcm",
        "_protocol",
        "_protocol_ended",
        "_sent_pcm",
        "_settings",
        "_side_channel",
        "_side_channel_datagrams",
        "_sink",
        "_skipped_ticks",
        "_source",
        "_stats",
        "_tick",
        "_timer",
        "_timer_at",
        "_timestamps",
        "_trace",
        "_transport",
    )

    def __init__(
        self,
        keys: CallKeys,
        source: AudioSource,
        sink: AudioSink,
        *,
        settings: MediaSettings | None = None,
        trace: MediaTrace | None = None,
        side_channel: SideChannel | None = None,
    ) -> None:
        settings = MediaSettings() if settings is None else settings
        opus = settings.opus
        if source.frame_samples != opus.frame_samples:
            raise LocalProtocolError(
                f"audio source gives {source.frame_samples} samples per frame, "
                f"the codec needs {opus.frame_samples}"
            )
        self._settings = settings
        self._source = source  # our audio
        self._sink = sink  # the peer's audio
        self._trace = trace  # latency observer
        self._side_channel = side_channel  # sees every datagram before the media path
        self._frame_s = opus.frame_ms / 1000  # tick period
        self._protocol = MediaProtocol(
            keys,
            frame_ms=opus.frame_ms,
            frame_bytes=opus.max_packet_bytes,
            pad_to=settings.packet_pad_to,
            redundancy=settings.redundancy,
            fec=opus.fec,
            base_expected_loss_percent=opus.expected_loss_percent,
            complexity=opus.complexity,
            ping_interval_s=settings.ping_interval_s,
            report_interval_s=settings.report_interval_s,
            media_timeout_s=settings.media_timeout_s,
        )
        adaptation = self._protocol.adaptation
        self._encoder = OpusEncoder(
            replace(
                opus,
                bitrate_bps=adaptation.bitrate_bps(opus.frame_ms),
                expected_loss_percent=adaptation.expected_loss_percent,
                complexity=adaptation.complexity,
            )
        )
        self._decoder = OpusDecoder(opus.frame_ms)
        self._buffer = JitterBuffer(opus.frame_ms, use_fec=True, has_fec=has_fec)
        self._stats = CallStats(opus.frame_ms)
        self._loop: asyncio.AbstractEventLoop | None = None  # set by open
        self._transport: asyncio.DatagramTransport | None = None  # our socket
        self._datagram_protocol: _DatagramProtocol | None = None  # its protocol, for close
        self._peer: Address | None = None  # set by connect
        self._tick: _Tick | None = None  # the frame clock: send, then play
        self._timer: asyncio.TimerHandle | None = None  # the protocol's timer
        self._timer_at: float | None = None  # when it fires
        self._muted = False  # we send silence
        self._ended: asyncio.Future[str] | None = None  # resolved with the end reason
        self._end_reason: EndReason | None = None
        self._protocol_ended: asyncio.Event | None = None  # the protocol reached ENDED
        self._timestamps: dict[int, int] = {}  # seq -> timestamp, oldest first, for trace
        self._played_pcm: Pcm | None = None  # last frame played, for the audio level
        self._sent_pcm: Pcm | None = None  # last frame sent, for the input level
        self._foreign = 0  # datagrams from other addresses
        self._side_channel_datagrams = 0  # datagrams the side channel took
        self._errors = 0  # datagrams or frames whose handling failed
        self._decode_errors = 0  # packets the decoder refused (concealed instead)
        self._skipped_ticks = 0  # frames not sent or played after an event-loop stall

    # lifecycle

    async def open(
        self, local_addr: Address | None = None, *, sock: socket.socket | None = None
    ) -> Address:
        """Bind a UDP socket to ``local_addr`` (default ``("0.0.0.0", 0)``), or adopt ``sock``.

        Args:
            local_addr: the address to bind.
            sock: a bound UDP socket to use instead (the one path selection ran on);
                the session owns it from now on and closes it.

        Returns:
            The bound address.

        Raises:
            LocalProtocolError: already open or ended, or both arguments given.
            OSError: the address cannot be bound.
        """
        if self._transport is not None or self._end_reason is not None:
            raise LocalProtocolError("media session is already open or ended")
        if sock is not None and local_addr is not None:
            raise LocalProtocolError("give the media session a local address or a socket, not both")
        self._loop = asyncio.get_running_loop()
        self._ended_future()
        self._protocol_ended = asyncio.Event()
        if sock is not None:
            transport, protocol = await self._loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self), sock=sock
            )
        else:
            transport, protocol = await self._loop.create_datagram_endpoint(
                lambda: _DatagramProtocol(self),
                local_addr=("0.0.0.0", 0) if local_addr is None else local_addr,
            )
        self._transport = transport
        self._datagram_protocol = protocol
        return self.local_address

    def connect(self, peer_addr: Address) -> None:
        """Start the call with the peer at ``peer_addr`` (a numeric IP address and port).

        Sending, playout, pings and reports start now.

        Raises:
            LocalProtocolError: not open, already connected or ended, or not a numeric address.
        """
        if self._loop is None or self._transport is None or self._end_reason is not None:
            raise LocalProtocolError("media session is not open")
        if self._peer is not None:
            raise LocalProtocolError("media session is already connected")
        try:
            host = str(ipaddress.ip_address(peer_addr[0]))
        except ValueError:
            raise LocalProtocolError(
                f"peer address must be a numeric IP, got {peer_addr[0]!r}"
            ) from None
        self._peer = (host, int(peer_addr[1]))
        now = self._loop.time()
        self._protocol.start(now)
        self._tick = _Tick(now, self._frame_s)
        self._schedule(self._tick)
        self._after_protocol(now)

    def set_muted(self, muted: bool) -> None:
        """Send silence instead of the source (still one packet per frame), and tell the peer."""
        self._muted = muted
        now = self._loop.time() if self._loop is not None else 0.0
        self._protocol.set_muted(muted, now)
        if self._peer is not None and self._end_reason is None:
            self._after_protocol(now)

    async def replace_audio(
        self, source: AudioSource | None = None, sink: AudioSink | None = None
    ) -> None:
        """Use ``source`` and/or ``sink`` from the next frame on; close the ones they replace.

        The swap is immediate, so the peer hears no gap; the replaced ones are
        closed in a worker thread (a sound device may take a moment to stop).
        The session owns what it is given: after the call ended, it closes
        them at once.

        Raises:
            LocalProtocolError: ``source`` makes frames of another size.
        """
        if source is not None and source.frame_samples != self._encoder.frame_samples:
            raise LocalProtocolError(
                f"the new source makes {source.frame_samples}-sample frames, "
                f"the call needs {self._encoder.frame_samples}"
            )
        retired: list[AudioSource | AudioSink] = []
        if source is not None:
            retired.append(self._source)
            self._source = source
        if sink is not None:
            retired.append(self._sink)
            self._sink = sink
        if self._end_reason is not None:  # _end closed the old ones already
            retired = [new for new in (source, sink) if new is not None]
        await asyncio.to_thread(close_all, retired)

    async def hangup(self, reason: str = "normal") -> None:
        """Tell the peer the call is over (encrypted, sent several times), then close.

        Args:
            reason: a :class:`~pqcall.transport.media_packets.HangupReason` name:
                "normal", "error" or "shutdown".

        Raises:
            LocalProtocolError: an unknown reason.
        """
        try:
            code = HangupReason[reason.upper()]
        except KeyError:
            names = ", ".join(r.name.lower() for r in HangupReason)
            raise LocalProtocolError(
                f"unknown hang-up reason {reason!r} (one of {names})"
            ) from None
        if self._end_reason is None and self._loop is not None and self._peer is not None:
            self._stop_ticks()
            now = self._loop.time()
            self._protocol.hangup(now, code)
            self._after_protocol(now)
            assert self._protocol_ended is not None
            try:
                await asyncio.wait_for(self._protocol_ended.wait(), HANGUP_WAIT_S)
            except TimeoutError:
                logger.debug("media session: hang-up copies not all sent in time")
        self._end(EndReason.LOCAL_HANGUP)
        await self.close()

    async def wait_ended(self) -> str:
        """Wait until the call ends; return why (an :class:`EndReason` value)."""
        return await self._ended_future()

    async def close(self) -> None:
        """Stop everything, close the socket, the source and the sink. Idempotent."""
        self._end(EndReason.CLOSED)
        if self._datagram_protocol is not None:
            await self._datagram_protocol.closed

    async def __aenter__(self) -> MediaSession:
        if self._transport is None and self._end_reason is None:
            await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # state

    @property
    def local_address(self) -> Address:
        """The bound address of our socket.

        Raises:
            LocalProtocolError: not open.
        """
        if self._transport is None:
            raise LocalProtocolError("media session is not open")
        sockname = self._transport.get_extra_info("sockname")
        return (str(sockname[0]), int(sockname[1]))

    @property
    def end_reason(self) -> str | None:
        """Why the session ended, or None while it runs."""
        return self._end_reason

    @property
    def is_muted(self) -> bool:
        """Whether we send silence."""
        return self._muted

    @property
    def is_peer_muted(self) -> bool:
        """Whether the peer said it is muted."""
        return self._protocol.is_peer_muted

    @property
    def adaptation(self) -> SenderAdaptation:
        """How our encoder runs now (redundancy, expected loss, bytes per frame)."""
        return self._protocol.adaptation

    @property
    def protocol_stats(self) -> MediaProtocolStats:
        """The media protocol's counters (SFrame drops by reason, packets by kind)."""
        return self._protocol.stats

    @property
    def jitter_stats(self) -> JitterBufferStats:
        """The jitter buffer's counters."""
        return self._buffer.snapshot()

    @property
    def foreign_datagrams(self) -> int:
        """Datagrams from an address other than the peer's, ignored."""
        return self._foreign

    @property
    def side_channel_datagrams(self) -> int:
        """Datagrams the side channel took (late path checks), not counted as media."""
        return self._side_channel_datagrams

    @property
    def packets_rejected(self) -> int:
        """Every datagram dropped: by the protocol, foreign, failed, or refused by the decoder."""
        return self._protocol.dropped + self._foreign + self._errors + self._decode_errors

    def snapshot(self) -> CallStatsSnapshot:
        """Live call statistics (``packets_sent`` counts every datagram, control ones too)."""
        now = self._loop.time() if self._loop is not None else 0.0
        # the levels of the latest frames, measured when asked for rather than per frame
        played, self._played_pcm = self._played_pcm, None
        if played is not None:
            self._stats.record_audio_level(_rms(played))
        sent, self._sent_pcm = self._sent_pcm, None
        if sent is not None:
            self._stats.record_input_level(_rms(sent))
        return self._stats.snapshot(
            now, playout=self._buffer.snapshot(), packets_rejected=self.packets_rejected
        )

    # the pump

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        if self._end_reason is not None:
            return
        assert self._loop is not None
        now = self._loop.time()
        if self._side_channel is not None and self._take_side_channel(data, addr, now):
            return
        if self._peer is None or addr != self._peer:
            self._foreign += 1
            return
        try:
            self._protocol.receive_datagram(data, now)
            self._after_protocol(now, size=len(data))
        except Exception:
            self._errors += 1
            logger.exception("media session: failed to handle a datagram")

    def _take_side_channel(self, data: bytes, addr: Address, now: float) -> bool:
        """Offer a datagram to the side channel; send its answers. Whether it took it."""
        assert self._side_channel is not None
        try:
            answers = self._side_channel(data, addr, now)
        except Exception:
            self._errors += 1
            logger.exception("media session: side channel failed on a datagram")
            return True
        if answers is None:
            return False
        self._side_channel_datagrams += 1
        if self._transport is not None and not self._transport.is_closing():
            for answer, to in answers:
                self._transport.sendto(answer, to)
        return True

    def _after_protocol(self, now: float, size: int = 0) -> None:
        """Handle the protocol's events, send its datagrams, re-arm its timer."""
        protocol = self._protocol
        while (event := protocol.next_event()) is not None:
            if isinstance(event, AudioReceived):
                self._stats.record_received(event.seq, event.timestamp, size, now)
                self._buffer.push(
                    event.seq, event.timestamp, event.payload, now, redundant=event.redundant
                )
                if self._trace is not None:
                    self._remember_timestamp(event)
            elif isinstance(event, RttMeasured):
                self._stats.record_pong(event.ping_sent_at, now, peer_hold_s=event.hold_s)
            elif isinstance(event, AdaptationChanged):
                self._adapt(event.adaptation)
            elif isinstance(event, PeerHungUp):
                self._end(EndReason.PEER_HANGUP)
            elif isinstance(event, MediaTimedOut):
                self._end(EndReason.TIMEOUT)
            elif isinstance(event, PeerMuted):
                logger.debug("media session: peer %s", "muted" if event.muted else "unmuted")
        self._transmit(now)
        when = protocol.get_timer() if self._end_reason is None else None
        # an ended protocol has no timer: look for the end only then
        if when is None and protocol.is_ended and self._protocol_ended is not None:
            self._protocol_ended.set()
        if when != self._timer_at:  # rarely: pings and reports are a second apart
            self._arm_timer(when)

    def _transmit(self, now: float) -> None:
        datagrams = self._protocol.datagrams_to_send(now)
        if not datagrams:
            return  # most received datagrams: nothing to answer
        if self._transport is None or self._peer is None or self._transport.is_closing():
            return
        for datagram in datagrams:
            self._transport.sendto(datagram, self._peer)
            self._stats.record_sent(len(datagram), now)

    def _arm_timer(self, when: float | None) -> None:
        """Have :meth:`_on_timer` run at ``when`` instead (None: not at all)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            assert self._loop is not None
            self._timer = self._loop.call_at(when, self._on_timer, when)

    def _on_timer(self, when: float) -> None:
        assert self._loop is not None
        self._timer = self._timer_at = None
        # call_at may fire up to the clock resolution early; never pass a now before `when`
        now = max(when, self._loop.time())
        try:
            self._protocol.handle_timer(now)
            self._after_protocol(now)
        except Exception:
            self._errors += 1
            logger.exception("media session: protocol timer failed")

    def _adapt(self, adaptation: SenderAdaptation) -> None:
        frame_ms = self._settings.opus.frame_ms
        self._encoder.set_bitrate(adaptation.bitrate_bps(frame_ms))
        if self._settings.opus.fec:
            self._encoder.set_expected_loss_percent(adaptation.expected_loss_percent)
        self._encoder.set_complexity(adaptation.complexity)

    def _remember_timestamp(self, event: AudioReceived) -> None:
        timestamps = self._timestamps
        previous = (event.seq - 1) % (1 << 16)
        if previous not in timestamps:  # for a frame recovered from this packet
            frame = self._settings.opus.frame_samples
            timestamps[previous] = (event.timestamp - frame) % (1 << 32)
        timestamps.pop(event.seq, None)
        timestamps[event.seq] = event.timestamp
        while len(timestamps) > MAX_TRACKED_TIMESTAMPS:
            del timestamps[next(iter(timestamps))]

    # ticks

    def _schedule(self, tick: _Tick) -> None:
        assert self._loop is not None
        tick.handle = self._loop.call_at(tick.due, self._on_tick)

    def _catch_up(self, tick: _Tick, now: float) -> int:
        """How many frames are due at ``now`` (at least the one this tick fired for)."""
        if now < tick.start + (tick.index + 1) * tick.period:
            return 1  # on time: the usual case
        due = max(1, math.floor((now - tick.start) / tick.period) - tick.index + 1)
        if due > MAX_CATCH_UP_FRAMES:
            # a stall: skip the lost time rather than burst a backlog
            self._skipped_ticks += due - 1
            tick.index += due - 1
            return 1
        return due

    def _on_tick(self) -> None:
        tick = self._tick
        assert self._loop is not None and tick is not None
        now = self._loop.time()
        for _ in range(self._catch_up(tick, now)):
            try:
                self._send_frame(now)
            except Exception:
                self._errors += 1
                logger.exception("media session: failed to send a frame")
            try:
                self._play_frame(now)
            except Exception:
                self._errors += 1
                logger.exception("media session: failed to play a frame")
            tick.index += 1
        self._after_protocol(now)
        if self._end_reason is None and self._tick is tick:
            self._schedule(tick)

    def _send_frame(self, now: float) -> None:
        pcm = self._source.read_frame()
        if pcm is None or self._muted:
            pcm = silence(self._encoder.frame_samples)
        self._sent_pcm = pcm
        packet = self._protocol.send_audio(self._encoder.encode(pcm), now)
        if self._trace is not None:
            self._trace.frame_captured(packet.timestamp, now)

    def _play_frame(self, now: float) -> None:
        decision = self._buffer.pop(now)
        pcm = self._render(decision)
        self._sink.write_frame(pcm)
        self._played_pcm = pcm
        action = decision.action
        if self._trace is not None and decision.seq is not None and action in _AUDIBLE:
            timestamp = self._timestamps.get(decision.seq)
            if timestamp is not None:
                self._trace.frame_played(timestamp, now)

    def _render(self, decision: PlayoutDecision) -> Pcm:
        """Decode a playout decision (docs in ``media/playout.py``); a bad packet is concealed."""
        action = decision.action
        try:
            if action is PlayoutAction.PLAY or action is PlayoutAction.REDUNDANT:
                return self._decoder.decode(decision.payload)
            if action is PlayoutAction.FEC:
                return self._decoder.decode_fec(decision.payload)
        except Exception:
            self._decode_errors += 1
            return self._decoder.conceal()
        if action is PlayoutAction.CONCEAL:
            return self._decoder.conceal()
        return silence(self._decoder.frame_samples)

    def _stop_ticks(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self._tick = None

    def _end(self, reason: EndReason) -> None:
        """End once: stop the clocks, close socket, source and sink, resolve ``wait_ended``."""
        if self._end_reason is not None:
            return
        self._end_reason = reason
        self._stop_ticks()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._transport is not None:
            self._transport.close()
        close_all((self._source, self._sink))
        future = self._ended_future()
        if not future.done():
            future.set_result(reason.value)

    def _connection_lost(self) -> None:
        self._end(EndReason.SOCKET_ERROR)

    def _ended_future(self) -> asyncio.Future[str]:
        if self._ended is None:
            self._ended = asyncio.get_running_loop().create_future()
            if self._end_reason is not None:
                self._ended.set_result(self._end_reason.value)
        return self._ended


_AUDIBLE: Final = (PlayoutAction.PLAY, PlayoutAction.FEC, PlayoutAction.REDUNDANT)


def _rms(pcm: Pcm) -> float:
    """The RMS level of a frame, 1.0 being full scale."""
    if not len(pcm):
        return 0.0
    samples = pcm.astype(np.float32)
    return math.sqrt(float(np.dot(samples, samples)) / len(samples)) / FULL_SCALE
