"""Trust on first use: pin a contact's identity, never accept a change silently.

The first identity seen for a username is pinned. Later lookups either match
the pin or produce :class:`KeyChanged`, which the client must show as a loud
warning; the pin only moves when the user explicitly accepts the new key
(:meth:`PinStore.accept_new_key`), which also clears "verified".

Storage is an interface (:class:`PinStorage`) with an in-memory version for
tests; the client provides a durable one.

A contact's *device list* (:mod:`pqcall.crypto.account`) is checked under the
pinned account key by the caller; :func:`check_device_list` then refuses a list
older than the newest seen (no rollback) and reports devices that came or went
as :class:`DevicesChanged`, a quiet notice: the account key, and so the safety
number, did not change.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from pqcall.crypto.account import DeviceList
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.exceptions import LocalProtocolError, RemoteProtocolError


@dataclass(frozen=True, slots=True)
class Pin:
    """A contact's pinned identity."""

    name: str
    """The contact's username."""
    identity: IdentityPublicKey
    """The pinned identity key."""
    verified: bool = False
    """True once the user compared the safety number or a SAS out of band."""


@dataclass(frozen=True, slots=True)
class PinCreated:
    """First contact: the identity was pinned (trust on first use)."""

    pin: Pin
    """The new pin."""


@dataclass(frozen=True, slots=True)
class PinMatched:
    """The identity matches the pin."""

    pin: Pin
    """The existing pin."""


@dataclass(frozen=True, slots=True)
class KeyChanged:
    """The identity differs from the pin: warn loudly, do not call or send."""

    pin: Pin
    """The existing pin, unchanged."""
    new_identity: IdentityPublicKey
    """The identity now presented for that name."""


PinResult = PinCreated | PinMatched | KeyChanged


class PinStorage(Protocol):
    """Where pins live."""

    def load(self, name: str) -> Pin | None:
        """The pin for ``name``, or None."""

    def save(self, pin: Pin) -> None:
        """Create or replace the pin for ``pin.name``."""

    def all(self) -> list[Pin]:
        """Every pin."""


class MemoryPinStorage:
    """Pins in a dict; for tests and short-lived tools."""

    def __init__(self) -> None:
        self._pins: dict[str, Pin] = {}  # by username

    def load(self, name: str) -> Pin | None:
        """The pin for ``name``, or None."""
        return self._pins.get(name)

    def save(self, pin: Pin) -> None:
        """Create or replace the pin for ``pin.name``."""
        self._pins[pin.name] = pin

    def all(self) -> list[Pin]:
        """Every pin, sorted by name."""
        return sorted(self._pins.values(), key=lambda pin: pin.name)


class PinStore:
    """TOFU policy on top of a :class:`PinStorage`."""

    def __init__(self, storage: PinStorage) -> None:
        self._storage = storage  # where pins are kept

    def check(self, name: str, identity: IdentityPublicKey) -> PinResult:
        """Compare ``identity`` with the pin for ``name``, pinning it on first contact."""
        pin = self._storage.load(name)
        if pin is None:
            pin = Pin(name=name, identity=identity)
            self._storage.save(pin)
            return PinCreated(pin)
        if pin.identity == identity:
            return PinMatched(pin)
        return KeyChanged(pin, identity)

    def get(self, name: str) -> Pin | None:
        """The pin for ``name``, or None."""
        return self._storage.load(name)

    def mark_verified(self, name: str, identity: IdentityPublicKey) -> Pin:
        """Record that the user verified ``identity`` for ``name`` out of band.

        Raises:
            LocalProtocolError: no pin for ``name``, or it holds another identity.
        """
        pin = self._storage.load(name)
        if pin is None or pin.identity != identity:
            raise LocalProtocolError(f"no pin for {name} with that identity")
        pin = replace(pin, verified=True)
        self._storage.save(pin)
        return pin

    def accept_new_key(self, name: str, identity: IdentityPublicKey) -> Pin:
        """Replace the pin after the user accepted a key change; clears "verified"."""
        pin = Pin(name=name, identity=identity, verified=False)
        self._storage.save(pin)
        return pin


# --- contacts' device lists: no rollback, changes reported quietly ---


@dataclass(frozen=True, slots=True)
class DevicesSeen:
    """The newest device list we verified for a contact: its version and device ids."""

    version: int
    """The highest version verified under the pinned account key (0: none yet)."""
    device_ids: frozenset[bytes]
    """The ids of that list's devices."""


@dataclass(frozen=True, slots=True)
class DevicesChanged:
    """A contact's verified device list moved on: a notice, not a key-change alarm."""

    name: str
    """The contact."""
    added: tuple[str, ...]
    """Names of the devices that appeared."""
    removed: tuple[bytes, ...]
    """Ids of the devices that left (their names are no longer known)."""
    version: int
    """The new list's version."""


def check_device_list(
    name: str, seen: DevicesSeen | None, device_list: DeviceList
) -> tuple[DevicesSeen, DevicesChanged | None]:
    """Compare a contact's *verified* device list with the newest one seen.

    Args:
        name: the contact.
        seen: what was seen before (None: never).
        device_list: the list, already verified under the pinned account key.

    Returns:
        What to remember now, and a notice when devices came or went since a
        previous list (None the first time, and when nothing changed).

    Raises:
        RemoteProtocolError: the list is older than one already seen (a rollback,
            e.g. a server serving an old list to hide an unlinked device).
    """
    if seen is not None and device_list.version < seen.version:
        raise RemoteProtocolError(
            f"{name}'s device list went back from version {seen.version} to"
            f" {device_list.version}: refusing it (the server may be hiding a change)"
        )
    ids = frozenset(device.device_id for device in device_list.devices)
    now = DevicesSeen(device_list.version, ids)
    if seen is None or seen.version == 0:
        return now, None
    if device_list.version == seen.version and ids != seen.device_ids:
        raise RemoteProtocolError(f"{name} has two different device lists of one version")
    if ids == seen.device_ids:
        return now, None
    added = tuple(d.name for d in device_list.devices if d.device_id not in seen.device_ids)
    removed = tuple(sorted(seen.device_ids - ids))
    return now, DevicesChanged(name, added, removed, device_list.version)
