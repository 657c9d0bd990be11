"""Contacts: durable TOFU pins, verification state and safety numbers.

:class:`FilePinStorage` keeps the pins of :class:`pqcall.crypto.pinning.PinStore`
in ``contacts.json`` with what the softphone adds to each: when the contact was
first seen, their last call, and a refused key change. :class:`Contacts` is the
API the softphone and the CLI use.

The file is precious: losing a pin would silently re-pin on first use whatever
key the server presents next, which is exactly a man in the middle's chance.
So it is never dropped or rewritten when damaged: a corrupt or unknown-version
file raises :class:`~pqcall.exceptions.KeystoreError` until the user repairs or
removes it. Every change is a read-modify-write under the home's lock with an
atomic replace, and every read goes to the file, so two processes sharing a
home (``listen`` and ``call``) see each other's changes.

File format (JSON, mode 0600)::

    {"format": "pqcall contacts", "version": 1,
     "contacts": [{"name": "bob", "identity": "<base64url>", "verified": false,
                   "first_seen": 1700000000.0, "last_call": null,
                   "key_changed": null | {"identity": "<base64url>", "seen": 1700000100.0}}]}

``identity`` is the base64url (no padding) of ``IdentityPublicKey.encode()``.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pqcall.client.privatefile import LOCK_NAME, FileLock, read_bounded, write_atomic
from pqcall.crypto import safety
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.pinning import KeyChanged, Pin, PinResult, PinStore
from pqcall.exceptions import DecodeError, KeystoreError, LocalProtocolError
from pqcall.signaling.messages import b64decode, b64encode
from pqcall.signaling.usernames import normalize

CONTACTS_FORMAT = "pqcall contacts"
CONTACTS_VERSION = 1
MAX_CONTACTS_FILE_BYTES = 64 * 1024 * 1024  # about 10,000 contacts with a pending key change


@dataclass(frozen=True, slots=True)
class KeyChange:
    """A different identity the server presented for a contact, refused."""

    identity: IdentityPublicKey
    """The refused identity; :meth:`Contacts.accept_new_key` pins it."""
    seen: float
    """Unix time it was first presented."""

    @property
    def fingerprint(self) -> str:
        """The refused identity's fingerprint, as eight groups of four hex digits."""
        return self.identity.fingerprint_text()


@dataclass(frozen=True, slots=True)
class Contact:
    """A pinned contact as stored in the contacts file."""

    name: str
    """The contact's (normalized) username."""
    identity: IdentityPublicKey
    """The pinned identity key."""
    verified: bool
    """True once the user compared the safety number out of band."""
    first_seen: float
    """Unix time the identity was first pinned (or, after a key change, accepted)."""
    last_call: float | None = None
    """Unix time of the last call with this contact, if any."""
    key_changed: KeyChange | None = None
    """A refused key change: show "KEY CHANGED" until the user accepts or it is resolved."""
    fingerprint: str = field(init=False)
    """The pinned identity's fingerprint, as eight groups of four hex digits."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", self.identity.fingerprint_text())

    @property
    def pin(self) -> Pin:
        """The pin this contact holds, for :class:`~pqcall.crypto.pinning.PinStore`."""
        return Pin(name=self.name, identity=self.identity, verified=self.verified)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary for ``pqcall contacts --json`` (fingerprints, not keys)."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "verified": self.verified,
            "first_seen": self.first_seen,
            "last_call": self.last_call,
            "key_changed": None
            if self.key_changed is None
            else {"fingerprint": self.key_changed.fingerprint, "seen": self.key_changed.seen},
        }


class FilePinStorage:
    """A :class:`~pqcall.crypto.pinning.PinStorage` kept in a JSON file.

    Beyond the protocol (:meth:`load`, :meth:`save`, :meth:`all`), it gives the
    whole :class:`Contact` records and a :meth:`transaction` holding the lock
    across several calls.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)  # the contacts file
        self._lock = FileLock(self.path.parent / LOCK_NAME)  # shared with the home's other files
        self._clock = clock  # unix time, for first_seen of new pins

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the home's lock, so reads and writes inside form one atomic change."""
        with self._lock.held():
            yield

    def load(self, name: str) -> Pin | None:
        """The pin for ``name``, or None (read from the file).

        Raises:
            KeystoreError: the file is corrupt or unreadable.
        """
        contact = self.contact(name)
        return None if contact is None else contact.pin

    def save(self, pin: Pin) -> None:
        """Create or replace the pin for ``pin.name``.

        A new identity (a key change the user accepted) restarts ``first_seen``
        and clears the recorded key change; last call is kept.

        Raises:
            KeystoreError: the file is corrupt, or cannot be read or written.
        """
        with self._lock.held():
            contacts = self._read()
            old = contacts.get(pin.name)
            if old is None or old.identity != pin.identity:
                last_call = None if old is None else old.last_call
                contacts[pin.name] = Contact(
                    pin.name, pin.identity, pin.verified, self._clock(), last_call
                )
            else:
                contacts[pin.name] = replace(old, verified=pin.verified)
            self._write(contacts)

    def all(self) -> list[Pin]:
        """Every pin, sorted by name.

        Raises:
            KeystoreError: the file is corrupt or unreadable.
        """
        return [contact.pin for contact in self.contacts()]

    def contact(self, name: str) -> Contact | None:
        """The record for ``name``, or None.

        Raises:
            KeystoreError: the file is corrupt or unreadable.
        """
        return self._read().get(name)

    def contacts(self) -> list[Contact]:
        """Every record, sorted by name.

        Raises:
            KeystoreError: the file is corrupt or unreadable.
        """
        return sorted(self._read().values(), key=lambda contact: contact.name)

    def put(self, contact: Contact) -> None:
        """Create or replace the record for ``contact.name`` as given.

        Raises:
            KeystoreError: the file is corrupt, or cannot be read or written.
        """
        with self._lock.held():
            contacts = self._read()
            contacts[contact.name] = contact
            self._write(contacts)

    def _read(self) -> dict[str, Contact]:
        # atomic replace means no lock is needed to read a whole version
        data = read_bounded(self.path, "contacts file", MAX_CONTACTS_FILE_BYTES)
        if data is None:
            return {}
        try:
            return _decode_file(data)
        except _Corrupt as exc:
            raise KeystoreError(
                f"contacts file {self.path} is corrupt ({exc}); repair or remove it "
                "(removing it forgets every pinned key)"
            ) from None
        except _Unsupported as exc:
            raise KeystoreError(
                f"contacts file {self.path} is of version {exc}, not supported "
                "by this pqcall; upgrade pqcall"
            ) from None

    def _write(self, contacts: dict[str, Contact]) -> None:
        write_atomic(self.path, _encode_file(contacts), "contacts file")


