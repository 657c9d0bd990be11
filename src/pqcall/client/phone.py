"""The softphone: an account, its server connection, contacts, history and calls.

::

    async with Phone(home, passphrase=...) as phone:
        call = await phone.call("bob")          # rings bob
        await call.wait_for(CallState.ACTIVE)   # read call.sas aloud
        await call.hangup()

    async with Phone(home, passphrase=...) as phone:
        call = await phone.next_incoming()      # rings here
        await call.accept()

One call at a time, but a ringing call does not block (``docs/cli.md#waiting-calls``):
a second incoming call also rings (:attr:`Phone.ringing_calls`); answering one, or
placing a call, declines the others as *busy*. While in a call (placed, answering or
active), a new incoming call is refused as *busy*, a new outgoing one raises
:class:`~pqcall.exceptions.CallError`. Before a call rings it is screened
(:mod:`pqcall.client.screening`): blocked callers, callers who rang unanswered too
often, and (if asked) strangers do not ring. The push connection reconnects by
itself; a call in progress does not depend on it.

An offline callee is still called: it rings if its phone comes back within the server's
ring timeout; a call that rang out while we were away is recorded (:meth:`Phone.on_missed`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from pqcall.client.api import ServerApi
from pqcall.client.call import Call
from pqcall.client.call_context import CallContext, PeerTrust
from pqcall.client.contacts import Contacts
from pqcall.client.event_stream import EventStream
from pqcall.client.files import FileTransfers
from pqcall.client.history import History
from pqcall.client.home import AccountConfig, Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.missed_calls import CallLog, MissedCall
from pqcall.client.offers import SEEN_OFFERS_NAME, SeenOffers
from pqcall.client.peers import SecurityWarning as SecurityWarning
from pqcall.client.peers import check_peer, key_change_message, trust_of
from pqcall.client.phone_callstate import CallState, Direction, is_terminal
from pqcall.client.registration import Registration as Registration
from pqcall.client.registration import register as register
from pqcall.client.ringlimit import RingLimiter
from pqcall.client.screening import SCREENING_NAME, CallScreen, Screening, TurnAway
from pqcall.client.server_cert import server_verify
from pqcall.crypto.handshake import CalleeHandshake
from pqcall.crypto.handshake_messages import Offer
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.keystore import AccountSecrets
from pqcall.crypto.pinning import KeyChanged
from pqcall.exceptions import (
    CallError,
    DecodeError,
    HandshakeFailed,
    KeyChangedError,
    NoAccount,
    ServerError,
)
from pqcall.signaling import usernames
from pqcall.signaling.callstate import RejectReason
from pqcall.signaling.messages import (
    EVENT_CALL_INCOMING,
    EVENT_FILE_WAITING,
    EVENT_PRESENCE,
    CallDetail,
    Event,
    FileView,
    Presence,
    RejectCall,
)

logger = logging.getLogger(__name__)

STALE_RING_S = 5.0
"""An incoming-call event older than this is checked with the server before ringing."""
MAX_RINGING_CALLS = 4
"""Incoming calls that may ring at once; another one is answered *busy*."""
MAX_SCREENED_CALL_IDS = 256
"""Call ids of calls left unanswered on purpose, remembered so a repeated event is ignored."""


class Phone:
    """A softphone for the account in ``home``.

    Args:
        home: the account's home directory.
        passphrase: opens the keystore (or pass ``account`` already unlocked).
        account: the unlocked secrets, instead of ``passphrase``.
        media: sources, sinks and ports for calls.
        auto_answer: accept every incoming call at once (one at a time: no waiting calls).
        silence_strangers: silence callers not in the contacts, whatever the home's setting.
    """

    def __init__(
        self,
        home: Home | str | Path,
        *,
        passphrase: str | None = None,
        account: AccountSecrets | None = None,
        media: MediaOptions | None = None,
        auto_answer: bool = False,
        silence_strangers: bool = False,
    ) -> None:
        if passphrase is None and account is None:
            raise CallError("a phone needs the passphrase or the unlocked account")
        self.home = home if isinstance(home, Home) else Home(Path(home))  # where it all lives
        self.media = media or MediaOptions()  # how calls carry audio
        self.auto_answer = auto_answer  # answer incoming calls at once
        self.screening = Screening(self.home.path / SCREENING_NAME)  # block list, settings
        self.ring_limiter = RingLimiter()  # callers whose calls went unanswered too often
        self.screen = CallScreen(
            self.screening, self.ring_limiter, silence_strangers=silence_strangers
        )  # which incoming calls ring
        self.contacts: Contacts = self.home.contacts()  # pinned identities
        self.history: History = self.home.history()  # finished calls
        self.call_log = CallLog(self.history)  # records calls that never rang here
        self.seen_offers = SeenOffers(self.home.path / SEEN_OFFERS_NAME)  # replays refused
        self.warnings: asyncio.Queue[SecurityWarning] = asyncio.Queue()  # for the user to see
        self._passphrase = passphrase  # opens the keystore at start
        self._account = account  # our private keys, once unlocked
        self._config: AccountConfig | None = None  # username, server
        self._api: ServerApi | None = None  # the signaling server
        self._events: EventStream | None = None  # its push events
        self._pump: asyncio.Task[None] | None = None  # reads the events
        self._calls: dict[str, Call] = {}  # calls not yet ended, by id, oldest first
        self._busy_declined: set[str] = set()  # ringing calls we declined as busy
        self._screened: OrderedDict[str, None] = OrderedDict()  # left unanswered on purpose
        self._tasks: set[asyncio.Task[None]] = set()  # declines and hang-ups under way
        self._incoming: asyncio.Queue[Call] = asyncio.Queue()  # ringing calls for the user
        self._listeners: list[Callable[[Call], None]] = []  # state-change observers
        self._file_listeners: list[Callable[[FileView], None]] = []  # file.waiting observers
        self._presence_listeners: list[Callable[[Presence], None]] = []  # presence observers
        self._missed_listeners: list[Callable[[MissedCall], None]] = []  # missed while away

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Unlock the account, log in, and start listening for events.

        Raises:
            NoAccount: no account or not registered.
            WrongPassphrase: the passphrase does not open the keystore.
            ServerError: the server is unreachable or refuses the login.
        """
        config = self.home.load_config()
        if config is None:
            raise NoAccount(
                f"no registered account in {self.home.path}; create one with: pqcall register NAME"
            )
        if self._account is None:
            assert self._passphrase is not None
            self._account = await asyncio.to_thread(self.home.unlock, self._passphrase)
        self._config = config
        self._api = ServerApi(
            config.server_url,
            config.username,
            self._account.identity,
            server_name=config.server_name,
            verify=server_verify(self.home),
        )
        await self._api.login()
        self._events = self._api.events()
        self._pump = asyncio.create_task(self._pump_events(), name="phone events")

    async def close(self) -> None:
        """Hang up any call, disconnect. Idempotent."""
        for call in list(self._calls.values()):
            if not is_terminal(call.state):
                await call.hangup()
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        if self._events is not None:
            await self._events.close()
            self._events = None
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def __aenter__(self) -> Phone:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ------------------------------------------------------------------ who we are

    @property
    def username(self) -> str:
        """Our username."""
        return self._require_config().username

    @property
    def server_url(self) -> str:
        """The signaling server."""
        return self._require_config().server_url

    @property
    def identity(self) -> IdentityPublicKey:
        """Our public identity."""
        return self._require_account().identity.public_key()

    @property
    def connected(self) -> bool:
        """Whether the push connection to the server is up."""
        return self._events is not None and self._events.connected

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until the push connection is up (incoming calls can reach us).

        Raises:
            TimeoutError: not connected within ``timeout_s``.
        """
        if self._events is None:
            raise CallError("the phone is not started")
        await self._events.wait_connected(timeout_s)

    @property
    def current_call(self) -> Call | None:
        """The call we are in (placed, connecting or active), else the longest-ringing one."""
        return self._engaged() or next(iter(self.ringing_calls), None)

    @property
    def ringing_calls(self) -> list[Call]:
        """Incoming calls ringing now (the user may answer any of them), oldest first."""
        return [call for call in self._calls.values() if _rings_here(call)]

    def safety_number(self, name: str) -> str:
        """The safety number with contact ``name`` (compare it out of band)."""
        return self.contacts.safety_number(self.username, self.identity, name)

    def on_change(self, listener: Callable[[Call], None]) -> None:
        """Call ``listener(call)`` after every state change of every call."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ calls

    async def call(self, name: str, *, media: MediaOptions | None = None) -> Call:
        """Call ``name``; returns at once, while the call is placed (watch the call's state).

        An offline callee rings if it comes back in time (``call.peer_offline``: we know it).

        Raises:
            CallError: already in a call, or ``name`` is ourselves.
            KeyChangedError: the server presents another identity than the pinned one.
            UnknownUser: no such user.
            ServerError: the server refused or is unreachable.
            DeviceError: the audio source or sink cannot be opened.
        """
        api = self._require_api()
        peer = usernames.normalize(name)
        if peer == self.username:
            raise CallError("you cannot call yourself")
        engaged = self._engaged()
        if engaged is not None:
            raise CallError(f"already in a call with {engaged.peer}")
        identity, trust = await self._peer_identity(peer)
        presence = await api.presence([peer])  # empty: not shown to us (docs/server.md#presence)
        call = Call(
            call_id=secrets.token_hex(16),
            peer=peer,
            direction=Direction.OUTGOING,
            peer_identity=identity,
            context=self._call_context(),
            media=media or self.media,
            peer_trust=trust,
        )
        call.peer_offline = bool(presence) and not any(entry.online for entry in presence)
        self._adopt(call)
        call.start_outgoing(identity)
        # placing a call stops the ringing: the ringing calls are declined as busy
        await asyncio.gather(*(self._decline_busy(ringing) for ringing in self.ringing_calls))
        return call

    async def next_incoming(self) -> Call:
        """Wait for the next incoming call (already checked; it rings until answered)."""
        return await self._incoming.get()

    def accept_new_key(self, name: str) -> None:
        """The user checked ``name``'s new key out of band and accepts it."""
        self.contacts.accept_new_key(usernames.normalize(name))

    async def lookup(self, name: str) -> IdentityPublicKey:
        """``name``'s identity from the server, checked against the pin (pinned if new).

        Raises:
            KeyChangedError: it differs from the pinned one.
        """
        identity, _ = await self._peer_identity(usernames.normalize(name))
        return identity

    # ------------------------------------------------------------------ files

    def files(self) -> FileTransfers:
        """Send, list and receive encrypted files with this phone's account and server."""
        return FileTransfers(self.home, self._require_api(), self._require_account(), self.contacts)

    def on_file(self, listener: Callable[[FileView], None]) -> None:
        """Call ``listener(view)`` when a file for us is complete on the server."""
        self._file_listeners.append(listener)

    # ------------------------------------------------------------------ presence

    async def presence(self, names: Iterable[str]) -> list[Presence]:
        """Who among ``names`` is online, and when each was last seen (unknown names left out).

        Raises:
            ServerError: the server refused or is unreachable.
        """
        return await self._require_api().presence(names)

    def on_presence(self, listener: Callable[[Presence], None]) -> None:
        """Call ``listener(presence)`` when the server says a call partner came or went."""
        self._presence_listeners.append(listener)

    def on_missed(self, listener: Callable[[MissedCall], None]) -> None:
        """Call ``listener(missed)`` for each call that rang out while this phone was away."""
        self._missed_listeners.append(listener)

    def _presence_changed(self, event: Event) -> None:
        try:
            presence = Presence.model_validate(event.payload)
        except ValueError:
            logger.info("event %s: not a valid presence payload", event.seq)
            return
        _tell(self._presence_listeners, presence, "presence")

    def _file_waiting(self, event: Event) -> None:
        try:
            view = FileView.model_validate(event.payload)
        except ValueError:
            logger.info("event %s: not a valid file.waiting payload", event.seq)
            return
        _tell(self._file_listeners, view, "file")

    # ------------------------------------------------------------------ internals

    async def _peer_identity(self, peer: str) -> tuple[IdentityPublicKey, PeerTrust]:
        try:
            checked = await check_peer(self._require_api(), self.contacts, peer)
        except KeyChangedError as exc:
            self.warnings.put_nowait(SecurityWarning(peer, str(exc)))
            raise
        return checked.identity, trust_of(checked.pin)

    def _call_context(self) -> CallContext:
        config = self._require_config()
        return CallContext(
            username=config.username,
            identity=self._require_account().identity,
            api=self._require_api(),
            server_host=httpx.URL(config.server_url).host,
            on_change=self._call_changed,
        )

    def _adopt(self, call: Call) -> None:
        self._calls[call.call_id] = call

    def _engaged(self) -> Call | None:
        """The call we are in: placed by us or answered (not one that only rings)."""
        return next((call for call in self._calls.values() if not _rings_here(call)), None)

    def _call_changed(self, call: Call) -> None:
        if is_terminal(call.state):
            self._calls.pop(call.call_id, None)
            declined = call.call_id in self._busy_declined
            self._busy_declined.discard(call.call_id)
            if call.state is not CallState.BUSY or call.direction is Direction.OUTGOING or declined:
                self._record(call)
            if call.direction is Direction.INCOMING and call.answered is None:
                if call.state in (CallState.MISSED, CallState.REJECTED):
                    self.ring_limiter.call_unanswered(call.peer, time.time())
        elif call.direction is Direction.INCOMING and call.state is CallState.CONNECTING:
            self._answered(call)
        _tell(self._listeners, call, "call")

    def _record(self, call: Call) -> None:
        record = call.summary()
        try:
            self.history.append(record)
            if call.answered is not None:
                self.contacts.touch(call.peer, call.answered)
        except Exception:  # history is a convenience: never let it break a call
            logger.exception("could not record call %s", call.call_id)

    async def _pump_events(self) -> None:
        assert self._events is not None
        async for event in self._events:
            try:
                await self._handle(event)
            except Exception:
                logger.exception("event %s (%s) could not be handled", event.seq, event.type)

    async def _handle(self, event: Event) -> None:
        if event.type == EVENT_FILE_WAITING:
            self._file_waiting(event)
            return
        if event.type == EVENT_PRESENCE:
            self._presence_changed(event)
            return
        call_id = event.payload.get("call_id")
        if not isinstance(call_id, str):
            return  # not for calls
        call = self._calls.get(call_id)
        if call is not None:
            call.deliver(event)
        elif event.type == EVENT_CALL_INCOMING:
            await self._incoming_call(event)
        elif call_id not in self._screened:
            missed = self.call_log.missed_while_away(event, self.username)
            if missed is not None:
                _tell(self._missed_listeners, missed, "missed call")

    async def _incoming_call(self, event: Event) -> None:
        api = self._require_api()
        detail = CallDetail.model_validate(event.payload)
        if detail.call_id in self._screened:
            return  # left unanswered on purpose already (the event came again)
        if time.time() - event.created > STALE_RING_S:
            try:
                current = await api.status(detail.call_id)
            except ServerError:
                return
            if str(current.state) != "ringing":
                return  # an old event replayed after a reconnect
        if await self._screen_caller(detail):
            return
        handshake = CalleeHandshake(
            call_id=bytes.fromhex(detail.call_id),
            our_name=self.username,
            our_identity=self._require_account().identity,
        )
        try:
            if detail.offer is None:
                raise HandshakeFailed("the incoming call carries no offer")
            offer = handshake.receive_offer(detail.offer, now=time.time())
            if offer.caller_name != detail.caller:
                raise HandshakeFailed(
                    f"the offer is signed as {offer.caller_name}, the server says {detail.caller}"
                )
        except HandshakeFailed as exc:
            message = f"refused a call from {detail.caller}: {exc}"
            self.warnings.put_nowait(SecurityWarning(detail.caller, message))
            reason: RejectReason = (
                "key_mismatch" if self._made_for_another_key(detail.offer) else "failed"
            )
            await self._refuse(detail.call_id, reason)
            self.call_log.record_refused(detail, CallState.FAILED, str(exc))
            return
        if not await asyncio.to_thread(
            self.seen_offers.check_and_add, detail.call_id, offer.offered_at_ms, now=time.time()
        ):
            logger.warning("refused call %s: its offer was seen before (a replay)", detail.call_id)
            await self._refuse(detail.call_id, "failed")
            return
        is_contact = self.contacts.get(detail.caller) is not None
        silenced = self.screen.for_stranger(detail.caller, is_contact=is_contact)
        if silenced is not None:
            await self._turn_away(detail, silenced)
            return
        result = self.contacts.check(detail.caller, offer.caller_identity)
        if isinstance(result, KeyChanged):
            message = "refused a call: " + key_change_message(detail.caller)
            self.warnings.put_nowait(SecurityWarning(detail.caller, message))
            await self._refuse(detail.call_id, "key_mismatch")
            self.call_log.record_refused(detail, CallState.FAILED, "caller's key changed")
            return
        call = Call(
            call_id=detail.call_id,
            peer=detail.caller,
            direction=Direction.INCOMING,
            peer_identity=offer.caller_identity,
            context=self._call_context(),
            media=self.media,
            peer_trust=trust_of(result),
        )
        self._adopt(call)
        call.start_incoming(handshake, detail)
        if self.auto_answer:
            await call.accept()
        self._incoming.put_nowait(call)

    async def _screen_caller(self, detail: CallDetail) -> bool:
        """Turn the call away if it must not ring now; True when it was."""
        turned_away = self.screen.before_offer(detail.caller, time.time())
        ringing = self.ringing_calls
        if turned_away is not None:
            await self._turn_away(detail, turned_away)
        elif self._engaged() is not None or (self.auto_answer and self._calls):
            await self._turn_away(detail, TurnAway("busy", "busy: already in a call", True))
        elif len(ringing) >= MAX_RINGING_CALLS or detail.caller in {c.peer for c in ringing}:
            await self._turn_away(detail, TurnAway("busy", "busy: too many calls ringing", True))
        else:
            return False
        return True

    async def _turn_away(self, detail: CallDetail, turned_away: TurnAway) -> None:
        """Answer busy, or leave unanswered (it rings there until the server's timeout)."""
        if turned_away.answer_busy:
            await self._refuse(detail.call_id, "busy")
        else:
            self._screened[detail.call_id] = None
            while len(self._screened) > MAX_SCREENED_CALL_IDS:
                self._screened.popitem(last=False)
        self.call_log.record_refused(detail, turned_away.result, turned_away.reason)

    def _answered(self, call: Call) -> None:
        """``call`` was answered: decline the other ringing calls; a second answer hangs up."""
        self.ring_limiter.call_answered(call.peer)
        for other in list(self._calls.values()):
            if other is call:
                continue
            if _rings_here(other):
                self._spawn(self._decline_busy(other))
            else:  # two answers at once: the first one wins
                self._spawn(call.hangup())
                return

    async def _decline_busy(self, call: Call) -> None:
        """Decline a ringing call as busy (the server's answer ends it here)."""
        self._busy_declined.add(call.call_id)
        await self._refuse(call.call_id, "busy")

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(_quietly(work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _made_for_another_key(self, offer: bytes | None) -> bool:
        """Whether an offer names another identity than ours (key substitution)."""
        try:
            parsed = Offer.parse(offer or b"")
        except DecodeError:
            return False
        return parsed.callee_fingerprint != self.identity.fingerprint()

    async def _refuse(self, call_id: str, reason: RejectReason) -> None:
        try:
            await self._require_api().reject(RejectCall(call_id=call_id, reason=reason))
        except ServerError as exc:
            logger.info("could not refuse call %s: %s", call_id, exc)

    def _require_api(self) -> ServerApi:
        if self._api is None:
            raise CallError("the phone is not started")
        return self._api

    def _require_config(self) -> AccountConfig:
        if self._config is None:
            raise CallError("the phone is not started")
        return self._config

    def _require_account(self) -> AccountSecrets:
        if self._account is None:
            raise CallError("the phone is not started")
        return self._account


def _tell(listeners: list[Callable[[Any], None]], value: object, what: str) -> None:
    """Call every listener with ``value``; a failing listener is logged, the others still run."""
    for listener in listeners:
        try:
            listener(value)
        except Exception:
            logger.exception("%s listener failed", what)


def _rings_here(call: Call) -> bool:
    """Whether ``call`` is an incoming call that rings (not answered yet)."""
    return call.direction is Direction.INCOMING and call.state is CallState.INCOMING


async def _quietly(work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` in the background; a failure is logged, never lost in a task."""
    try:
        await work
    except Exception:
        logger.exception("background call work failed")
