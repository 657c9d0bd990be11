"""The softphone behind the browser UI: one account, its phone, the call, files.

:class:`Controller` owns the :class:`~pqcall.client.home.Home` and, once the
user unlocked it, the :class:`~pqcall.client.phone.Phone`. It performs what
the page asks (plain async methods, no web framework: :mod:`pqcall.ui.app`
maps them to routes) and builds the page's whole view as one JSON-ready
:meth:`Controller.state`. Whoever shows it subscribes
(:meth:`Controller.subscribe`) and is woken on every change: a call moving,
a security warning, a file waiting, transfer progress, presence, and once a
second during a call (fresh statistics).

Refusals the user should read are :class:`UiError`: an HTTP-like status and
one sentence. The passphrase is never stored or logged; it unlocks the
keystore and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pqcall.client.call import Call, MediaOptions
from pqcall.client.contacts import Contact
from pqcall.client.home import Home
from pqcall.client.phone import Phone, SecurityWarning, register
from pqcall.client.phone_callstate import CallState, Direction, is_terminal
from pqcall.client.privatefile import LOCK_NAME, FileLock, read_bounded, write_atomic
from pqcall.crypto.keystore import DEFAULT_KDF_PARAMS, AccountSecrets, KdfParams
from pqcall.exceptions import (
    ApiError,
    CallError,
    DeviceError,
    FileCryptoError,
    KeyChangedError,
    KeystoreError,
    LocalProtocolError,
    PqcallError,
    ServerError,
    TransferError,
    UnknownUser,
    WrongPassphrase,
)
from pqcall.signaling import usernames
from pqcall.signaling.messages import FileView, Presence

logger = logging.getLogger(__name__)

TICK_S = 1.0
"""How often subscribers get fresh state during a call (statistics, timer)."""
PRESENCE_INTERVAL_S = 5.0
"""How often the contacts' presence is asked of the server (call partners' changes are
also pushed by the server, and shown at once)."""
HISTORY_LIMIT = 50
"""Calls listed in the state."""
MAX_WARNINGS = 20
"""Security warnings kept (the newest)."""
UI_FILE_NAME = "ui.json"
"""The UI's own notes in the home: suspicious contacts, when missed calls were last seen."""
UI_FILE_FORMAT = "pqcall ui"
UI_FILE_VERSION = 1
MAX_UI_FILE_BYTES = 1024 * 1024
UPLOADS_NAME = "ui-uploads"
"""Folder in the home where browser uploads wait (plaintext) until they are encrypted."""
STATS_KEYS = (
    "rtt_ms",
    "loss_percent",
    "jitter_ms",
    "jitter_buffer_ms",
    "tx_kbps",
    "rx_kbps",
    "mos",
    "audio_level_dbfs",
    "input_level_dbfs",
    "packets_received",
    "packets_lost",
)
"""The statistics the page shows, from :class:`~pqcall.media.stats.CallStatsSnapshot`."""


class UiError(PqcallError):
    """A request the controller refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status  # 4xx or 502
        self.extra = extra  # more keys for the JSON error body (``key_changed``)

    def to_json(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": message, **extra}``."""
        return {"error": str(self), **self.extra}


@dataclass(slots=True)
class Transfer:
    """A file being sent or received, as the page shows its progress."""

    id: str
    """Ours (a send has no server file id until it is created)."""
    direction: str
    """``send`` or ``receive``."""
    name: str
    """The file name (sent) or the file id (received, until the name is known)."""
    done: int = 0
    """Bytes of the current phase done."""
    total: int = 0
    """Bytes of the current phase."""
    state: str = "starting"
    """``encrypting``, ``uploading``, ``downloading``, ``decrypting``, ``done`` or ``failed``."""
    error: str | None = None
    """Why it failed."""
    file_id: str | None = None
    """The server's id of the file, once known."""

    def to_json(self) -> dict[str, Any]:
        """The entry of ``State.transfers``."""
        return {
            "id": self.id,
            "direction": self.direction,
            "name": self.name,
            "done": self.done,
            "total": self.total,
            "state": self.state,
            "error": self.error,
            "file_id": self.file_id,
        }


