"""What storage hands back: frozen records, outcomes and errors; no SQL here.

Every store in this package returns these plain values (never ORM objects
bound to a session), so routes and services can be tested against an
in-memory stand-in of a store that returns the same records.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pqcall.exceptions import ServerError
from pqcall.signaling.callstate import State

FILE_UPLOADING = "uploading"
FILE_STORED = "stored"


class StorageError(ServerError):
    """A storage operation was refused."""


class UsernameTaken(StorageError):
    """The username belongs to another account."""


class StaleDeviceList(StorageError):
    """A device list's version is not above the stored one (issue 22)."""


class RecoveryKeyFixed(StorageError):
    """A device list would change or drop the stored recovery key (only recovery may)."""


class CallExists(StorageError):
    """A call with this id already exists."""


class FileLimitReached(StorageError):
    """A new file would take its sender over the quota (bytes) or the file count."""

    def __init__(self, used_bytes: int, files: int) -> None:
        super().__init__(f"the sender has {files} files of {used_bytes} bytes in all")
        self.used_bytes = used_bytes  # bytes of the sender's files not yet deleted
        self.files = files  # how many such files


class ChallengeUse(enum.Enum):
    """What :meth:`~pqcall.server.storage.login_store.LoginStore.use_challenge` found."""

    OK = "ok"
    """The challenge was valid and is now used."""
    UNKNOWN = "unknown"
    """No such challenge for this username."""
    USED = "used"
    """The challenge was used before."""
    EXPIRED = "expired"
    """The challenge has expired."""


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account."""

    id: int
    """Database id; stable, never reused."""
    username: str
    """Normalized name."""
    identity: bytes
    """Encoded hybrid identity public key."""
    created: float
    """Registration time."""
    last_seen: float | None
    """Last login or push connection; ``None``: never."""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """One device of an account's current device list (issue 22)."""

    account_id: int
    device_id: bytes
    """16 bytes: SHA-256 of the encoded device key, first 16 bytes."""
    name: str
    public_key: bytes
    """Encoded hybrid identity public key of the device."""
    added: float
    """When the server first saw it in the account's list."""


@dataclass(frozen=True, slots=True)
class DeviceListRecord:
    """What an account published about its devices (issue 22)."""

    signed: bytes | None
    """The encoded SignedDeviceList as received; ``None``: the account never sent one."""
    version: int
    """Its version; 0 before the first."""
    recovery_key: bytes | None
    """The recovery key's public half, if the list names one."""


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """An account's current key bundle."""

    bundle: bytes
    """Encoded, verified :class:`~pqcall.crypto.filekey.KeyBundle`."""
    bundle_created: int
    """The bundle's own ``created`` (unix seconds, set by its owner)."""
    received: float
    """When the server stored it."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call row, with its parties' names."""

    call_id: str
    caller_id: int
    callee_id: int
    caller: str
    """Caller's username."""
    callee: str
    """Callee's username."""
    state: State
    reason: str | None
    offer: bytes | None
    answer: bytes | None
    confirm: bytes | None
    caller_candidates: list[dict[str, Any]]
    callee_candidates: list[dict[str, Any]]
    caller_seen_address: str | None
    callee_seen_address: str | None
    created: float
    answered: float | None
    ended: float | None
    ended_by: str | None
    """``caller``, ``callee`` or ``system`` once the call is over."""


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One pending push event of an account."""

    seq: int
    """Increases across all accounts; the resume token."""
    account_id: int
    type: str
    payload: dict[str, Any]
    created: float


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One stored (or uploading) file, with its parties' names; never its contents."""

    file_id: str
    sender_id: int
    recipient_id: int
    sender: str
    """Sender's username."""
    recipient: str
    """Recipient's username."""
    size: int
    """Ciphertext bytes the complete file has."""
    blob_path: str
    """Where the ciphertext is, relative to the data directory."""
    state: str
    """``uploading`` or ``stored``."""
    created: float
    expires: float
    """When the file is deleted if nobody deletes it before."""
