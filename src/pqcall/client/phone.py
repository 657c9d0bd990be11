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

from pqcall.client.account_devices import sync_device_list
from pqcall.client.api import ServerApi
from pqcall.client.call import Call
from pqcall.client.call_context import CallContext, PeerTrust, stun_server_of
from pqcall.client.contacts import Contacts
from pqcall.client.event_stream import EventStream
from pqcall.client.files import FileTransfers
from pqcall.client.group_call import GroupCall, GroupContext, new_call_id
from pqcall.client.history import History
from pqcall.client.home import AccountConfig, Home
from pqcall.client.incoming import group_invite, incoming_call, record_group_call
from pqcall.client.media_options import MediaOptions
from pqcall.client.missed_calls import CallLog, MissedCall
from pqcall.client.offers import SEEN_OFFERS_NAME, SeenOffers
from pqcall.client.peers import SecurityWarning as SecurityWarning
from pqcall.client.peers import check_peer, trust_of
from pqcall.client.phone_callstate import CallState, Direction, is_terminal
from pqcall.client.registration import Registration as Registration
from pqcall.client.registration import register as register
from pqcall.client.ringlimit import RingLimiter
from pqcall.client.screening import SCREENING_NAME, CallScreen, Screening
from pqcall.client.server_cert import server_verify
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import (
    CallError,
    KeyChangedError,
    NoAccount,
    ServerError,
)
from pqcall.signaling import usernames
from pqcall.signaling.callstate import RejectReason
from pqcall.signaling.group_messages import (
    EVENT_GROUP_INVITE,
    EVENT_GROUP_ROSTER,
    GROUP_EVENTS,
    GroupView,
)
from pqcall.signaling.messages import (
    EVENT_CALL_INCOMING,
    EVENT_FILE_WAITING,
    EVENT_PRESENCE,
    Event,
    FileView,
    Presence,
    RejectCall,
)

logger = logging.getLogger(__name__)


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
        self._groups: dict[str, GroupCall] = {}  # group calls not yet ended, by id
        self._group_invites: asyncio.Queue[GroupCall] = asyncio.Queue()  # for the user

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
            device_key=self._account.device_key,
        )
        await self._api.login()
        await sync_device_list(self._api, self.home, self._account, config.username)
        self._events = self._api.events()
        self._pump = asyncio.create_task(self._pump_events(), name="phone events")

    async def close(self) -> None:
        """Hang up any call, leave any group call, disconnect. Idempotent."""
        for group in list(self._groups.values()):
            await group.leave()
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
        identity, trust, devices = await self._peer_identity(peer)
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
        call.start_outgoing(identity, devices)
        # placing a call stops the ringing: the ringing calls are declined as busy
        await asyncio.gather(*(self._decline_busy(ringing) for ringing in self.ringing_calls))
        return call

    async def group_call(
        self, names: Iterable[str], *, media: MediaOptions | None = None
    ) -> GroupCall:
        """Start a group call with everyone in ``names`` invited; returns once we are joined.

        Raises:
            CallError: already in a call, or we are among ``names``.
            KeyChangedError: someone's pinned key differs from the server's.
            UnknownUser, ServerError: as for :meth:`call`.
        """
        peers = list(dict.fromkeys(usernames.normalize(name) for name in names))
        if self.username in peers:
            raise CallError("you cannot call yourself")
        if self._engaged() is not None or self.group_engaged():
            raise CallError("already in a call")
        view = GroupView(
            call_id=new_call_id(), creator=self.username, version=0, created=time.time(), members=[]
        )
        call = GroupCall(self._group_context(media), view, incoming=False)
        self._groups[call.call_id] = call
        try:
            await call.create(peers)
        except Exception:
            self._groups.pop(call.call_id, None)
            raise
        self._spawn(record_group_call(self, call, ", ".join(peers)))  # history, when it ends
        await asyncio.gather(*(self._decline_busy(ringing) for ringing in self.ringing_calls))
        return call

    async def next_group_invite(self) -> GroupCall:
        """Wait for the next group call we are invited to (joined already with auto_answer)."""
        return await self._group_invites.get()

    def group_engaged(self) -> bool:
        """Whether we are in a group call (joined or joining)."""
        self._groups = {k: g for k, g in self._groups.items() if not g.is_ended}
        return any(g.state in ("joining", "active") for g in self._groups.values())

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
        identity, _, _ = await self._peer_identity(usernames.normalize(name))
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

    async def _peer_identity(
        self, peer: str
    ) -> tuple[IdentityPublicKey, PeerTrust, tuple[IdentityPublicKey, ...]]:
        try:
            checked = await check_peer(self._require_api(), self.contacts, peer)
        except KeyChangedError as exc:
            self.warnings.put_nowait(SecurityWarning(peer, str(exc)))
            raise
        return checked.identity, trust_of(checked.pin), checked.device_keys

    def _call_context(self) -> CallContext:
        config = self._require_config()
        return CallContext(
            username=config.username,
            identity=self._require_account().identity,
            api=self._require_api(),
            server_host=httpx.URL(config.server_url).host,
            on_change=self._call_changed,
            device_key=self._require_account().device_key,
            stun_server=stun_server_of(config.server_url),
        )

    def _group_context(self, media: MediaOptions | None = None) -> GroupContext:
        config = self._require_config()
        return GroupContext(
            username=config.username,
            identity=self._require_account().identity,
            api=self._require_api(),
            contacts=self.contacts,
            server_host=httpx.URL(config.server_url).host,
            media=media or self.media,
            warn=lambda peer, message: self.warnings.put_nowait(SecurityWarning(peer, message)),
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
        if event.type in GROUP_EVENTS:
            group = self._groups.get(call_id)
            if group is not None and not group.is_ended:  # ended: invited again rings anew
                group.deliver(event)
            elif event.type in (EVENT_GROUP_INVITE, EVENT_GROUP_ROSTER):
                await group_invite(self, event)  # a roster: we may be "gone" and come back
            return
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
        await incoming_call(self, event)

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
