"""Looking a user up on the server and checking what it says against our pins.

Every use of another user's keys (a call, a file sent to them, a file
received from them) starts here: the server's entry (identity and signed key
bundle) is decoded, the bundle must be signed by that identity for that name,
and the identity must match the pin (pinned now on first use). A changed key
raises :class:`~pqcall.exceptions.KeyChangedError` with the warning to show;
nothing is sent or accepted. The user's device list, if any, must verify under
the *pinned* account key and be no older than one seen before
(:func:`~pqcall.client.account_devices.check_peer_devices`); devices that came
or went are a quiet notice, not a key change.

:class:`SecurityWarning` is such a warning as the phone queues it for the user;
:func:`trust_of` says how far a pin check lets a call trust the peer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pqcall.client.account_devices import (
    NO_DEVICE_LIST,
    PEER_DEVICES_NAME,
    PeerDeviceCheck,
    PeerDevices,
    check_peer_devices,
)
from pqcall.client.api import ServerApi
from pqcall.client.call_context import PeerTrust
from pqcall.client.contacts import Contacts
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.pinning import KeyChanged, Pin, PinCreated, PinResult
from pqcall.exceptions import BadSignature, CallError, DecodeError, KeyChangedError

logger = logging.getLogger(__name__)


class SecurityWarning:
    """Something the user must see: a refused call because of a key problem."""

    def __init__(self, peer: str, message: str) -> None:
        self.peer = peer  # who it is about
        self.message = message  # one line for the user
        self.when = time.time()  # when it happened

    def __repr__(self) -> str:
        return f"SecurityWarning({self.peer!r}, {self.message!r})"


@dataclass(frozen=True, slots=True)
class CheckedPeer:
    """A user's server entry, checked against the pin."""

    name: str
    """The normalized username."""
    identity: IdentityPublicKey
    """Their identity: the pinned one (or pinned just now)."""
    bundle: KeyBundle
    """Their key bundle, verified to be signed by :attr:`identity` for :attr:`name`."""
    pin: PinResult
    """What the pin check found: pinned now, matched (verified or not)."""
    devices: PeerDeviceCheck = NO_DEVICE_LIST
    """Their device list verified under :attr:`identity` (None: they have none)."""

    @property
    def device_keys(self) -> tuple[IdentityPublicKey, ...]:
        """The device keys that may sign their handshakes besides :attr:`identity`."""
        listed = self.devices.device_list
        return () if listed is None else tuple(device.public for device in listed.devices)

    @property
    def is_verified(self) -> bool:
        """Whether the user compared the safety number with this contact."""
        return not isinstance(self.pin, PinCreated) and self.pin.pin.verified


async def check_peer(api: ServerApi, contacts: Contacts, peer: str) -> CheckedPeer:
    """``peer``'s identity and key bundle from the server, checked against the pin.

    Args:
        api: the server.
        contacts: our pins; a first contact is pinned here.
        peer: a normalized username.

    Raises:
        KeyChangedError: the identity differs from the pinned one (the message
            is the warning for the user; the change is recorded in contacts).
        CallError: the server's entry is malformed or signed for another name,
            or their device list is not signed by the pinned key or rolled back.
        UnknownUser: no such user.
        ServerError: the server refused or is unreachable.
    """
    user = await api.user(peer)
    try:
        identity = IdentityPublicKey.decode(user.identity)
        bundle = KeyBundle.decode(user.key_bundle)
        bundle.verify(identity)
    except (DecodeError, BadSignature) as exc:
        raise CallError(f"the server's key entry for {peer} is invalid: {exc}") from None
    if bundle.username != peer:
        raise CallError(f"the server's key entry for {peer} is signed for {bundle.username}")
    result = contacts.check(peer, identity)
    if isinstance(result, KeyChanged):
        raise KeyChangedError(key_change_message(peer))
    if isinstance(result, PinCreated):
        logger.info("pinned %s's identity on first use", peer)
    store = PeerDevices(contacts.path.parent / PEER_DEVICES_NAME)
    devices = await asyncio.to_thread(check_peer_devices, store, user, peer, identity)
    return CheckedPeer(peer, identity, bundle, result, devices)


def key_change_message(peer: str) -> str:
    """The warning for a changed key: what happened and what to do."""
    return (
        f"{peer}'s identity key is not the one you saved: either {peer} reinstalled, or someone"
        f" (possibly the server) is impersonating them. Compare the safety number with {peer}"
        f" in person or by another channel (pqcall verify {peer}), and only then accept the"
        f" new key (pqcall verify {peer} --accept-new-key)."
    )


def trust_of(result: PinResult) -> PeerTrust:
    """How far a pin check lets us trust the peer (a key change never gets this far)."""
    if isinstance(result, PinCreated):
        return PeerTrust.NEW
    return PeerTrust.VERIFIED if result.pin.verified else PeerTrust.PINNED


async def check_caller(
    api: ServerApi, contacts: Contacts, caller: str, signer: IdentityPublicKey
) -> tuple[IdentityPublicKey, PinResult]:
    """The account key of ``caller``, whose offer ``signer`` signed, and the pin check.

    The caller's account key itself (an account without devices, or an older
    phone) is checked against the pin as before, without asking the server.
    Any other key must be a device in the caller's device list verified under
    the pinned account key (fetched now; on first contact the server's account
    key is pinned). A device that is not in that list, a list not signed by
    the pinned key, or an account key that changed give :class:`KeyChanged`:
    refuse loudly.

    Raises:
        ServerError: the caller's entry could not be fetched.
    """
    contact = contacts.get(caller)
    if contact is None or contact.identity == signer:
        if contact is not None or signer == (await _server_identity(api, caller)):
            return signer, contacts.check(caller, signer)
    try:
        checked = await check_peer(api, contacts, caller)
    except KeyChangedError:
        pinned = contacts.get(caller)
        assert pinned is not None
        return signer, KeyChanged(pinned.pin, signer)
    except CallError as exc:
        logger.warning("refusing %s's call: %s", caller, exc)
        pinned = contacts.get(caller)
        pin = pinned.pin if pinned is not None else Pin(caller, signer)
        return signer, KeyChanged(pin, signer)
    if not checked.devices.allows(signer, checked.identity):
        logger.warning("refusing %s's call: signed by a device not in their list", caller)
        return signer, KeyChanged(checked.pin.pin, signer)
    return checked.identity, checked.pin


async def _server_identity(api: ServerApi, name: str) -> IdentityPublicKey | None:
    try:
        return IdentityPublicKey.decode((await api.user(name)).identity)
    except DecodeError:
        return None
