"""The softphone: an account, its server connection, contacts, history and calls.

::

    async with Phone(home, passphrase=...) as phone:
        call = await phone.call("bob")          # rings bob
        await call.wait_for(CallState.ACTIVE)   # read call.sas aloud
        await call.hangup()

    async with Phone(home, passphrase=...) as phone:
        call = await phone.next_incoming()      # rings here
        await call.accept()

One call at a time: a second incoming call is refused as *busy*, a second
outgoing one with :class:`~pqcall.exceptions.CallError`. The server connection
(push events) reconnects by itself; a call in progress does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from pqcall.client.api import ServerApi
from pqcall.client.call import Call, CallContext, MediaOptions, PeerTrust
from pqcall.client.contacts import Contacts
from pqcall.client.event_stream import EventStream
from pqcall.client.files import FileTransfers
from pqcall.client.history import History
from pqcall.client.home import AccountConfig, Home
from pqcall.client.offers import SEEN_OFFERS_NAME, SeenOffers
from pqcall.client.peers import check_peer, key_change_message
from pqcall.client.phone_callstate import CallState, Direction, is_terminal
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.handshake import CalleeHandshake
from pqcall.crypto.handshake_messages import Offer
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.keystore import DEFAULT_KDF_PARAMS, AccountSecrets, KdfParams
from pqcall.crypto.pinning import KeyChanged, PinCreated, PinResult
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


class SecurityWarning:
    """Something the user must see: a refused call because of a key problem."""

    def __init__(self, peer: str, message: str) -> None:
        self.peer = peer  # who it is about
        self.message = message  # one line for the user
        self.when = time.time()  # when it happened

    def __repr__(self) -> str:
        return f"SecurityWarning({self.peer!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class Registration:
    """What :func:`register` left: the account's settings and its unlocked keys."""

    config: AccountConfig
    """Name, server and the server's pinned name, as saved in the home."""
    account: AccountSecrets = field(repr=False)
    """The keys the registration unlocked or created (no second slow unlock to show them)."""


async def register(
    home: Home,
    name: str,
    server_url: str,
    passphrase: str,
    *,
    kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
) -> Registration:
    """Create the account in ``home`` if it has none, and register it as ``name``.

    Registering again with the same name and server is harmless (the server
    answers with the stored entry when the identity matches).

    Raises:
        CallError: ``home`` is already registered under another name or server.
        ServerError: the server refused (name taken, bad request) or is unreachable.
        WrongPassphrase: the existing keystore does not open with ``passphrase``.
    """
    username = usernames.normalize(name)
    config = home.load_config()
    if config is not None and (config.username, config.server_url) != (username, server_url):
        raise CallError(
            f"{home.path} is already registered as {config.username} at {config.server_url};"
            " use another --home for another account"
        )
    if home.has_account():
        account = await asyncio.to_thread(home.unlock, passphrase)
    else:
        account = await asyncio.to_thread(home.create_account, passphrase, kdf_params=kdf_params)
    bundle = KeyBundle.create(
        account.identity, username, account.file_key.public_key(), int(time.time())
    ).encode()
    pinned = config.server_name if config is not None else None
    async with ServerApi(server_url, username, account.identity, server_name=pinned) as api:
        await api.register(bundle)
        server_name = api.server_name
    assert server_name is not None
    config = AccountConfig(
        username=username, server_url=server_url, server_name=server_name, created=int(time.time())
    )
    home.save_config(config)
    return Registration(config, account)


