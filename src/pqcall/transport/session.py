"""The media session: one call's media over one UDP socket (the asyncio pump).

Scope: the pump around :class:`~pqcall.transport.media_engine.MediaEngine`
(the media protocol and the audio pipeline, sans-I/O), as aioquic's
``asyncio/protocol.py`` around its connection: it owns the socket, the two
timers, the source and sink, and the side channel, and nothing else (the
socket's asyncio protocol and the types at its edge are in
:mod:`pqcall.transport.media_socket`). The media path, stage by stage, is
drawn in ``docs/architecture.md``.

Two timers drive it, both on ``loop.time()``: the frame tick, every
``frame_ms`` at ``start + n * frame`` (so it does not drift, and a late tick
catches up), which sends our next frame and then plays the peer's next one
(one wake-up for both directions; ``docs/decisions/0123-media-one-frame-tick.md``);
and the engine's own timer (pings, reports, repeats, silence, media timeout), re-armed
only when its deadline moves. Received datagrams are handled as they come.

Only datagrams from the connected peer's address are processed (it changes only by
``move_to``: :mod:`pqcall.transport.mobility`); others are counted as foreign. An
optional side channel sees every datagram first and takes those of another protocol
sharing the socket (the path checks, late or mobility's); what it takes is neither
media nor rejected. Nor are late NAT openers
and STUN answers (:mod:`pqcall.transport.stray`): dropped, counted by kind. Nothing a peer sends can
stop the session: each datagram, each tick and each decode is wrapped, and a
failure is counted (``packets_rejected`` in :meth:`MediaSession.snapshot`),
never raised.

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
import ipaddress
import logging
import socket
from types import TracebackType
from typing import Any, Final

from pqcall.crypto.handshake import CallKeys
from pqcall.exceptions import LocalProtocolError
from pqcall.media.audio import AudioSink, AudioSource, close_all
from pqcall.media.pipeline import AudioProcessing, MediaTrace
from pqcall.media.playout import JitterBufferStats
from pqcall.media.stats import CallStatsSnapshot
from pqcall.transport.adaptation import SenderAdaptation
from pqcall.transport.frame_clock import FrameClock
from pqcall.transport.media_config import MEDIA_TIMEOUT_S
from pqcall.transport.media_engine import MediaEngine, MediaSettings
from pqcall.transport.media_events import (
    MediaProtocolStats,
    MediaTimedOut,
    PeerBack,
    PeerHungUp,
    PeerMuted,
    PeerSilent,
)
from pqcall.transport.media_packets import HangupReason
from pqcall.transport.media_socket import Address, EndReason, MediaDatagrams, SideChannel
from pqcall.transport.stray import StrayKind, stray_kind

__all__ = [
    "MEDIA_TIMEOUT_S",
    "EndReason",
    "MediaSession",
    "MediaSettings",
    "MediaTrace",
    "SideChannel",
]

logger = logging.getLogger(__name__)

HANGUP_WAIT_S: Final = 1.0
"""Longest :meth:`MediaSession.hangup` waits for its copies to go out."""


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
        processing: optional stage around the codec (echo cancellation...).

    Raises:
        LocalProtocolError: the source's frame length does not match the codec's.
    """

    # fixed attributes, used on every packet: slots make each read a direct load
    __slots__ = (
        "_datagram_protocol",
        "_end_reason",
        "_ended",
        "_engine",
        "_errors",
        "_foreign",
        "_frame_s",
        "_loop",
        "_media_blocked",
        "_peer",
        "_protocol_ended",
        "_side_channel",
        "_side_channel_datagrams",
        "_sink",
        "_source",
        "_stray",
        "_tick",
        "_tick_handle",
        "_timer",
        "_timer_at",
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
        processing: AudioProcessing | None = None,
    ) -> None:
        settings = MediaSettings() if settings is None else settings
        opus = settings.opus
        if source.frame_samples != opus.frame_samples:
            raise LocalProtocolError(
                f"audio source gives {source.frame_samples} samples per frame, "
                f"the codec needs {opus.frame_samples}"
            )
        self._engine = MediaEngine(keys, settings, processing=processing, trace=trace)
        self._source = source  # our audio
        self._sink = sink  # the peer's audio
        self._side_channel = side_channel  # sees every datagram before the media path
        self._frame_s = opus.frame_ms / 1000  # tick period
        self._loop: asyncio.AbstractEventLoop | None = None  # set by open
        self._transport: asyncio.DatagramTransport | None = None  # our socket
        self._datagram_protocol: MediaDatagrams | None = None  # its protocol, for close
        self._peer: Address | None = None  # set by connect
        self._tick: FrameClock | None = None  # the frame clock: send, then play
        self._tick_handle: asyncio.TimerHandle | None = None  # its next callback
        self._timer: asyncio.TimerHandle | None = None  # the engine's timer
        self._timer_at: float | None = None  # when it fires
        self._ended: asyncio.Future[str] | None = None  # resolved with the end reason
        self._end_reason: EndReason | None = None
        self._protocol_ended: asyncio.Event | None = None  # the protocol reached ENDED
        self._foreign = 0  # datagrams from other addresses
        self._side_channel_datagrams = 0  # datagrams the side channel took
        self._stray = dict.fromkeys(StrayKind, 0)  # late NAT openers and STUN answers
        self._errors = 0  # datagrams or frames whose handling failed
        self._media_blocked = False  # consent lost: media is not sent (mobility)

    # lifecycle

    async def open(
        self,
        local_addr: Address | None = None,
        *,
        sock: socket.socket | None = None,
        endpoint: Any = None,
    ) -> Address:
        """Bind a UDP socket to ``local_addr`` (default ``("0.0.0.0", 0)``), or adopt ``sock``.

        Args:
            local_addr: the address to bind.
            sock: a bound UDP socket to use instead (the one path selection ran on);
                the session owns it from now on and closes it.
            endpoint: or a transport maker as ``create_datagram_endpoint`` (TURN's).

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

        def datagrams() -> MediaDatagrams:
            return MediaDatagrams(self._datagram_received, self._connection_lost)

        if endpoint is not None:  # pqcall.transport.turn.TurnRelay.endpoint
            transport, protocol = await endpoint(datagrams)
        elif sock is not None:
            transport, protocol = await self._loop.create_datagram_endpoint(datagrams, sock=sock)
        else:
            transport, protocol = await self._loop.create_datagram_endpoint(
                datagrams,
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
        self._engine.start(now)
        self._tick = FrameClock(now, self._frame_s)
        self._schedule(self._tick)
        self._after_engine(now)

    def move_to(self, peer_addr: Address) -> None:
        """Send media to, and accept it only from, ``peer_addr`` (no new keys); only for
        an address that answered an authenticated check (:mod:`pqcall.transport.mobility`)."""
        if self._peer is not None and self._end_reason is None:
            self._peer = (str(ipaddress.ip_address(peer_addr[0])), int(peer_addr[1]))

    def set_media_blocked(self, blocked: bool) -> None:
        """Stop (or resume) sending media: the peer's address lost consent (RFC 7675)."""
        self._media_blocked = blocked

    def send_datagram(self, data: bytes, addr: Address) -> None:
        """Send a side-channel datagram (a path check) from the media socket now."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def set_muted(self, muted: bool) -> None:
        """Send silence instead of the source (still one packet per frame), and tell the peer."""
        now = self._loop.time() if self._loop is not None else 0.0
        self._engine.set_muted(muted, now)
        if self._peer is not None and self._end_reason is None:
            self._after_engine(now)

    def set_voice_disguised(self, disguised: bool) -> None:
        """Tell the peer our voice is disguised (or no longer); before :meth:`connect`: at it."""
        now = self._loop.time() if self._loop is not None else 0.0
        self._engine.set_voice_disguised(disguised, now)
        if self._peer is not None and self._end_reason is None:
            self._after_engine(now)

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
        frame_samples = self._engine.frame_samples
        if source is not None and source.frame_samples != frame_samples:
            raise LocalProtocolError(
                f"the new source makes {source.frame_samples}-sample frames, "
                f"the call needs {frame_samples}"
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
            self._engine.hangup(now, code)
            self._after_engine(now)
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
    def peer_address(self) -> Address | None:
        """Where media goes and is accepted from (None before :meth:`connect`)."""
        return self._peer

    @property
    def end_reason(self) -> str | None:
        """Why the session ended, or None while it runs."""
        return self._end_reason

    @property
    def is_muted(self) -> bool:
        """Whether we send silence."""
        return self._engine.pipeline.is_muted

    @property
    def is_peer_muted(self) -> bool:
        """Whether the peer said it is muted."""
        return self._engine.protocol.is_peer_muted

    @property
    def is_voice_disguised(self) -> bool:
        """Whether we told the peer our voice is disguised."""
        return self._engine.protocol.is_voice_disguised

    @property
    def is_peer_voice_disguised(self) -> bool:
        """Whether the peer said its voice is disguised."""
        return self._engine.protocol.is_peer_voice_disguised

    @property
    def is_reconnecting(self) -> bool:
        """Whether nothing came from the peer for ``PEER_SILENT_AFTER_S`` (the call goes on)."""
        return self._engine.protocol.liveness.is_silent

    @property
    def adaptation(self) -> SenderAdaptation:
        """How our encoder runs now (redundancy, expected loss, bytes per frame)."""
        return self._engine.adaptation

    @property
    def protocol_stats(self) -> MediaProtocolStats:
        """The media protocol's counters (SFrame drops by reason, packets by kind)."""
        return self._engine.protocol_stats

    @property
    def jitter_stats(self) -> JitterBufferStats:
        """The jitter buffer's counters."""
        return self._engine.jitter_stats

    @property
    def foreign_datagrams(self) -> int:
        """Datagrams from an address other than the peer's, ignored."""
        return self._foreign

    @property
    def side_channel_datagrams(self) -> int:
        """Datagrams the side channel took (late path checks), not counted as media."""
        return self._side_channel_datagrams

    @property
    def stray_datagrams(self) -> dict[StrayKind, int]:
        """Late setup datagrams dropped, by kind (peers' NAT openers, answers to our
        STUN requests): neither media nor rejected (:mod:`pqcall.transport.stray`)."""
        return dict(self._stray)

    @property
    def packets_rejected(self) -> int:
        """Every datagram dropped: by the protocol, foreign, failed, or refused by the decoder."""
        return self._engine.packets_rejected + self._foreign + self._errors

    def snapshot(self) -> CallStatsSnapshot:
        """Live call statistics (``packets_sent`` counts every datagram, control ones too)."""
        now = self._loop.time() if self._loop is not None else 0.0
        return self._engine.snapshot(now, packets_rejected=self._foreign + self._errors)

    # the pump

    def _datagram_received(self, data: bytes, addr: Address) -> None:
        if self._end_reason is not None:
            return
        assert self._loop is not None
        now = self._loop.time()
        if self._side_channel is not None and self._take_side_channel(data, addr, now):
            return
        if (stray := stray_kind(data)) is not None:
            self._stray[stray] += 1
            return
        if self._peer is None or addr != self._peer:
            self._foreign += 1
            return
        try:
            self._engine.receive_datagram(data, now)
            if self._tick is not None and self._tick.owed:
                self._play_owed(self._tick, now)  # a late tick waited for this
            self._after_engine(now)
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

    def _after_engine(self, now: float) -> None:
        """Handle the engine's events, send its datagrams, re-arm its timer."""
        engine = self._engine
        while (event := engine.next_event()) is not None:
            if isinstance(event, PeerHungUp):
                self._end(EndReason.PEER_HANGUP)
            elif isinstance(event, MediaTimedOut):
                self._end(EndReason.PEER_UNREACHABLE)
            elif isinstance(event, PeerSilent):
                logger.info("media session: nothing from the peer for %.1f s", event.idle_s)
            elif isinstance(event, PeerBack):
                logger.info("media session: the peer is back after %.1f s", event.silent_s)
            elif isinstance(event, PeerMuted):
                logger.debug("media session: peer %s", "muted" if event.muted else "unmuted")
        self._transmit(now)
        when = engine.get_timer() if self._end_reason is None else None
        # an ended protocol has no timer: look for the end only then
        if when is None and engine.is_ended and self._protocol_ended is not None:
            self._protocol_ended.set()
        if when != self._timer_at:  # rarely: pings and reports are a second apart
            self._arm_timer(when)

    def _transmit(self, now: float) -> None:
        datagrams = self._engine.datagrams_to_send(now)
        if not datagrams:
            return  # most received datagrams: nothing to answer
        if self._transport is None or self._peer is None or self._transport.is_closing():
            return
        if self._media_blocked:  # no consent from the peer's address: sent to nobody
            return
        for datagram in datagrams:
            self._transport.sendto(datagram, self._peer)

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
            self._engine.handle_timer(now)
            self._after_engine(now)
        except Exception:
            self._errors += 1
            logger.exception("media session: protocol timer failed")

    # ticks

    def _schedule(self, tick: FrameClock) -> None:
        assert self._loop is not None
        self._tick_handle = self._loop.call_at(tick.due, self._on_tick)

    def _on_tick(self) -> None:
        tick = self._tick
        assert self._loop is not None and tick is not None
        now = self._loop.time()
        frames = tick.frames_due(now)
        for _ in range(frames):
            try:
                self._engine.send_frame(self._source.read_frame(), now)
            except Exception:
                self._errors += 1
                logger.exception("media session: failed to send a frame")
            tick.index += 1
        # a late tick's plays wait for the datagrams still in the socket (frame_clock.py)
        tick.owe_plays(frames)
        self._play_owed(tick, now)
        self._after_engine(now)
        if self._end_reason is None and self._tick is tick:
            self._schedule(tick)

    def _play_owed(self, tick: FrameClock, now: float) -> None:
        while tick.may_play(self._engine.has_next_frame()):
            try:
                self._sink.write_frame(self._engine.play_frame(now))
            except Exception:
                self._errors += 1
                logger.exception("media session: failed to play a frame")

    def _stop_ticks(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._tick = self._tick_handle = None

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
