"""One call on a softphone: handshake through the server, media path, media session.

Its media options (devices, ports, path timeouts, codec and session settings)
are :class:`~pqcall.client.media_options.MediaOptions`.

A :class:`Call` is made by :class:`~pqcall.client.phone.Phone` (``phone.call(name)``
or an incoming ``call.incoming`` event) and runs its whole life in one task:

outgoing: open the media socket → offer (``/call/initiate``) → ``call.accepted``
(answer, the callee's candidates, our relay grant) → confirm (``/call/confirm``)
→ path checks → media.

incoming: the offer is checked when it arrives (a bad offer is refused before the
phone rings) → :meth:`Call.accept` → answer (``/call/accept``, which returns our
relay grant) → ``call.confirmed`` → path checks → media.

Either side ends it with :meth:`Call.hangup`; the peer's hang-up reaches us both
in the media channel (encrypted, peer to peer) and from the server, whichever
comes first; the media channel alone is enough, so a call outlives a server restart.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable
from dataclasses import replace
from typing import Any, TypeVar

from pqcall.client.call_context import CallContext, PeerTrust, call_record
from pqcall.client.call_interrupt import Ended as _Ended
from pqcall.client.call_interrupt import HungUp as _HungUp
from pqcall.client.call_interrupt import interruptible, server_ends_within
from pqcall.client.call_outcome import failure_detail, outcome_of_end_event
from pqcall.client.media_options import (
    MediaOptions,
    WallClockTrace,
    open_call_audio,
    open_call_devices,
    open_processing,
)
from pqcall.client.phone_callstate import (
    CallState,
    Direction,
    check_move,
    initial_state,
    is_terminal,
)
from pqcall.crypto.handshake import CalleeHandshake, CallerHandshake, CallKeys
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.exceptions import CallError, PqcallError, ServerError
from pqcall.media.audio import AudioSink, AudioSource, close_all
from pqcall.media.disguise import with_disguise
from pqcall.media.processing import ProcessingReport, WebRtcProcessing
from pqcall.media.stats import CallStatsSnapshot
from pqcall.signaling.messages import (
    EVENT_CALL_ACCEPTED,
    EVENT_CALL_CONFIRMED,
    EVENT_CALL_ENDED,
    EVENT_CALL_FAILED,
    EVENT_CALL_MISSED,
    EVENT_CALL_REJECTED,
    AcceptCall,
    CallDetail,
    Candidate,
    ConfirmCall,
    Event,
    HangupCall,
    InitiateCall,
    RejectCall,
    RelayGrant,
)
from pqcall.transport.candidates import Candidate as TransportCandidate
from pqcall.transport.connect import establish_path, open_media_socket, resolve_candidates
from pqcall.transport.gather import gather_candidates, send_openers
from pqcall.transport.mobility import Mobility
from pqcall.transport.path_choice import PathChoice
from pqcall.transport.path_messages import PathRole
from pqcall.transport.relay_wire import RelayTarget
from pqcall.transport.session import MediaSession

logger = logging.getLogger(__name__)

T = TypeVar("T")

END_EVENTS = frozenset(
    {EVENT_CALL_REJECTED, EVENT_CALL_ENDED, EVENT_CALL_MISSED, EVENT_CALL_FAILED}
)
"""Server events that end a call."""
HANGUP_TIMEOUT_S = 5.0
"""How long ending a call waits for the server to hear of it."""
PEER_HANGUP_REPORT_S = 2.0
"""After the peer hung up in the media channel, how long we wait for the server to say so
before we tell it ourselves."""


class Call:
    """One call, from ringing to its end.

    Do not construct it: :meth:`Phone.call <pqcall.client.phone.Phone.call>` and
    :meth:`Phone.next_incoming <pqcall.client.phone.Phone.next_incoming>` hand them out.
    """

    def __init__(
        self,
        *,
        call_id: str,
        peer: str,
        direction: Direction,
        peer_identity: IdentityPublicKey,
        context: CallContext,
        media: MediaOptions,
        peer_trust: PeerTrust = PeerTrust.PINNED,
    ) -> None:
        self.call_id = call_id  # 32 hex digits, chosen by the caller
        self.peer = peer  # the other party's username
        self.direction = direction  # who placed it
        self.peer_identity = peer_identity  # the identity the handshake proves
        self.peer_trust = peer_trust  # new, pinned or verified
        self.state = initial_state(direction)  # where it is now
        self.reason: str | None = None  # why it ended
        self.peer_offline = False  # the server showed the callee offline when we placed it
        self.sas: str | None = None  # short authentication string, once keys exist
        self.path: PathChoice | None = None  # the media path, once found
        self.created = time.time()  # when it started ringing
        self.answered: float | None = None  # when media started
        self.ended: float | None = None  # when it ended
        self._context = context  # the phone's side of things
        self._media = media  # sources, sinks, ports, settings
        self._events: asyncio.Queue[Event] = asyncio.Queue()  # server events for this call
        loop = asyncio.get_running_loop()
        self._server_end: asyncio.Future[Event] = loop.create_future()  # the server ended it
        self._hangup = asyncio.Event()  # the user ends it
        self._decision: asyncio.Future[bool] = loop.create_future()  # accept (True) or not
        self._changed = asyncio.Condition()  # notified on every state change
        self._caller_hs: CallerHandshake | None = None  # outgoing handshake
        self._callee_hs: CalleeHandshake | None = None  # incoming handshake
        self._incoming: CallDetail | None = None  # the incoming call's offer and candidates
        self._sock: socket.socket | None = None  # media socket until the session adopts it
        self._audio: tuple[AudioSource, AudioSink] | None = None  # until the session adopts it
        self._session: MediaSession | None = None  # media, once a path is found
        self._final_stats: CallStatsSnapshot | None = None  # last snapshot before media closed
        self._processing: WebRtcProcessing | None = None  # echo/noise/gain, a device source only
        self._trace = WallClockTrace()  # first capture / playout times
        self._task: asyncio.Task[None] | None = None  # the call's life

    # ------------------------------------------------------------------ for the phone

    def start_outgoing(
        self, their_identity: IdentityPublicKey, their_devices: tuple[IdentityPublicKey, ...] = ()
    ) -> None:
        """Place the call (the phone checked the callee's pinned identity and device list)."""
        self._caller_hs = CallerHandshake(
            call_id=bytes.fromhex(self.call_id),
            our_name=self._context.username,
            our_identity=self._context.device_key or self._context.identity,
            their_name=self.peer,
            their_identity=their_identity,
            their_devices=their_devices,
        )
        self._task = asyncio.create_task(self._run(self._outgoing()), name=f"call {self.call_id}")

    def start_incoming(self, handshake: CalleeHandshake, detail: CallDetail) -> None:
        """Ring for a checked offer; the call waits for :meth:`accept` or :meth:`reject`."""
        self._callee_hs = handshake
        self._incoming = detail
        self._task = asyncio.create_task(
            self._run(self._incoming_flow()), name=f"call {self.call_id}"
        )

    def deliver(self, event: Event) -> None:
        """A server event about this call."""
        if is_terminal(self.state):
            return
        if event.type in END_EVENTS:
            if not self._server_end.done():
                self._server_end.set_result(event)
        else:
            self._events.put_nowait(event)

    # ------------------------------------------------------------------ for the user

    async def accept(self) -> None:
        """Answer an incoming call (returns at once; watch :attr:`state`).

        Raises:
            CallError: not an incoming call that is ringing.
        """
        if self.state is not CallState.INCOMING or self._decision.done():
            raise CallError(f"cannot accept a call that is {self.state}")
        self._decision.set_result(True)

    async def reject(self) -> None:
        """Decline an incoming call that is ringing.

        Raises:
            CallError: not an incoming call that is ringing.
        """
        if self.state is not CallState.INCOMING or self._decision.done():
            raise CallError(f"cannot reject a call that is {self.state}")
        self._decision.set_result(False)
        await self.wait_ended()

    async def hangup(self) -> None:
        """End the call (or cancel it while it rings) and wait until it is over."""
        if self.direction is Direction.INCOMING and not self._decision.done():
            self._decision.set_result(False)
        self._hangup.set()
        await self.wait_ended()

    def set_muted(self, muted: bool) -> None:
        """Send silence instead of our audio (the peer is told)."""
        if self._session is not None:
            self._session.set_muted(muted)

    async def set_audio(self, audio_in: str | None = None, audio_out: str | None = None) -> None:
        """Take our audio from ``audio_in`` and play the peer's to ``audio_out`` from now on.

        Specs as in :class:`MediaOptions`; None keeps the current one. During
        media the switch happens at the next frame, without a gap; before it,
        the call starts with the new ones. The replaced devices are closed.

        Raises:
            DeviceError: a spec cannot be opened; nothing changed.
        """
        if audio_in is None and audio_out is None:
            return
        media = replace(
            self._media,
            audio_in=self._media.audio_in if audio_in is None else audio_in,
            audio_out=self._media.audio_out if audio_out is None else audio_out,
        )
        source, sink = await asyncio.to_thread(open_call_audio, audio_in, audio_out, self._frame_ms)
        self._media = media
        if self._session is not None:  # closes what it replaces, or these if it ended
            await self._session.replace_audio(source, sink)
            if sink is not None and self._processing is not None:
                self._processing.reset()  # a new echo path
            return
        retired: tuple[AudioSource | AudioSink | None, ...] = (source, sink)
        if self._audio is not None:  # ringing or connecting: the session will take these
            old_source, old_sink = self._audio
            self._audio = (source or old_source, sink or old_sink)
            retired = (old_source if source else None, old_sink if sink else None)
        # else: audio not open yet (it opens from _media), or the call ended
        await asyncio.to_thread(close_all, retired)

    @property
    def is_muted(self) -> bool:
        """Whether we send silence."""
        return self._session is not None and self._session.is_muted

    @property
    def is_peer_muted(self) -> bool:
        """Whether the peer told us (in the media channel) that it sends silence."""
        session = self._session
        return session is not None and session.end_reason is None and session.is_peer_muted

    @property
    def is_voice_disguised(self) -> bool:
        """Whether our voice is disguised (``MediaOptions.voice_disguise``; the peer is told)."""
        return self._media.voice_disguise is not None

    @property
    def is_peer_voice_disguised(self) -> bool:
        """Whether the peer told us (in the media channel) that its voice is disguised."""
        session = self._session
        return session is not None and session.is_peer_voice_disguised

    @property
    def is_reconnecting(self) -> bool:
        """Whether the call is active but nothing came from the peer for a second or more."""
        session = self._session
        return session is not None and session.end_reason is None and session.is_reconnecting

    def processing_report(self) -> ProcessingReport | None:
        """What the send side's processing does and the echo it removed (None: no processing)."""
        return None if self._processing is None else self._processing.report()

    def stats(self) -> CallStatsSnapshot | None:
        """Live media statistics (the last ones once the call ended; None before media)."""
        if self._session is not None and self._session.end_reason is None:
            return self._session.snapshot()
        return self._final_stats

    async def wait_for(self, *states: CallState) -> CallState:
        """Wait until the call is in one of ``states`` or ended; return its state."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.state in states or is_terminal(self.state))
        return self.state

    async def wait_ended(self) -> CallState:
        """Wait until the call is over; return its end state."""
        return await self.wait_for()

    def summary(self) -> dict[str, Any]:
        """The call as one JSON-ready dict (what ``--json`` prints and history keeps)."""
        return call_record(self, frame_ms=self._media.settings.opus.frame_ms, trace=self._trace)

    # ------------------------------------------------------------------ the flows

    async def _run(self, flow: Awaitable[None]) -> None:
        """Run a flow; whatever happens, the call ends in a terminal state."""
        try:
            await flow
        except _HungUp:
            await self._finish_locally()
        except _Ended as ended:
            await self._finish_from_server(ended.event)
        except PqcallError as exc:
            logger.warning("call %s failed: %s", self.call_id, exc)
            detail = failure_detail(self._context.username, exc)
            await self._end(CallState.FAILED, str(exc), tell_server="failed", detail=detail)
        except asyncio.CancelledError:
            await asyncio.shield(self._end(CallState.ENDED, "phone closed", tell_server="hangup"))
            raise
        except Exception as exc:  # a bug: end the call cleanly, keep the trace in the log
            logger.exception("call %s: unexpected error", self.call_id)
            await self._end(CallState.FAILED, f"internal error: {exc}", tell_server="failed")

    async def _outgoing(self) -> None:
        assert self._caller_hs is not None
        self._open_audio()
        try:
            self._sock = open_media_socket(self._media.media_port)
            candidates = [Candidate.of(c) for c in await self._gather(self._sock)]
            await self._context.api.initiate(
                InitiateCall(
                    call_id=self.call_id,
                    callee=self.peer,
                    offer=self._caller_hs.offer(now=time.time()),
                    candidates=candidates,
                )
            )
            accepted = CallDetail.model_validate(
                (await self._next_event(EVENT_CALL_ACCEPTED)).payload
            )
            await self._move(CallState.CONNECTING)
            if accepted.answer is None:
                raise CallError("the server sent no answer")
            confirm = self._caller_hs.receive_answer(accepted.answer)
            keys = self._caller_hs.keys
            self.sas = keys.sas
            await send_openers(self._sock, accepted.callee_candidates)  # before they check us
            await self._context.api.confirm(ConfirmCall(call_id=self.call_id, confirm=confirm))
            await self._media_phase(
                keys, PathRole.CONTROLLING, accepted.callee_candidates, accepted.relay
            )
        finally:
            self._close_unused()

    async def _incoming_flow(self) -> None:
        assert self._callee_hs is not None and self._incoming is not None
        if not await self._wait_decision():
            raise _HungUp
        self._open_audio()
        try:
            self._sock = open_media_socket(self._media.media_port)
            candidates = [Candidate.of(c) for c in await self._gather(self._sock)]
            await send_openers(self._sock, self._incoming.caller_candidates)  # before they check
            answer = self._callee_hs.answer()
            await self._move(CallState.CONNECTING)
            detail = await self._context.api.accept(
                AcceptCall(call_id=self.call_id, answer=answer, candidates=candidates)
            )
            confirmed = CallDetail.model_validate(
                (await self._next_event(EVENT_CALL_CONFIRMED)).payload
            )
            if confirmed.confirm is None:
                raise CallError("the server sent no confirmation")
            keys = self._callee_hs.receive_confirm(confirmed.confirm)
            self.sas = keys.sas
            await self._media_phase(
                keys,
                PathRole.CONTROLLED,
                self._incoming.caller_candidates,
                detail.relay,
            )
        finally:
            self._close_unused()

    async def _gather(self, sock: socket.socket) -> list[TransportCandidate]:
        stun = self._media.stun or self._context.stun_server
        return await gather_candidates(sock, stun_server=stun, advertise=self._media.advertise)

    async def _media_phase(
        self,
        keys: CallKeys,
        role: PathRole,
        remote: list[Candidate],
        grant: RelayGrant | None,
    ) -> None:
        """Find a path, run the media session until someone ends the call."""
        assert self._sock is not None
        relay = await self._relay_target(grant)
        self.path = await self._interruptible(
            establish_path(
                self._sock,
                keys,
                role,
                remote,
                relay,
                direct_timeout_s=self._media.direct_timeout_s,
                timeout_s=self._media.path_timeout_s,
            )
        )
        path = self.path
        logger.info("call %s: %s path to %s", self.call_id, path.label, path.shown_address)
        assert self._audio is not None
        source, sink = self._audio
        self._processing = open_processing(self._media, source, sink)
        # mobility answers late checks, follows consent, moves the call (transport/mobility.py)
        their, fallback = [], None  # through TURN: the allocation stays as it is
        if path.turn is None:
            their = await resolve_candidates(remote)
            if relay is not None and path.relay is not None:  # numeric, the same counter
                fallback = RelayTarget(path.relay, relay.token, relay.sequence)
        mobility = Mobility(keys, path, their, relay=fallback)
        session = MediaSession(
            keys,
            source,
            sink,
            settings=self._media.settings,
            processing=with_disguise(self._processing, self._media.voice_disguise),
            trace=self._trace,
            side_channel=mobility.side_channel,
        )
        if self._media.voice_disguise is not None:
            session.set_voice_disguised(True)  # the peer is told at the start (FLAGS)
        self._session = session
        sock, self._sock = self._sock, None
        await session.open(sock=sock)
        session.connect(self.path.peer)
        mobility.attach(session)
        self.answered = time.time()
        await self._move(CallState.ACTIVE)
        ended = asyncio.ensure_future(session.wait_ended())
        try:
            await self._interruptible(ended)
        except _Ended as server_end:
            # the server says it is over; the media channel's own hang-up may be on its way
            await self._stop_media(hangup=False)
            raise server_end
        except _HungUp:
            raise  # _finish_locally hangs up the media and tells the server at once
        finally:
            ended.cancel()
            await mobility.close()
        reason = session.end_reason or "ended"
        await self._stop_media(hangup=False)
        if reason == "peer hangup":
            # the peer tells the server itself; report it only if the server stays silent
            # (the peer could not reach it), so the server records who really hung up
            told = await self._server_ends_within(PEER_HANGUP_REPORT_S)
            await self._end(CallState.ENDED, "peer hung up", tell_server=None if told else "hangup")
        elif reason == "peer unreachable":  # the media timeout: nothing from the peer
            await self._end(CallState.FAILED, reason, tell_server="failed")
        else:
            await self._end(CallState.FAILED, f"media {reason}", tell_server="failed")

    # ------------------------------------------------------------------ helpers

    def _open_audio(self) -> None:
        self._audio = open_call_devices(self._media.audio_in, self._media.audio_out, self._frame_ms)

    @property
    def _frame_ms(self) -> int:
        return self._media.settings.opus.frame_ms

    def _close_unused(self) -> None:
        """Close the audio and socket if no media session took them over."""
        if self._session is None and self._audio is not None:
            close_all(self._audio)
        self._audio = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _relay_target(self, grant: RelayGrant | None) -> RelayTarget | None:
        """Our relay grant as a target (establish_path resolves a host name)."""
        if grant is None:
            return None
        host = grant.host or self._context.server_host  # TURN too, if UDP is blocked
        return RelayTarget((host, grant.port), grant.token, turn=grant.turn)

    async def _wait_decision(self) -> bool:
        decision = asyncio.ensure_future(asyncio.shield(self._decision))
        try:
            return await self._interruptible(decision)
        finally:
            decision.cancel()

    async def _next_event(self, wanted: str) -> Event:
        """The next server event of type ``wanted`` for this call.

        Raises:
            _Ended: the server ended the call instead.
            _HungUp: the user hung up first.
        """
        while True:
            event = await self._interruptible(self._events.get())
            if event.type == wanted:
                return event
            logger.debug(
                "call %s: ignoring %s while waiting for %s", self.call_id, event.type, wanted
            )

    async def _interruptible(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless the user hangs up or the server ends the call first.

        Raises:
            _HungUp: the user hung up first.
            _Ended: the server ended the call first.
        """
        return await interruptible(awaitable, self._hangup, self._server_end)

    async def _server_ends_within(self, seconds: float) -> bool:
        """Whether the server ends the call within ``seconds``."""
        return await server_ends_within(self._server_end, seconds)

    async def _stop_media(self, *, hangup: bool) -> None:
        session = self._session
        if session is None:
            return
        self._final_stats = session.snapshot()
        if hangup and session.end_reason is None:
            await session.hangup()
        else:
            await session.close()

    async def _finish_locally(self) -> None:
        """The user hung up, cancelled or declined."""
        if self.state is CallState.INCOMING:
            state, reason, action = CallState.REJECTED, "declined", "reject"
        elif self.state is CallState.OUTGOING:
            state, reason, action = CallState.ENDED, "cancelled", "hangup"
        else:
            state, reason, action = CallState.ENDED, "hung up", "hangup"
        # the server hears it while the media channel carries the hang-up to the peer, so
        # it records who ended the call before the peer's own report comes in
        await asyncio.gather(self._tell_server(action), self._stop_media(hangup=True))
        await self._end(state, reason, tell_server=None)

    async def _finish_from_server(self, event: Event) -> None:
        await self._stop_media(hangup=False)
        state, reason = outcome_of_end_event(
            event.type,
            event.payload,
            direction=self.direction,
            peer=self.peer,
            peer_offline=self.peer_offline,
        )
        await self._end(state, reason, tell_server=None)

    async def _end(
        self, state: CallState, reason: str, *, tell_server: str | None, detail: str | None = None
    ) -> None:
        """Move to terminal ``state``; tell the server unless it told us."""
        if is_terminal(self.state):
            return
        if self._session is not None and self._session.end_reason is None:
            await self._stop_media(hangup=state is not CallState.FAILED)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if tell_server is not None:
            await self._tell_server(tell_server, detail)
        self.reason = reason
        self.ended = time.time()
        await self._move(state)

    async def _tell_server(self, action: str, detail: str | None = None) -> None:
        api = self._context.api
        try:
            async with asyncio.timeout(HANGUP_TIMEOUT_S):
                if action == "reject":
                    await api.reject(RejectCall(call_id=self.call_id, reason="declined"))
                elif action == "failed":
                    await api.hangup(
                        HangupCall(call_id=self.call_id, reason="failed", detail=detail)
                    )
                else:
                    await api.hangup(HangupCall(call_id=self.call_id, reason="hangup"))
        except (ServerError, TimeoutError) as exc:
            # the peer heard it in the media channel; the server's sweeper ends the row
            logger.info("call %s: server not told (%s): %s", self.call_id, action, exc)

    async def _move(self, state: CallState) -> None:
        check_move(self.state, state)
        self.state = state
        async with self._changed:
            self._changed.notify_all()
        self._context.on_change(self)