class Phone:
    """A softphone for the account in ``home``.

    Args:
        home: the account's home directory.
        passphrase: opens the keystore (or pass ``account`` already unlocked).
        account: the unlocked secrets, instead of ``passphrase``.
        media: sources, sinks and ports for calls.
        auto_answer: accept every incoming call at once.
    """

    def __init__(
        self,
        home: Home | str | Path,
        *,
        passphrase: str | None = None,
        account: AccountSecrets | None = None,
        media: MediaOptions | None = None,
        auto_answer: bool = False,
    ) -> None:
        if passphrase is None and account is None:
            raise CallError("a phone needs the passphrase or the unlocked account")
        self.home = home if isinstance(home, Home) else Home(Path(home))  # where it all lives
        self.media = media or MediaOptions()  # how calls carry audio
        self.auto_answer = auto_answer  # answer incoming calls at once
        self.contacts: Contacts = self.home.contacts()  # pinned identities
        self.history: History = self.home.history()  # finished calls
        self.seen_offers = SeenOffers(self.home.path / SEEN_OFFERS_NAME)  # replays refused
        self.warnings: asyncio.Queue[SecurityWarning] = asyncio.Queue()  # for the user to see
        self._passphrase = passphrase  # opens the keystore at start
        self._account = account  # our private keys, once unlocked
        self._config: AccountConfig | None = None  # username, server
        self._api: ServerApi | None = None  # the signaling server
        self._events: EventStream | None = None  # its push events
        self._pump: asyncio.Task[None] | None = None  # reads the events
        self._calls: dict[str, Call] = {}  # calls not yet ended, by id
        self._current: Call | None = None  # the one call we are in
        self._incoming: asyncio.Queue[Call] = asyncio.Queue()  # ringing calls for the user
        self._listeners: list[Callable[[Call], None]] = []  # state-change observers
        self._file_listeners: list[Callable[[FileView], None]] = []  # file.waiting observers
        self._presence_listeners: list[Callable[[Presence], None]] = []  # presence observers

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
        """The call we are in (ringing, connecting or active), if any."""
        return self._current

    def safety_number(self, name: str) -> str:
        """The safety number with contact ``name`` (compare it out of band)."""
        return self.contacts.safety_number(self.username, self.identity, name)

    def on_change(self, listener: Callable[[Call], None]) -> None:
        """Call ``listener(call)`` after every state change of every call."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ calls

    async def call(self, name: str, *, media: MediaOptions | None = None) -> Call:
        """Call ``name``; returns once the peer's phone rings (watch the call's state).

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
        if self._current is not None:
            raise CallError(f"already in a call with {self._current.peer}")
        identity, trust = await self._peer_identity(peer)
        presence = await api.presence([peer])
        if not any(entry.online for entry in presence):
            raise CallError(f"{peer} is offline: their phone is not connected to the server")
        call = Call(
            call_id=secrets.token_hex(16),
            peer=peer,
            direction=Direction.OUTGOING,
            peer_identity=identity,
            context=self._call_context(),
            media=media or self.media,
            peer_trust=trust,
        )
        self._adopt(call)
        call.start_outgoing(identity)
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

    def _presence_changed(self, event: Event) -> None:
        try:
            presence = Presence.model_validate(event.payload)
        except ValueError:
            logger.info("event %s: not a valid presence payload", event.seq)
            return
        for listener in self._presence_listeners:
            try:
                listener(presence)
            except Exception:
                logger.exception("presence listener failed")

    def _file_waiting(self, event: Event) -> None:
        try:
            view = FileView.model_validate(event.payload)
        except ValueError:
            logger.info("event %s: not a valid file.waiting payload", event.seq)
            return
        for listener in self._file_listeners:
            try:
                listener(view)
            except Exception:
                logger.exception("file listener failed")

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
        self._current = call

    def _call_changed(self, call: Call) -> None:
        if is_terminal(call.state):
            self._calls.pop(call.call_id, None)
            if self._current is call:
                self._current = None
            if call.state is not CallState.BUSY or call.direction is Direction.OUTGOING:
                self._record(call)
        for listener in self._listeners:
            try:
                listener(call)
            except Exception:
                logger.exception("call listener failed")

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

    async def _incoming_call(self, event: Event) -> None:
        api = self._require_api()
        detail = CallDetail.model_validate(event.payload)
        if time.time() - event.created > STALE_RING_S:
            try:
                current = await api.status(detail.call_id)
            except ServerError:
                return
            if str(current.state) != "ringing":
                return  # an old event replayed after a reconnect
        if self._current is not None:
            await self._refuse(detail.call_id, "busy")
            self._record_refused(detail, CallState.BUSY, "busy: already in a call")
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
            self._record_refused(detail, CallState.FAILED, str(exc))
            return
        if not await asyncio.to_thread(
            self.seen_offers.check_and_add, detail.call_id, offer.offered_at_ms, now=time.time()
        ):
            logger.warning("refused call %s: its offer was seen before (a replay)", detail.call_id)
            await self._refuse(detail.call_id, "failed")
            return
        result = self.contacts.check(detail.caller, offer.caller_identity)
        if isinstance(result, KeyChanged):
            message = "refused a call: " + key_change_message(detail.caller)
            self.warnings.put_nowait(SecurityWarning(detail.caller, message))
            await self._refuse(detail.call_id, "key_mismatch")
            self._record_refused(detail, CallState.FAILED, "caller's key changed")
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

    def _record_refused(self, detail: CallDetail, state: CallState, reason: str) -> None:
        record: dict[str, Any] = {
            "call_id": detail.call_id,
            "peer": detail.caller,
            "direction": str(Direction.INCOMING),
            "result": str(state),
            "reason": reason,
            "started_unix": detail.created,
            "ended_unix": time.time(),
            "duration_s": 0.0,
        }
        try:
            self.history.append(record)
        except Exception:
            logger.exception("could not record call %s", detail.call_id)

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


def trust_of(result: PinResult) -> PeerTrust:
    """How far a pin check lets us trust the peer (a key change never gets this far)."""
    if isinstance(result, PinCreated):
        return PeerTrust.NEW
    return PeerTrust.VERIFIED if result.pin.verified else PeerTrust.PINNED
