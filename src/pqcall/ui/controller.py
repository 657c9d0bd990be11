"""The softphone behind the browser UI: one account, its phone, the call, files.

:class:`Controller` owns the :class:`~pqcall.client.home.Home` and, once the
user unlocked it, the :class:`~pqcall.client.phone.Phone`. It performs what
the page asks (plain async methods, no web framework: :mod:`pqcall.ui.app`
maps them to routes) and builds the page's whole view as one JSON-ready
:meth:`Controller.state`. Whoever shows it subscribes
(:meth:`Controller.subscribe`) and is woken on every change: a call moving,
a security warning, a file waiting, transfer progress, presence, and once a
second during a call (fresh statistics).

It coordinates its parts, each in its own module: :mod:`~pqcall.ui.account`
(unlock, register), :mod:`~pqcall.ui.callcontrol` (the call),
:mod:`~pqcall.ui.trust` (contacts' keys, warnings), :mod:`~pqcall.ui.presence`,
:mod:`~pqcall.ui.transfers` (files), :mod:`~pqcall.ui.notes` (the UI's file in
the home) and :mod:`~pqcall.ui.view` (the JSON), sharing one
:class:`~pqcall.ui.hub.Hub` (the phone, subscribers, background work).

Refusals the user should read are :class:`UiError`: an HTTP-like status and
one sentence. The passphrase is never stored or logged; it unlocks the
keystore and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone
from pqcall.crypto.keystore import DEFAULT_KDF_PARAMS, AccountSecrets, KdfParams
from pqcall.exceptions import DeviceError
from pqcall.media.disguise import INSTALL_HINT, PRESETS
from pqcall.media.disguise import available as disguise_available
from pqcall.ui import view
from pqcall.ui.account import FindServers, register_account, start_phone, unlock_account
from pqcall.ui.callcontrol import CallControl
from pqcall.ui.errors import UiError
from pqcall.ui.groups import GroupControl
from pqcall.ui.hub import Hub, Subscription
from pqcall.ui.linked_devices import RecoveryWordsOnce
from pqcall.ui.notes import UiNotes
from pqcall.ui.presence import PresenceTracker
from pqcall.ui.screening import screening_view
from pqcall.ui.transfers import Transfer, Transfers
from pqcall.ui.trust import Trust

logger = logging.getLogger(__name__)

TICK_S = 1.0
"""How often subscribers get fresh state during a call (statistics, timer)."""


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
        find_servers: FindServers | None = None,
    ) -> None:
        self.home = home  # the account's directory
        self.media = media or MediaOptions()  # for the next call; set_devices changes it
        self._kdf_params = kdf_params  # for a new keystore
        self._list_devices = list_devices or sound_devices  # inputs and outputs
        self._find_servers = find_servers  # mDNS discovery (None: the real one)
        self._hub = Hub()  # the phone, subscribers, background work
        self._notes = UiNotes(home)  # suspicious contacts, missed calls seen
        self._trust = Trust(self._hub, self._notes)  # contacts' keys, warnings
        self._presence = PresenceTracker(self._hub)  # who is online
        self._calls = CallControl(self._hub, self._trust, self._presence, self._notes)
        self._transfers = Transfers(self._hub, home, self._trust.drain)  # files
        self.groups = GroupControl(self._hub, lambda: self.media)  # group calls (ui/groups.py)
        self._account: AccountSecrets | None = None  # once unlocked
        self.recovery_words = RecoveryWordsOnce()  # a registration's, until the page takes them
        self._unlocking = asyncio.Lock()  # one unlock or registration at a time
        self._inputs: list[str] = []  # capture device names
        self._outputs: list[str] = []  # playback device names
        self._was_connected = False  # for noticing the push connection change

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """List the sound devices and start the ticker (no network yet)."""
        self._hub.bind_loop()
        self._inputs, self._outputs = await asyncio.to_thread(self._list_devices)
        self._hub.spawn(self._tick(), "ui ticker")

    async def close(self) -> None:
        """Hang up, disconnect, stop background work. Idempotent."""
        await self._hub.cancel_tasks()
        if self._hub.phone is not None:
            await self._hub.phone.close()
            self._hub.phone = None
        self._account = None
        # the ticker notices a change against this: a restarted phone (a key rotation) that
        # is online again must be pushed to the page, not taken for "still online"
        self._was_connected = False

    @property
    def phone(self) -> Phone | None:
        """The phone, once unlocked."""
        return self._hub.phone

    @property
    def account(self) -> AccountSecrets | None:
        """The unlocked account's keys (the account panel's operations sign with them)."""
        return self._account

    # ------------------------------------------------------------------ subscribers

    def subscribe(self) -> Subscription:
        """Be woken on every change (call :meth:`Subscription.close` when done)."""
        return self._hub.subscribe()

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
        self._hub.notify()

    # ------------------------------------------------------------------ state

    def phase(self) -> str:
        """``setup`` (no registered account), ``locked`` or ``ready``."""
        if self._hub.phone is not None:
            return "ready"
        return "locked" if self.home.load_config() is not None else "setup"

    def state(self) -> dict[str, Any]:
        """Everything the page shows, as one JSON-ready dict (see ``docs/cli.md#ui``)."""
        phone = self._hub.phone
        current = phone.current_call if phone is not None else None
        notes = self._notes.read()
        history = view.history_view(phone)
        call = None
        if current is not None:
            call = view.call_view(
                current,
                sas_confirmed=self._calls.is_sas_confirmed(current),
                muted=self._calls.muted,
            )
        state: dict[str, Any] = view.finite(
            {
                "version": self._hub.version,
                "phase": self.phase(),
                "account": view.account_view(phone),
                "connected": phone is not None and phone.connected,
                "screening": screening_view(phone),
                "contacts": view.contacts_view(
                    phone, self._presence.entries, notes.get("suspicious", [])
                ),
                "call": call,
                "last_call": self._calls.last_call,
                "group": self.groups.view(phone),
                "group_last": self.groups.last,
                "history": history,
                "missed_unseen": view.missed_unseen(history, float(notes.get("missed_seen", 0.0))),
                "warnings": view.warnings_view(self._trust.warnings),
                "devices": view.devices_view(self._inputs, self._outputs, self.media),
                "inbox": view.inbox_view(self._transfers.inbox),
                "transfers": [transfer.to_json() for transfer in self._transfers.entries()],
            }
        )
        return state

    # ------------------------------------------------------------------ account

    async def unlock(self, passphrase: str) -> None:
        """Open the keystore and start the phone.

        Raises:
            UiError: 401 wrong passphrase, 409 no account yet, 502 server unreachable.
        """
        async with self._unlocking:
            if self._hub.phone is not None:
                return
            account = await unlock_account(self.home, passphrase)
            await self._start_phone(account)

    async def register(self, name: str, server_url: str, passphrase: str) -> None:
        """Create the identity if there is none, register ``name``, unlock, start the phone.

        ``server_url`` "" looks for the one server on the LAN.

        Raises:
            UiError: 400 bad name or URL, 401 wrong passphrase (existing identity),
                409 name taken or another account here, 502 server unreachable.
        """
        async with self._unlocking:
            if self._hub.phone is not None:
                raise UiError(409, f"already registered and unlocked as {self._hub.phone.username}")
            account = await register_account(
                self.home,
                name,
                server_url,
                passphrase,
                kdf_params=self._kdf_params,
                find_servers=self._find_servers,
                on_recovery_words=self.recovery_words.hold,
            )
            await self._start_phone(account)

    async def _start_phone(self, account: AccountSecrets) -> None:
        phone = await start_phone(self.home, account, self.media)
        self._hub.phone = phone
        self._account = account
        phone.on_change(self._calls.call_changed)
        phone.on_file(self._transfers.file_waiting)
        phone.on_presence(self._presence.pushed)
        phone.on_missed(lambda missed: self._hub.notify())  # in the history: the badge counts it
        self._hub.spawn(self._calls.watch_incoming(phone), "ui incoming calls")
        self._hub.spawn(self.groups.watch_invites(phone), "ui group invites")
        self._hub.spawn(self.groups.watch(), "ui group roster")
        self._hub.spawn(self._trust.watch(phone), "ui warnings")
        self._hub.spawn(self._presence.poll(), "ui presence")
        self._hub.spawn(self._transfers.refresh_inbox(), "ui inbox")
        self._hub.notify()

    # ------------------------------------------------------------------ calls

    async def call(self, name: str) -> None:
        """Call ``name`` (see :meth:`CallControl.call <pqcall.ui.callcontrol.CallControl.call>`)."""
        if self.groups.in_call:
            raise UiError(409, "already in a group call: leave it first")
        await self._calls.call(name, self.media)

    async def accept(self) -> None:
        """Answer the ringing incoming call (409 when none rings)."""
        await self._calls.accept()

    async def reject(self) -> None:
        """Decline the ringing incoming call (409 when none rings)."""
        await self._calls.reject()

    async def hangup(self) -> None:
        """End the call, or cancel it while it rings (409 when not in a call)."""
        await self._calls.hangup()

    async def set_muted(self, muted: bool) -> None:
        """Send silence instead of our audio until the call ends (409 when not in a call)."""
        await self._calls.set_muted(muted)

    async def confirm_sas(self, matches: bool) -> None:
        """The user compared the SAS (see :meth:`pqcall.ui.callcontrol.CallControl.confirm_sas`)."""
        await self._calls.confirm_sas(matches)

    # ------------------------------------------------------------------ history

    def mark_missed_seen(self) -> None:
        """The user saw the missed calls: ``missed_unseen`` counts from now."""
        self._notes.mark_missed_seen(time.time())
        self._hub.notify()

    # ------------------------------------------------------------------ contacts and safety

    async def add_contact(self, name: str) -> None:
        """Look ``name`` up on the server and pin their identity (see :mod:`pqcall.ui.trust`)."""
        await self._trust.add_contact(name)
        self._hub.spawn(self._presence.refresh(), "ui presence now")
        self._hub.notify()

    def safety_number(self, name: str) -> dict[str, Any]:
        """``{"name", "safety_number", "changed_safety_number"}`` with contact ``name``."""
        return self._trust.safety_number(name)

    async def verify_contact(self, name: str) -> None:
        """The user compared the safety number with ``name`` out of band."""
        await self._trust.verify_contact(name)

    async def accept_key(self, name: str) -> None:
        """Pin ``name``'s recorded new key (the user compared it out of band)."""
        await self._trust.accept_key(name)

    def dismiss_warnings(self) -> None:
        """Clear the security warnings (the user read them)."""
        self._trust.dismiss_warnings()

    # ------------------------------------------------------------------ devices

    async def set_devices(self, audio_in: str | None, audio_out: str | None) -> None:
        """Use these devices now, in the current call too, and for the next calls (None: keep).

        Raises:
            UiError: 400 a device cannot be opened (nothing changes).
        """
        audio_in = None if audio_in == self.media.audio_in else audio_in
        audio_out = None if audio_out == self.media.audio_out else audio_out
        phone = self._hub.phone
        call = phone.current_call if phone is not None else None
        try:
            if call is not None:
                await call.set_audio(audio_in, audio_out)
            elif audio_in is not None:
                from pqcall.media.audio_spec import open_source

                source = await asyncio.to_thread(open_source, audio_in)
                source.close()
        except DeviceError as exc:
            raise UiError(400, str(exc)) from None
        self.media = replace(
            self.media,
            audio_in=self.media.audio_in if audio_in is None else audio_in,
            audio_out=self.media.audio_out if audio_out is None else audio_out,
        )
        if phone is not None:
            phone.media = self.media
        self._hub.notify()

    async def rescan_devices(self) -> None:
        """List the sound devices again (a headset plugged in or removed since)."""
        self._inputs, self._outputs = await asyncio.to_thread(self._list_devices)
        self._hub.notify()

    def set_processing(
        self,
        *,
        echo_cancel: bool | None = None,
        noise_suppression: bool | None = None,
        auto_gain: bool | None = None,
        voice_disguise: str | None = None,
    ) -> None:
        """Switch echo cancellation, noise suppression, auto gain, voice disguise for the next call.

        None keeps a setting; ``voice_disguise`` is a preset name or ``"off"``.
        """
        disguise = self.media.voice_disguise
        if voice_disguise is not None:
            if voice_disguise != "off" and voice_disguise not in PRESETS:
                raise UiError(
                    400, f"no voice disguise {voice_disguise!r} (off, {', '.join(PRESETS)})"
                )
            if voice_disguise != "off" and not disguise_available():
                raise UiError(400, INSTALL_HINT)
            disguise = None if voice_disguise == "off" else voice_disguise
        self.media = replace(
            self.media,
            echo_cancel=self.media.echo_cancel if echo_cancel is None else echo_cancel,
            noise_suppression=(
                self.media.noise_suppression if noise_suppression is None else noise_suppression
            ),
            auto_gain=self.media.auto_gain if auto_gain is None else auto_gain,
            voice_disguise=disguise,
        )
        phone = self._hub.phone
        if phone is not None:
            phone.media = self.media
        self._hub.notify()

    # ------------------------------------------------------------------ files

    async def send_file(self, to: str, path: Path, *, cleanup: Path | None = None) -> str:
        """Start sending ``path`` to ``to`` in the background; returns the transfer's id."""
        return await self._transfers.send_file(to, path, cleanup=cleanup)

    def uploads_dir(self) -> Path:
        """A new private folder in the home for one upload from the browser."""
        return self._transfers.uploads_dir()

    async def receive_file(self, file_id: str) -> dict[str, Any]:
        """Download, check and save file ``file_id`` (see :mod:`pqcall.ui.transfers`)."""
        return await self._transfers.receive_file(file_id)

    def take_download(self, file_id: str) -> tuple[Path, str]:
        """The saved file ``file_id`` and its name, handed out once (404 otherwise)."""
        return self._transfers.take_download(file_id)

    # ------------------------------------------------------------------ internals

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            phone = self._hub.phone
            connected = phone is not None and phone.connected
            in_call = phone is not None and (phone.current_call is not None or self.groups.in_call)
            if in_call or connected != self._was_connected:
                self._was_connected = connected
                self._hub.notify()


def sound_devices() -> tuple[list[str], list[str]]:
    """Names of the capture and playback devices (none when PortAudio is missing).

    PortAudio is restarted to see new devices when no stream is open; PulseAudio's
    sinks and sources (``pulse:NAME``) are listed live, in a call too.
    """
    from pqcall.media.devices import list_devices, rescan_devices
    from pqcall.media.pulse_devices import pulse_specs

    try:
        rescan_devices()
        devices = list_devices()
    except DeviceError as exc:
        logger.info("no sound devices: %s", exc)
        return [], []
    inputs = [device.name for device in devices if device.input_channels > 0]
    outputs = [device.name for device in devices if device.output_channels > 0]
    return inputs + pulse_specs("input"), outputs + pulse_specs("output")


__all__ = ["Controller", "Subscription", "Transfer", "UiError", "sound_devices"]