class Contacts:
    """The contacts of one home: TOFU checks, verification, safety numbers.

    Names are normalized (``Bob`` is ``bob``) before use.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)  # the contacts file
        self._storage = FilePinStorage(self.path, clock=clock)  # the durable pins
        self._pins = PinStore(self._storage)  # the TOFU policy
        self._clock = clock  # unix time, for when a key change was seen

    def check(self, name: str, identity: IdentityPublicKey) -> PinResult:
        """Compare ``identity`` with ``name``'s pin, pinning it on first contact.

        A :class:`~pqcall.crypto.pinning.KeyChanged` result is also recorded on
        the contact (:attr:`Contact.key_changed`) so ``pqcall contacts`` shows
        it; the pin itself does not move.

        Raises:
            InvalidUsername: ``name`` is not a valid username.
            KeystoreError: the contacts file is corrupt or cannot be written.
        """
        name = normalize(name)
        with self._storage.transaction():
            result = self._pins.check(name, identity)
            if isinstance(result, KeyChanged):
                contact = self._require(name)
                pending = contact.key_changed
                if pending is None or pending.identity != identity:
                    change = KeyChange(identity, self._clock())
                    self._storage.put(replace(contact, key_changed=change))
        return result

    def get(self, name: str) -> Contact | None:
        """The contact ``name``, or None if never seen.

        Raises:
            InvalidUsername: ``name`` is not a valid username.
            KeystoreError: the contacts file is corrupt or unreadable.
        """
        return self._storage.contact(normalize(name))

    def list(self) -> builtins.list[Contact]:
        """Every contact, sorted by name.

        Raises:
            KeystoreError: the contacts file is corrupt or unreadable.
        """
        return self._storage.contacts()

    def mark_verified(self, name: str) -> Contact:
        """Record that the user verified the pinned key of ``name`` out of band.

        Raises:
            LocalProtocolError: no contact of that name.
            KeystoreError: the contacts file is corrupt or cannot be written.
        """
        name = normalize(name)
        with self._storage.transaction():
            contact = self._require(name)
            self._pins.mark_verified(name, contact.identity)
            return self._require(name)

    def accept_new_key(self, name: str) -> Contact:
        """Pin the recorded changed key of ``name``; clears "verified" and the change.

        Raises:
            LocalProtocolError: no contact of that name, or no key change recorded.
            KeystoreError: the contacts file is corrupt or cannot be written.
        """
        name = normalize(name)
        with self._storage.transaction():
            change = self._require(name).key_changed
            if change is None:
                raise LocalProtocolError(f"no key change recorded for {name}")
            self._pins.accept_new_key(name, change.identity)
            return self._require(name)

    def safety_number(
        self,
        our_name: str,
        our_identity: IdentityPublicKey,
        name: str,
        *,
        changed_key: bool = False,
    ) -> str:
        """The safety number of us and contact ``name`` (60 digits in groups of five).

        Args:
            our_name: our username.
            our_identity: our identity public key.
            name: the contact.
            changed_key: use the recorded changed key instead of the pinned
                one, to compare it before :meth:`accept_new_key`.

        Raises:
            LocalProtocolError: no contact of that name, or ``changed_key`` and
                no key change recorded.
            KeystoreError: the contacts file is corrupt or unreadable.
        """
        name = normalize(name)
        contact = self._require(name)
        identity = contact.identity
        if changed_key:
            if contact.key_changed is None:
                raise LocalProtocolError(f"no key change recorded for {name}")
            identity = contact.key_changed.identity
        return safety.safety_number(normalize(our_name), our_identity, name, identity)

    def touch(self, name: str, when: float) -> None:
        """Record a call with ``name`` at unix time ``when``.

        Raises:
            LocalProtocolError: no contact of that name.
            KeystoreError: the contacts file is corrupt or cannot be written.
        """
        name = normalize(name)
        with self._storage.transaction():
            self._storage.put(replace(self._require(name), last_call=when))

    def _require(self, name: str) -> Contact:
        contact = self._storage.contact(name)
        if contact is None:
            raise LocalProtocolError(f"no contact named {name}")
        return contact


# --- the file format ---


class _Corrupt(Exception):
    """The contacts file does not parse; the message says where."""


class _Unsupported(Exception):
    """The contacts file is of another version; the message is the version."""


def _encode_file(contacts: dict[str, Contact]) -> bytes:
    entries = [_encode_contact(contacts[name]) for name in sorted(contacts)]
    document = {"format": CONTACTS_FORMAT, "version": CONTACTS_VERSION, "contacts": entries}
    return (json.dumps(document, indent=1, allow_nan=False) + "\n").encode("utf-8")


def _encode_contact(contact: Contact) -> dict[str, Any]:
    change = contact.key_changed
    return {
        "name": contact.name,
        "identity": b64encode(contact.identity.encode()),
        "verified": contact.verified,
        "first_seen": contact.first_seen,
        "last_call": contact.last_call,
        "key_changed": None
        if change is None
        else {"identity": b64encode(change.identity.encode()), "seen": change.seen},
    }


def _decode_file(data: bytes) -> dict[str, Contact]:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise _Corrupt("not JSON") from None
    if not isinstance(document, dict) or document.get("format") != CONTACTS_FORMAT:
        raise _Corrupt("not a pqcall contacts file")
    version = document.get("version")
    if version != CONTACTS_VERSION:
        if isinstance(version, int) and not isinstance(version, bool):
            raise _Unsupported(str(version))
        raise _Corrupt("no valid version")
    entries = document.get("contacts")
    if not isinstance(entries, list):
        raise _Corrupt("no contacts list")
    contacts: dict[str, Contact] = {}
    for index, entry in enumerate(entries):
        try:
            contact = _decode_contact(entry)
        except _Corrupt as exc:
            raise _Corrupt(f"entry {index}: {exc}") from None
        if contact.name in contacts:
            raise _Corrupt(f"entry {index}: {contact.name} appears twice")
        contacts[contact.name] = contact
    return contacts


def _decode_contact(entry: object) -> Contact:
    if not isinstance(entry, dict):
        raise _Corrupt("not an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise _Corrupt("no valid name")
    verified = entry.get("verified")
    if not isinstance(verified, bool):
        raise _Corrupt("verified is not true or false")
    last_call = entry.get("last_call")
    change = entry.get("key_changed")
    if change is not None and not isinstance(change, dict):
        raise _Corrupt("key_changed is not an object")
    return Contact(
        name=name,
        identity=_identity(entry.get("identity"), "identity"),
        verified=verified,
        first_seen=_time(entry.get("first_seen"), "first_seen"),
        last_call=None if last_call is None else _time(last_call, "last_call"),
        key_changed=None
        if change is None
        else KeyChange(
            _identity(change.get("identity"), "key_changed identity"),
            _time(change.get("seen"), "key_changed seen"),
        ),
    )


def _identity(value: object, what: str) -> IdentityPublicKey:
    if not isinstance(value, str):
        raise _Corrupt(f"{what} is missing")
    try:
        return IdentityPublicKey.decode(b64decode(value))
    except (ValueError, DecodeError):
        raise _Corrupt(f"{what} is not a valid identity key") from None


def _time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Corrupt(f"{what} is not a time")
    return float(value)
