"""The UI's call controls: call, answer, reject, hang up, mute, and the SAS comparison.

:class:`CallControl` acts on the phone's current call and keeps what the page
shows beside it: whether the user muted (kept until the call ends), which
calls' SAS the user confirmed, and the last finished call. A SAS that does
not match marks the peer suspicious, warns, and hangs up.
"""

from __future__ import annotations

import time
from typing import Any

from pqcall.client.call import Call
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, SecurityWarning
from pqcall.client.phone_callstate import CallState, is_terminal
from pqcall.exceptions import (
    CallError,
    DeviceError,
    KeyChangedError,
    LocalProtocolError,
    ServerError,
    UnknownUser,
)
from pqcall.signaling import usernames
from pqcall.ui.errors import UiError
from pqcall.ui.hub import Hub
from pqcall.ui.notes import UiNotes
from pqcall.ui.presence import PresenceTracker
from pqcall.ui.trust import Trust
from pqcall.ui.view import finite, with_outcome


class CallControl:
    """The current call, as the page controls it.

    Args:
        hub: the phone, notifications.
        trust: warns on a key change or a SAS mismatch.
        presence: a peer calling or talking is online.
        notes: where a peer is marked suspicious or trusted.
    """

    def __init__(self, hub: Hub, trust: Trust, presence: PresenceTracker, notes: UiNotes) -> None:
        self._hub = hub  # the phone, notify
        self._trust = trust  # security warnings
        self._presence = presence  # partners are online
        self._notes = notes  # suspicious contacts
        self._sas_confirmed: set[str] = set()  # call ids whose SAS the user confirmed
        self.muted = False  # what the user wants for the current call
        self.last_call: dict[str, Any] | None = None  # the last finished call

    def is_sas_confirmed(self, call: Call) -> bool:
        """Whether the user confirmed ``call``'s SAS."""
        return call.call_id in self._sas_confirmed

    async def call(self, name: str, media: MediaOptions) -> None:
        """Call ``name`` with ``media`` (returns once it rings there).

        Raises:
            UiError: 404 unknown user, 409 offline / in a call / key changed
                (``key_changed``), 400 bad device, 502 server.
        """
        phone = self._hub.require_phone()
        try:
            peer = usernames.normalize(name)
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        self._forget_last_call()
        try:
            await phone.call(peer, media=media)
        except KeyChangedError as exc:
            self._trust.drain(phone)
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
            self._hub.notify()

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
        self._hub.notify()

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
        self.muted = muted
        call.set_muted(muted)
        self._hub.notify()

    async def confirm_sas(self, matches: bool) -> None:
        """The user compared the SAS with the peer.

        A match marks the contact verified; a mismatch marks it suspicious and
        hangs up (someone may be in the middle).

        Raises:
            UiError: 409 not in a call, or the call has no SAS yet.
        """
        phone = self._hub.require_phone()
        call = self._require_call()
        if call.sas is None:
            raise UiError(409, "the call has no SAS yet")
        if matches:
            self._sas_confirmed.add(call.call_id)
            try:
                phone.contacts.mark_verified(call.peer)
            except LocalProtocolError as exc:
                raise UiError(409, str(exc)) from None
            self._notes.set_suspicious(call.peer, False)
            self._hub.notify()
            return
        self._notes.set_suspicious(call.peer, True)
        self._trust.warn(
            SecurityWarning(
                call.peer,
                f"the SAS did not match: the call with {call.peer} was ended; someone may"
                f" be in the middle. Compare the safety number with {call.peer} in person.",
            )
        )
        await call.hangup()

    def call_changed(self, call: Call) -> None:
        """The phone's call moved (the phone calls it)."""
        if not is_terminal(call.state):
            self._presence.mark_online(call.peer, time.time())
        if call.state is CallState.ACTIVE and self.muted:
            call.set_muted(True)
        if is_terminal(call.state):
            self.last_call = finite(with_outcome(call.summary()))
            self._sas_confirmed.discard(call.call_id)
            self.muted = False
        self._hub.notify()

    async def watch_incoming(self, phone: Phone) -> None:
        """Show each incoming call as it rings, until cancelled."""
        while True:
            await phone.next_incoming()
            self._forget_last_call()
            self._hub.notify()

    def _require_call(self) -> Call:
        call = self._hub.require_phone().current_call
        if call is None:
            raise UiError(409, "not in a call")
        return call

    def _forget_last_call(self) -> None:
        self.last_call = None
        self.muted = False


__all__ = ["CallControl"]
