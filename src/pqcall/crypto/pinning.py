"""Trust on first use: pin a contact's identity, never accept a change silently.

The first identity seen for a username is pinned. Later lookups either match
the pin or produce :class:`KeyChanged`, which the client must show as a loud
warning; the pin only moves when the user explicitly accepts the new key
(:meth:`PinStore.accept_new_key`), which also clears "verified".

Storage is an interface (:class:`PinStorage`) with an in-memory version for
tests; the client provides a durable one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from pqcall.crypto.identity import IdentityPublicKey
from pqcall.exceptions import LocalProtocolError


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