class Subscription:
    """Wakes one subscriber when the state changed (changes coalesce while it is busy)."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller  # whose changes
        self._dirty = asyncio.Event()  # something changed since the last wait

    def changed(self) -> None:
        """Note a change (the controller calls it)."""
        self._dirty.set()

    async def wait(self) -> None:
        """Return once something changed since the last return."""
        await self._dirty.wait()
        self._dirty.clear()

    def close(self) -> None:
        """Stop being woken."""
        self._controller._subscriptions.discard(self)


class Controller:
    """The softphone state behind the UI, for the account in ``home``.

    Args:
        home: the account's home directory.
        media: audio source and sink (and ports) for calls; the page may change the devices.
        kdf_params: the keystore's KDF cost for a new account (tests use a cheap one).
        list_devices: lists the sound devices (PortAudio's by default).
        find_servers: looks for servers on the LAN when the user gives no server URL.
    """

    def __init__(
        self,
        home: Home,
        *,
        media: MediaOptions | None = None,
        kdf_params: KdfParams = DEFAULT_KDF_PARAMS,
        list_devices: Callable[[], tuple[list[str], list[str]]] | None = None,
        find_servers: Callable[[], Any] | None = None,
    ) -> None:
        self.home = home  # the account's directory
        self.media = media or MediaOptions()  # for the next call; set_devices changes it
        self._kdf_params = kdf_params  # for a new keystore
        self._list_devices = list_devices or sound_devices  # inputs and outputs
        self._find_servers = find_servers  # mDNS discovery (None: the real one)
        self._phone: Phone | None = None  # once unlocked
        self._account: AccountSecrets | None = None  # once unlocked
        self._unlocking = asyncio.Lock()  # one unlock or registration at a time
        self._subscriptions: set[Subscription] = set()  # who to wake on a change
        self._tasks: set[asyncio.Task[Any]] = set()  # background work, cancelled at close
        self._inputs: list[str] = []  # capture device names
        self._outputs: list[str] = []  # playback device names
        self._warnings: list[SecurityWarning] = []  # newest last
        self._presence: dict[str, tuple[bool, float | None]] = {}  # name: (online, last seen)
        self._state_version = 0  # counts notify(); a page keeps the newest state it got
        self._inbox: list[FileView] = []  # files waiting for us
        self._transfers: dict[str, Transfer] = {}  # by our id, oldest first
        self._downloads: dict[str, tuple[Path, str]] = {}  # received, not yet downloaded
        self._sas_confirmed: set[str] = set()  # call ids whose SAS the user confirmed
        self._muted = False  # what the user wants for the current call
        self._last_call: dict[str, Any] | None = None  # the last finished call
        self._was_connected = False  # for noticing the push connection change
        self._loop: asyncio.AbstractEventLoop | None = None  # for thread-safe notifications

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """List the sound devices and start the ticker (no network yet)."""
        self._loop = asyncio.get_running_loop()
        self._inputs, self._outputs = await asyncio.to_thread(self._list_devices)
        self._spawn(self._tick(), "ui ticker")

    async def close(self) -> None:
        """Hang up, disconnect, stop background work. Idempotent."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._phone is not None:
            await self._phone.close()
            self._phone = None
        self._account = None

    @property
    def phone(self) -> Phone | None:
        """The phone, once unlocked."""
        return self._phone

    # ------------------------------------------------------------------ subscribers

    def subscribe(self) -> Subscription:
        """Be woken on every change (call :meth:`Subscription.close` when done)."""
        subscription = Subscription(self)
        self._subscriptions.add(subscription)
        return subscription

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[Subscription]:
        """:meth:`subscribe` for the length of a block."""
        subscription = self.subscribe()
        try:
            yield subscription
        finally:
            subscription.close()

    def notify(self) -> None:
        """Wake every subscriber (the state changed): the state's ``version`` goes up."""
        self._state_version += 1
        for subscription in list(self._subscriptions):
            subscription.changed()

    def _notify_threadsafe(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.notify)

    # ------------------------------------------------------------------ state

    def phase(self) -> str:
        """``setup`` (no registered account), ``locked`` or ``ready``."""
        if self._phone is not None:
            return "ready"
        return "locked" if self.home.load_config() is not None else "setup"

    def state(self) -> dict[str, Any]:
        """Everything the page shows, as one JSON-ready dict (see ``docs/cli.md#ui``)."""
        phone = self._phone
        account = None
        if phone is not None:
            account = {
                "username": phone.username,
                "server_url": phone.server_url,
                "fingerprint": phone.identity.fingerprint_text(),
            }
        current = phone.current_call if phone is not None else None
        state: dict[str, Any] = _finite(
            {
                "version": self._state_version,
                "phase": self.phase(),
                "account": account,
                "connected": phone is not None and phone.connected,
                "contacts": self._contacts_state(),
                "call": None if current is None else self._call_state(current),
                "last_call": self._last_call,
                "history": self._history(),
                "missed_unseen": self._missed_unseen(),
                "warnings": [
                    {"peer": w.peer, "message": w.message, "when": w.when}
                    for w in reversed(self._warnings)
                ],
                "devices": {
                    "inputs": list(self._inputs),
                    "outputs": list(self._outputs),
                    "audio_in": self.media.audio_in,
                    "audio_out": self.media.audio_out,
                },
                "inbox": [
                    {
                        "file_id": view.file_id,
                        "sender": view.sender,
                        "size": view.size,
                        "created": view.created,
                    }
                    for view in self._inbox
                ],
                "transfers": [transfer.to_json() for transfer in self._transfers.values()],
            }
        )
        return state

    def _contacts_state(self) -> list[dict[str, Any]]:
        if self._phone is None:
            return []
        suspicious = self._notes().get("suspicious", [])
        entries = []
        for contact in self._phone.contacts.list():
            online, last_seen = self._presence.get(contact.name, (False, None))
            entries.append(
                {
                    "name": contact.name,
                    "fingerprint": contact.fingerprint,
                    "verified": contact.verified,
                    "online": online,
                    "last_seen": last_seen,
                    "key_changed": contact.key_changed is not None,
                    "suspicious": contact.name in suspicious,
                    "last_call": contact.last_call,
                }
            )
        return entries

    def _call_state(self, call: Call) -> dict[str, Any]:
        snapshot = call.stats()
        stats = None
        if snapshot is not None:
            values = snapshot.as_dict()
            stats = {key: values.get(key) for key in STATS_KEYS}
        return {
            "call_id": call.call_id,
            "peer": call.peer,
            "direction": str(call.direction),
            "state": str(call.state),
            "reason": call.reason,
            "sas": call.sas,
            "sas_confirmed": call.call_id in self._sas_confirmed,
            "path": call.path.kind if call.path is not None else None,
            "muted": self._muted,
            "peer_trust": str(call.peer_trust),
            "started": call.created,
            "answered": call.answered,
            "stats": stats,
        }

    def _history(self) -> list[dict[str, Any]]:
        if self._phone is None:
            return []
        try:
            return self._phone.history.list(HISTORY_LIMIT)
        except KeystoreError as exc:
            logger.warning("cannot read the call history: %s", exc)
            return []

    def _missed_unseen(self) -> int:
        seen = float(self._notes().get("missed_seen", 0.0))
        return sum(
            1
            for record in self._history()
            if record.get("direction") == str(Direction.INCOMING)
            and record.get("result") == str(CallState.MISSED)
            and float(record.get("ended_unix") or 0.0) > seen
        )

    # ------------------------------------------------------------------ account

    async def unlock(self, passphrase: str) -> None:
        """Open the keystore and start the phone.

        Raises:
            UiError: 401 wrong passphrase, 409 no account yet, 502 server unreachable.
        """
        async with self._unlocking:
            if self._phone is not None:
                return
            config = self.home.load_config()
            if config is None:
                raise UiError(409, "there is no account here yet: register first")
            try:
                account = await asyncio.to_thread(self.home.unlock, passphrase)
            except WrongPassphrase:
                raise UiError(401, "wrong passphrase") from None
            await self._start_phone(account)

    async def register(self, name: str, server_url: str, passphrase: str) -> None:
        """Create the identity if there is none, register ``name``, unlock, start the phone.

        ``server_url`` "" looks for the one server on the LAN.

        Raises:
            UiError: 400 bad name or URL, 401 wrong passphrase (existing identity),
                409 name taken or another account here, 502 server unreachable.
        """
        async with self._unlocking:
            if self._phone is not None:
                raise UiError(409, f"already registered and unlocked as {self._phone.username}")
            if not passphrase:
                raise UiError(400, "the passphrase must not be empty")
            try:
                username = usernames.normalize(name)
            except usernames.InvalidUsername as exc:
                raise UiError(400, str(exc)) from None
            url = _server_url(server_url) if server_url.strip() else await self._discover()
            try:
                await register(self.home, username, url, passphrase, kdf_params=self._kdf_params)
                account = await asyncio.to_thread(self.home.unlock, passphrase)
            except WrongPassphrase:
                raise UiError(401, "wrong passphrase") from None
            except CallError as exc:
                raise UiError(409, str(exc)) from None
            except ApiError as exc:
                if exc.status == 409:
                    raise UiError(409, f"the name {username} is taken: {exc}") from None
                raise UiError(400 if exc.status < 500 else 502, str(exc)) from None
            except ServerError as exc:
                raise UiError(502, str(exc)) from None
            await self._start_phone(account)

    async def _discover(self) -> str:
        if self._find_servers is not None:
            found = await self._find_servers()
        else:
            from pqcall.server.discovery import DiscoveryUnavailable, find_servers

            try:
                found = await find_servers()
            except DiscoveryUnavailable as exc:
                raise UiError(502, f"cannot look for a server on the LAN ({exc})") from None
        if not found:
            raise UiError(502, "no pqcall server found on the LAN; enter its address")
        if len(found) > 1:
            names = ", ".join(f"{server.name} ({server.url})" for server in found)
            raise UiError(409, f"several servers found on the LAN: {names}; enter one")
        return str(found[0].url)

    async def _start_phone(self, account: AccountSecrets) -> None:
        phone = Phone(self.home, account=account, media=self.media)
        try:
            await phone.start()
        except ServerError as exc:
            await phone.close()
            raise UiError(502, str(exc)) from None
        self._phone = phone
        self._account = account
        phone.on_change(self._call_changed)
        phone.on_file(self._file_waiting)
        phone.on_presence(self._presence_pushed)
        self._spawn(self._incoming_calls(phone), "ui incoming calls")
        self._spawn(self._security_warnings(phone), "ui warnings")
        self._spawn(self._poll_presence(), "ui presence")
        self._spawn(self._refresh_inbox(), "ui inbox")
        self.notify()

    # ------------------------------------------------------------------ calls

    async def call(self, name: str) -> None:
        """Call ``name`` (returns once it rings there).

        Raises:
            UiError: 404 unknown user, 409 offline / in a call / key changed
                (``key_changed``), 400 bad device, 502 server.
        """
        phone = self._require_phone()
        try:
            peer = usernames.normalize(name)
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        self._forget_last_call()
        try:
            await phone.call(peer, media=self.media)
        except KeyChangedError as exc:
            self._drain_warnings(phone)
            raise UiError(409, str(exc), key_changed=True) from None
        except UnknownUser as exc:
            raise UiError(404, str(exc)) from None
        except CallError as exc:
            raise UiError(409, str(exc)) from None
        except DeviceError as exc:
            raise UiError(400, str(exc)) from None
        except ServerError as exc:
            raise UiError(502, str(exc)) from None
        finally:
            self.notify()

    async def accept(self) -> None:
        """Answer the ringing incoming call.

        Raises:
            UiError: 409 no incoming call rings.
        """
        call = self._require_call()
        try:
            await call.accept()
        except CallError as exc:
            raise UiError(409, str(exc)) from None
        self.notify()

    async def reject(self) -> None:
        """Decline the ringing incoming call.

        Raises:
            UiError: 409 no incoming call rings.
        """
        call = self._require_call()
        try:
            await call.reject()
        except CallError as exc:
            raise UiError(409, str(exc)) from None

    async def hangup(self) -> None:
        """End the call (or cancel it while it rings).

        Raises:
            UiError: 409 not in a call.
        """
        await self._require_call().hangup()

    async def set_muted(self, muted: bool) -> None:
        """Send silence instead of our audio (kept until the call ends).

        Raises:
            UiError: 409 not in a call.
        """
        call = self._require_call()
        self._muted = muted
        call.set_muted(muted)
        self.notify()

    async def confirm_sas(self, matches: bool) -> None:
        """The user compared the SAS with the peer.

        A match marks the contact verified; a mismatch marks it suspicious and
        hangs up (someone may be in the middle).

        Raises:
            UiError: 409 not in a call, or the call has no SAS yet.
        """
        phone = self._require_phone()
        call = self._require_call()
        if call.sas is None:
            raise UiError(409, "the call has no SAS yet")
        if matches:
            self._sas_confirmed.add(call.call_id)
            try:
                phone.contacts.mark_verified(call.peer)
            except LocalProtocolError as exc:
                raise UiError(409, str(exc)) from None
            self._set_suspicious(call.peer, False)
            self.notify()
            return
        self._set_suspicious(call.peer, True)
        self._warn(
            phone,
            SecurityWarning(
                call.peer,
                f"the SAS did not match: the call with {call.peer} was ended; someone may"
                f" be in the middle. Compare the safety number with {call.peer} in person.",
            ),
        )
        await call.hangup()

    def _require_call(self) -> Call:
        call = self._require_phone().current_call
        if call is None:
            raise UiError(409, "not in a call")
        return call

    def _call_changed(self, call: Call) -> None:
        if not is_terminal(call.state):
            # a peer that is calling or talking is online, whatever the last poll said
            self._presence[call.peer] = (True, time.time())
        if call.state is CallState.ACTIVE and self._muted:
            call.set_muted(True)
        if is_terminal(call.state):
            self._last_call = _finite(call.summary())
            self._sas_confirmed.discard(call.call_id)
            self._muted = False
        self.notify()

    def _forget_last_call(self) -> None:
        self._last_call = None
        self._muted = False

    async def _incoming_calls(self, phone: Phone) -> None:
        while True:
            await phone.next_incoming()
            self._forget_last_call()
            self.notify()

    # ------------------------------------------------------------------ history

    def mark_missed_seen(self) -> None:
        """The user saw the missed calls: ``missed_unseen`` counts from now."""
        self._update_notes(lambda notes: {**notes, "missed_seen": time.time()})
        self.notify()

    # ------------------------------------------------------------------ contacts and safety

    async def add_contact(self, name: str) -> None:
        """Look ``name`` up on the server and pin their identity.

        Raises:
            UiError: 404 unknown user, 409 key changed (``key_changed``), 502 server.
        """
        phone = self._require_phone()
        try:
            peer = usernames.normalize(name)
            if peer == phone.username:
                raise UiError(400, "you cannot add yourself")
            await phone.lookup(peer)
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        except KeyChangedError as exc:
            self._drain_warnings(phone)
            raise UiError(409, str(exc), key_changed=True) from None
        except UnknownUser as exc:
            raise UiError(404, str(exc)) from None
        except CallError as exc:
            raise UiError(409, str(exc)) from None
        except ServerError as exc:
            raise UiError(502, str(exc)) from None
        self._spawn(self._refresh_presence(), "ui presence now")
        self.notify()

    def safety_number(self, name: str) -> dict[str, Any]:
        """``{"safety_number", "changed_safety_number"}`` with contact ``name``.

        ``changed_safety_number`` is the one with the refused new key (compare it
        before accepting the key change), else None.

        Raises:
            UiError: 404 no such contact.
        """
        phone = self._require_phone()
        contact = self._require_contact(name)
        changed = None
        if contact.key_changed is not None:
            changed = phone.contacts.safety_number(
                phone.username, phone.identity, contact.name, changed_key=True
            )
        return {
            "name": contact.name,
            "safety_number": phone.safety_number(contact.name),
            "changed_safety_number": changed,
        }

    async def verify_contact(self, name: str) -> None:
        """The user compared the safety number with ``name`` out of band.

        Raises:
            UiError: 404 no such contact, 409 their key changed (accept it first).
        """
        phone = self._require_phone()
        contact = self._require_contact(name)
        if contact.key_changed is not None:
            raise UiError(
                409, f"{contact.name}'s key changed: compare and accept the new key first"
            )
        phone.contacts.mark_verified(contact.name)
        self._set_suspicious(contact.name, False)
        self.notify()

    async def accept_key(self, name: str) -> None:
        """Pin ``name``'s recorded new key (the user compared it out of band).

        Raises:
            UiError: 404 no such contact, 409 no key change recorded.
        """
        phone = self._require_phone()
        contact = self._require_contact(name)
        try:
            phone.accept_new_key(contact.name)
        except LocalProtocolError as exc:
            raise UiError(409, str(exc)) from None
        self._warnings = [w for w in self._warnings if w.peer != contact.name]
        self.notify()

    def dismiss_warnings(self) -> None:
        """Clear the security warnings (the user read them)."""
        self._warnings.clear()
        self.notify()

    def _require_contact(self, name: str) -> Contact:
        phone = self._require_phone()
        try:
            contact = phone.contacts.get(name)
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        if contact is None:
            raise UiError(404, f"no contact named {name}")
        return contact

    def _set_suspicious(self, name: str, suspicious: bool) -> None:
        def change(notes: dict[str, Any]) -> dict[str, Any]:
            names = set(notes.get("suspicious", []))
            if suspicious:
                names.add(name)
            else:
                names.discard(name)
            return {**notes, "suspicious": sorted(names)}

        self._update_notes(change)

    async def _security_warnings(self, phone: Phone) -> None:
        while True:
            self._warn(phone, await phone.warnings.get())

    def _drain_warnings(self, phone: Phone) -> None:
        while not phone.warnings.empty():
            self._warn(phone, phone.warnings.get_nowait())

    def _warn(self, phone: Phone, warning: SecurityWarning) -> None:
        self._warnings.append(warning)
        del self._warnings[:-MAX_WARNINGS]
        self.notify()

    async def _poll_presence(self) -> None:
        while True:
            await self._refresh_presence()
            await asyncio.sleep(PRESENCE_INTERVAL_S)

    async def _refresh_presence(self) -> None:
        if self._phone is None:
            return
        names = [contact.name for contact in self._phone.contacts.list()][:100]
        try:
            entries = await self._phone.presence(names)
        except ServerError as exc:
            logger.info("presence: %s", exc)
            return
        presence = {entry.username: (entry.online, entry.last_seen) for entry in entries}
        if presence != self._presence:
            self._presence = presence
            self.notify()

    def _presence_pushed(self, presence: Presence) -> None:
        entry = (presence.online, presence.last_seen)
        if self._presence.get(presence.username) != entry:
            self._presence[presence.username] = entry
            self.notify()

    # ------------------------------------------------------------------ devices

    async def set_devices(self, audio_in: str | None, audio_out: str | None) -> None:
        """Use these devices now, in the current call too, and for the next calls (None: keep).

        Raises:
            UiError: 400 a device cannot be opened (nothing changes).
        """
        audio_in = None if audio_in == self.media.audio_in else audio_in
        audio_out = None if audio_out == self.media.audio_out else audio_out
        call = self._phone.current_call if self._phone is not None else None
        try:
            if call is not None:
                await call.set_audio(audio_in, audio_out)
            elif audio_in is not None:
                from pqcall.media.audio import open_source

                source = await asyncio.to_thread(open_source, audio_in)
                source.close()
        except DeviceError as exc:
            raise UiError(400, str(exc)) from None
        self.media = replace(
            self.media,
            audio_in=self.media.audio_in if audio_in is None else audio_in,
            audio_out=self.media.audio_out if audio_out is None else audio_out,
        )
        if self._phone is not None:
            self._phone.media = self.media
        self.notify()

    # ------------------------------------------------------------------ files

    async def send_file(self, to: str, path: Path, *, cleanup: Path | None = None) -> str:
        """Start sending ``path`` to ``to`` in the background; returns the transfer's id.

        Progress and the outcome show in ``State.transfers``. ``cleanup`` (a
        folder holding ``path``) is removed when the transfer ends.

        Raises:
            UiError: 400 bad name.
        """
        phone = self._require_phone()
        try:
            recipient = usernames.normalize(to)
        except usernames.InvalidUsername as exc:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
            raise UiError(400, str(exc)) from None
        transfer = Transfer(id=secrets.token_hex(8), direction="send", name=path.name)
        self._transfers[transfer.id] = transfer
        self._spawn(self._send(phone, transfer, recipient, path, cleanup), "ui send file")
        self.notify()
        return transfer.id

    def uploads_dir(self) -> Path:
        """A new private folder in the home for one upload from the browser."""
        from pqcall.client.privatefile import make_private_dir

        make_private_dir(self.home.path)
        base = make_private_dir(self.home.path / UPLOADS_NAME)
        folder = base / secrets.token_hex(8)
        folder.mkdir(mode=0o700)
        return folder

    async def _send(
        self, phone: Phone, transfer: Transfer, to: str, path: Path, cleanup: Path | None
    ) -> None:
        try:
            sent = await phone.files().send(to, path, progress=self._progress(transfer))
            transfer.file_id = sent.file_id
            transfer.state = "done"
        except KeyChangedError as exc:
            self._drain_warnings(phone)
            transfer.state, transfer.error = "failed", str(exc)
        except PqcallError as exc:
            transfer.state, transfer.error = "failed", str(exc)
        finally:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
            self.notify()

    async def receive_file(self, file_id: str) -> dict[str, Any]:
        """Download, check and save file ``file_id`` in the home's ``received/``.

        Returns ``{"file_id", "name", "size", "download"}``; the saved file can
        then be fetched once (:meth:`take_download`).

        Raises:
            UiError: 409 sender's key changed (``key_changed``), 422 the file fails
                its checks, 404 no such file, 502 server.
        """
        phone = self._require_phone()
        transfer = Transfer(id=secrets.token_hex(8), direction="receive", name=file_id)
        transfer.file_id = file_id
        self._transfers[transfer.id] = transfer
        self.notify()
        try:
            received = await phone.files().receive(file_id, progress=self._progress(transfer))
        except KeyChangedError as exc:
            self._drain_warnings(phone)
            self._fail(transfer, exc)
            raise UiError(409, str(exc), key_changed=True) from None
        except FileCryptoError as exc:
            self._fail(transfer, exc)
            raise UiError(422, str(exc)) from None
        except (TransferError, ApiError) as exc:
            self._fail(transfer, exc)
            raise UiError(404 if "no file" in str(exc) else 409, str(exc)) from None
        except (ServerError, KeystoreError) as exc:
            self._fail(transfer, exc)
            raise UiError(502, str(exc)) from None
        transfer.name = received.path.name
        transfer.state = "done"
        self._downloads[file_id] = (received.path, received.path.name)
        self._inbox = [view for view in self._inbox if view.file_id != file_id]
        self._spawn(self._refresh_inbox(), "ui inbox")
        self.notify()
        return {
            "file_id": file_id,
            "name": received.path.name,
            "size": received.size,
            "download": f"/api/files/{file_id}/download",
        }

    def take_download(self, file_id: str) -> tuple[Path, str]:
        """The saved file ``file_id`` and its name, handed out once.

        Raises:
            UiError: 404 not received here, or already downloaded.
        """
        found = self._downloads.pop(file_id, None)
        if found is None or not found[0].is_file():
            raise UiError(404, f"no received file {file_id} to download")
        return found

    def _progress(self, transfer: Transfer) -> Callable[[str, int, int], None]:
        def report(phase: str, done: int, total: int) -> None:
            # from a worker thread while encrypting or decrypting
            transfer.state, transfer.done, transfer.total = phase, done, total
            self._notify_threadsafe()

        return report

    def _fail(self, transfer: Transfer, exc: Exception) -> None:
        transfer.state, transfer.error = "failed", str(exc)
        self.notify()

    def _file_waiting(self, view: FileView) -> None:
        if all(known.file_id != view.file_id for known in self._inbox):
            self._inbox.append(view)
        self.notify()

    async def _refresh_inbox(self) -> None:
        if self._phone is None:
            return
        try:
            waiting = await self._phone.files().inbox()
        except PqcallError as exc:
            logger.info("inbox: %s", exc)
            return
        self._inbox = [entry.view for entry in waiting]
        self.notify()

    # ------------------------------------------------------------------ internals

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            connected = self._phone is not None and self._phone.connected
            in_call = self._phone is not None and self._phone.current_call is not None
            if in_call or connected != self._was_connected:
                self._was_connected = connected
                self.notify()

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(self._guard(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(work: Any, name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed", name)

    def _require_phone(self) -> Phone:
        if self._phone is None:
            raise UiError(409, "unlock the account first")
        return self._phone

    @property
    def _notes_path(self) -> Path:
        return self.home.path / UI_FILE_NAME

    def _notes(self) -> dict[str, Any]:
        try:
            data = read_bounded(self._notes_path, "UI notes", MAX_UI_FILE_BYTES)
        except KeystoreError as exc:
            logger.warning("%s", exc)
            return {}
        if data is None:
            return {}
        try:
            value = json.loads(data)
        except ValueError:
            return {}
        if not isinstance(value, dict) or value.get("format") != UI_FILE_FORMAT:
            return {}
        return value

    def _update_notes(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        with FileLock(self.home.path / LOCK_NAME).held():
            notes = change(self._notes())
            notes.update(format=UI_FILE_FORMAT, version=UI_FILE_VERSION)
            write_atomic(self._notes_path, json.dumps(notes).encode("utf-8"), "UI notes")


def sound_devices() -> tuple[list[str], list[str]]:
    """Names of the capture and playback devices (none when PortAudio is missing)."""
    from pqcall.media.devices import list_devices

    try:
        devices = list_devices()
    except DeviceError as exc:
        logger.info("no sound devices: %s", exc)
        return [], []
    inputs = [device.name for device in devices if device.input_channels > 0]
    outputs = [device.name for device in devices if device.output_channels > 0]
    return inputs, outputs


def _server_url(text: str) -> str:
    """A server URL as typed: ``http://`` added when no scheme is, no trailing ``/``.

    Raises:
        UiError: 400 not an http or https URL.
    """
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https") or url.endswith("://"):
        raise UiError(400, f"{text!r} is not a server address: expected http://HOST:PORT")
    return url.rstrip("/")


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


__all__ = ["Controller", "Subscription", "Transfer", "UiError", "sound_devices"]
