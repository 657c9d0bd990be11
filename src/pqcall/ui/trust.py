"""Trust in the UI: adding contacts, their pinned keys and safety numbers, security warnings.

A contact is pinned on first lookup; a changed key is refused until the user
compares the new safety number and accepts it. :class:`Trust` keeps the newest
:data:`MAX_WARNINGS` security warnings the phone raised (key changes, a SAS
that did not match) until the user dismisses them, and marks contacts
suspicious or trusted in the UI's notes.
"""

from __future__ import annotations

from typing import Any

from pqcall.client.contacts import Contact
from pqcall.client.phone import Phone, SecurityWarning
from pqcall.exceptions import (
    CallError,
    KeyChangedError,
    LocalProtocolError,
    ServerError,
    UnknownUser,
)
from pqcall.signaling import usernames
from pqcall.ui.errors import UiError
from pqcall.ui.hub import Hub
from pqcall.ui.notes import UiNotes

MAX_WARNINGS = 20
"""Security warnings kept (the newest)."""


class Trust:
    """Contacts, their keys and the security warnings, for the page."""

    def __init__(self, hub: Hub, notes: UiNotes) -> None:
        self._hub = hub  # the phone, notify
        self._notes = notes  # suspicious contacts
        self.warnings: list[SecurityWarning] = []  # newest last

    async def add_contact(self, name: str) -> None:
        """Look ``name`` up on the server and pin their identity.

        Raises:
            UiError: 400 bad name or ourselves, 404 unknown user, 409 key changed
                (``key_changed``), 502 server.
        """
        phone = self._hub.require_phone()
        try:
            peer = usernames.normalize(name)
            if peer == phone.username:
                raise UiError(400, "you cannot add yourself")
            await phone.lookup(peer)
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        except KeyChangedError as exc:
            self.drain(phone)
            raise UiError(409, str(exc), key_changed=True) from None
        except UnknownUser as exc:
            raise UiError(404, str(exc)) from None
        except CallError as exc:
            raise UiError(409, str(exc)) from None
        except ServerError as exc:
            raise UiError(502, str(exc)) from None

    def safety_number(self, name: str) -> dict[str, Any]:
        """``{"name", "safety_number", "changed_safety_number"}`` with contact ``name``.

        ``changed_safety_number`` is the one with the refused new key (compare it
        before accepting the key change), else None.

        Raises:
            UiError: 404 no such contact.
        """
        phone = self._hub.require_phone()
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
        phone = self._hub.require_phone()
        contact = self._require_contact(name)
        if contact.key_changed is not None:
            raise UiError(
                409, f"{contact.name}'s key changed: compare and accept the new key first"
            )
        phone.contacts.mark_verified(contact.name)
        self._notes.set_suspicious(contact.name, False)
        self._hub.notify()

    async def accept_key(self, name: str) -> None:
        """Pin ``name``'s recorded new key (the user compared it out of band).

        Raises:
            UiError: 404 no such contact, 409 no key change recorded.
        """
        phone = self._hub.require_phone()
        contact = self._require_contact(name)
        try:
            phone.accept_new_key(contact.name)
        except LocalProtocolError as exc:
            raise UiError(409, str(exc)) from None
        self.warnings = [w for w in self.warnings if w.peer != contact.name]
        self._hub.notify()

    def dismiss_warnings(self) -> None:
        """Clear the security warnings (the user read them)."""
        self.warnings.clear()
        self._hub.notify()

    async def watch(self, phone: Phone) -> None:
        """Keep the warnings ``phone`` raises, until cancelled."""
        while True:
            self.warn(await phone.warnings.get())

    def drain(self, phone: Phone) -> None:
        """Keep the warnings ``phone`` raised so far (before answering with an error)."""
        while not phone.warnings.empty():
            self.warn(phone.warnings.get_nowait())

    def warn(self, warning: SecurityWarning) -> None:
        """Show ``warning`` (the oldest beyond :data:`MAX_WARNINGS` go)."""
        self.warnings.append(warning)
        del self.warnings[:-MAX_WARNINGS]
        self._hub.notify()

    def _require_contact(self, name: str) -> Contact:
        phone = self._hub.require_phone()
        try:
            contact = phone.contacts.get(name)
        except usernames.InvalidUsername as exc:
            raise UiError(400, str(exc)) from None
        if contact is None:
            raise UiError(404, f"no contact named {name}")
        return contact


__all__ = ["MAX_WARNINGS", "Trust"]
