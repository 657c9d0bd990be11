"""Looking a user up on the server and checking what it says against our pins.

Every use of another user's keys (a call, a file sent to them, a file
received from them) starts here: the server's entry (identity and signed key
bundle) is decoded, the bundle must be signed by that identity for that name,
and the identity must match the pin (pinned now on first use). A changed key
raises :class:`~pqcall.exceptions.KeyChangedError` with the warning to show;
nothing is sent or accepted.

:class:`SecurityWarning` is such a warning as the phone queues it for the user;
:func:`trust_of` says how far a pin check lets a call trust the peer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pqcall.client.api import ServerApi
from pqcall.client.call_context import PeerTrust
from pqcall.client.contacts import Contacts
from pqcall.crypto.filekey import KeyBundle
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.pinning import KeyChanged, PinCreated, PinResult
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
        CallError: the server's entry is malformed or signed for another name.
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
    return CheckedPeer(peer, identity, bundle, result)


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
