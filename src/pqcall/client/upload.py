"""Sending a file: encrypt it to the recipient, upload it, resume an upload that broke off.

The sending half of :class:`~pqcall.client.files.FileTransfers`::

    sender                                  server
      check NAME's identity against the pin
      encrypt PATH -> outgoing/<key>.pqf
      POST /files {recipient, size}    ->   201 {file_id}
      PUT /files/<id>/content?offset=N ->   stored (the recipient gets file.waiting)

Resuming. An upload's state (recipient, source path, size and mtime, file id)
is kept in ``outgoing/<key>.json`` next to its ciphertext, ``<key>`` naming
the pair (recipient, absolute path): sending the same path to the same user
again asks the server how many bytes it holds and continues from there. A
source that changed since is encrypted again and the stale upload cancelled.
One run tries :data:`UPLOAD_ATTEMPTS` times before giving up (run it again to
resume). Memory use is constant: the ciphertext is read in pieces of at most
:data:`UPLOAD_BLOCK_BYTES`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import mimetypes
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pqcall.client.api import ServerApi
from pqcall.client.contacts import Contacts
from pqcall.client.file_names import CIPHERTEXT_SUFFIX, is_file_id
from pqcall.client.file_stream import CountingReader, Progress, no_progress, open_private
from pqcall.client.home import Home
from pqcall.client.peers import CheckedPeer, check_peer
from pqcall.client.privatefile import make_private_dir, read_bounded, write_atomic
from pqcall.crypto.filecrypt import DEFAULT_CONTENT_TYPE, encrypt_stream
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import ApiError, KeystoreError, ServerUnreachable, TransferError
from pqcall.safefile import remove_quietly
from pqcall.signaling import usernames

logger = logging.getLogger(__name__)

OUTGOING_NAME = "outgoing"  # the home's folder of pending uploads
STATE_SUFFIX = ".json"
STATE_FORMAT = "pqcall upload"
STATE_VERSION = 1
MAX_STATE_BYTES = 64 * 1024

UPLOAD_BLOCK_BYTES = 256 * 1024  # ciphertext bytes read per piece of an upload
UPLOAD_ATTEMPTS = 4  # tries of one upload run before giving up (rerun to resume)
RETRY_DELAYS_S = (0.5, 1.0, 2.0)  # pause before the 2nd, 3rd, 4th try
RETRYABLE_STATUSES = frozenset({401, 404, 409})  # refused token, upload gone, wrong offset


@dataclass(frozen=True, slots=True)
class SentFile:
    """A file that reached the server completely."""

    file_id: str
    """The server's id of the transfer (what the recipient passes to ``receive``)."""
    recipient: str
    """Who can decrypt it."""
    name: str
    """The file name sent, inside the encryption."""
    size: int
    """Plaintext bytes."""
    ciphertext_size: int
    """Bytes stored on the server (padded: it hides the exact size)."""
    resumed_from: int
    """Ciphertext bytes the server already held when this run started uploading."""
    seconds: float
    """Wall time of this run, encryption included."""

    def to_json(self) -> dict[str, Any]:
        """The object ``pqcall send-file --json`` prints."""
        return {
            "file_id": self.file_id,
            "recipient": self.recipient,
            "name": self.name,
            "size": self.size,
            "ciphertext_size": self.ciphertext_size,
            "resumed_from": self.resumed_from,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.size / 1e6 / self.seconds, 3) if self.seconds > 0 else None,
        }


@dataclass(frozen=True, slots=True)
class _Upload:
    """The state of one pending upload, kept in ``outgoing/<key>.json``."""

    recipient: str
    path: str
    size: int
    mtime_ns: int
    name: str
    ciphertext_size: int
    file_id: str | None


class FileSender:
    """Sends files as the account in ``home``, keeping pending uploads under ``outgoing/``.

    Args:
        home: the account's home.
        api: the account's server connection.
        account: the unlocked keys (sign what we send).
        contacts: the pins every recipient is checked against.
        clock: unix time, for the timestamp inside sent files.
    """

    def __init__(
        self,
        home: Home,
        api: ServerApi,
        account: AccountSecrets,
        contacts: Contacts,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home  # the account's directory
        self._api = api  # the server
        self._account = account  # our private keys
        self._contacts = contacts  # pins
        self._clock = clock  # unix time

    @property
    def outgoing_dir(self) -> Path:
        """Ciphertexts and states of uploads not yet complete."""
        return self.home.path / OUTGOING_NAME

    async def send(
        self, name: str, path: str | os.PathLike[str], *, progress: Progress | None = None
    ) -> SentFile:
        """Encrypt ``path`` to ``name``, sign it, and upload it; resume a pending upload of it.

        Raises:
            KeyChangedError: ``name``'s identity is not the pinned one (nothing sent).
            UnknownUser: no such user.
            TransferError: ``path`` is not a readable file.
            ApiError: the server refused (413: too large or over quota).
            ServerUnreachable: the server cannot be reached (rerun to resume).
        """
        started = time.monotonic()
        report = progress or no_progress
        recipient = usernames.normalize(name)
        source = Path(path).absolute()
        info = _source_stat(source)
        peer = await check_peer(self._api, self._contacts, recipient)
        key = _upload_key(recipient, source)
        upload = self._load_upload(key)
        if upload is not None and not self._is_resumable(upload, key, info):
            await self._abandon(upload, key)
            upload = None
        if upload is None:
            upload = await self._encrypt(key, peer, source, info, report)
        upload, resumed_from = await self._upload(key, upload, report)
        self._forget(key)
        return SentFile(
            file_id=upload.file_id or "",
            recipient=recipient,
            name=upload.name,
            size=upload.size,
            ciphertext_size=upload.ciphertext_size,
            resumed_from=resumed_from,
            seconds=time.monotonic() - started,
        )

    def _is_resumable(self, upload: _Upload, key: str, info: os.stat_result) -> bool:
        ciphertext = self._ciphertext_path(key)
        try:
            length = ciphertext.stat().st_size
        except OSError:
            return False
        return (upload.size, upload.mtime_ns, upload.ciphertext_size) == (
            info.st_size,
            info.st_mtime_ns,
            length,
        )

    async def _encrypt(
        self,
        key: str,
        peer: CheckedPeer,
        source: Path,
        info: os.stat_result,
        report: Progress,
    ) -> _Upload:
        name = source.name
        content_type = mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE
        target = self._ciphertext_path(key)
        make_private_dir(self.home.path)
        make_private_dir(self.outgoing_dir)

        def work() -> int:
            with open(source, "rb") as src, open_private(target) as dst:
                reader = CountingReader(src, lambda done: report("encrypting", done, info.st_size))
                written = encrypt_stream(
                    reader,
                    dst,
                    self._account.identity,
                    peer.identity,
                    peer.bundle,
                    name=name,
                    created=int(self._clock()),
                    size=info.st_size,
                    content_type=content_type,
                )
                dst.flush()
                os.fsync(dst.fileno())
                return written

        try:
            written = await asyncio.to_thread(work)
        except OSError as exc:
            remove_quietly(target)
            raise TransferError(f"cannot encrypt {source}: {exc.strerror}") from None
        except BaseException:
            remove_quietly(target)
            raise
        upload = _Upload(
            recipient=peer.name,
            path=str(source),
            size=info.st_size,
            mtime_ns=info.st_mtime_ns,
            name=name,
            ciphertext_size=written,
            file_id=None,
        )
        self._save_upload(key, upload)
        return upload

    async def _upload(self, key: str, upload: _Upload, report: Progress) -> tuple[_Upload, int]:
        """Bring the upload to ``stored``; returns the state and where this run started."""
        total = upload.ciphertext_size
        resumed_from: int | None = None
        failures = 0
        while True:
            # where is the server?
            if upload.file_id is None:
                view = await self._api.create_file(upload.recipient, total)
                upload = replace(upload, file_id=view.file_id)
                self._save_upload(key, upload)
            else:
                try:
                    view = await self._api.file_status(upload.file_id)
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    logger.info("upload %s is gone from the server; starting again", upload.file_id)
                    upload = replace(upload, file_id=None)
                    self._save_upload(key, upload)
                    continue
                if view.size != total:
                    raise TransferError(
                        f"the server holds upload {view.file_id} as {view.size} bytes, not {total}"
                    )
            if resumed_from is None:
                resumed_from = view.received
                if view.received:
                    logger.info("resuming upload %s at byte %d", view.file_id, view.received)
            if view.state == "stored":
                report("uploading", total, total)
                return upload, resumed_from
            # send the rest
            offset = view.received
            try:
                view = await self._api.upload(
                    view.file_id,
                    offset,
                    self._pieces(key, offset, total, report),
                    total - offset,
                )
            except (ServerUnreachable, ApiError) as exc:
                if isinstance(exc, ApiError) and exc.status not in RETRYABLE_STATUSES:
                    raise
                failures += 1
                if failures >= UPLOAD_ATTEMPTS:
                    raise
                logger.info("upload interrupted (%s); asking the server where it is", exc)
                await asyncio.sleep(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1])
                continue
            if view.state == "stored":
                return upload, resumed_from

    async def _pieces(
        self, key: str, offset: int, total: int, report: Progress
    ) -> AsyncIterator[bytes]:
        with open(self._ciphertext_path(key), "rb") as file:
            file.seek(offset)
            done = offset
            while done < total:
                piece = file.read(min(UPLOAD_BLOCK_BYTES, total - done))
                if not piece:
                    raise TransferError("the pending ciphertext is shorter than recorded")
                done += len(piece)
                yield piece
                report("uploading", done, total)

    async def _abandon(self, upload: _Upload, key: str) -> None:
        """Drop a pending upload whose source changed, cancelling it on the server."""
        if upload.file_id is not None:
            try:
                await self._api.delete_file(upload.file_id)
            except ApiError as exc:
                logger.info("could not cancel stale upload %s: %s", upload.file_id, exc)
        self._forget(key)

    def _ciphertext_path(self, key: str) -> Path:
        return self.outgoing_dir / f"{key}{CIPHERTEXT_SUFFIX}"

    def _state_path(self, key: str) -> Path:
        return self.outgoing_dir / f"{key}{STATE_SUFFIX}"

    def _load_upload(self, key: str) -> _Upload | None:
        path = self._state_path(key)
        try:
            data = read_bounded(path, "upload state", MAX_STATE_BYTES)
        except KeystoreError:
            return None
        if data is None:
            return None
        try:
            value = json.loads(data)
            if value.get("format") != STATE_FORMAT or value.get("version") != STATE_VERSION:
                raise ValueError("not an upload state")
            upload = _Upload(**value["upload"])
        except (ValueError, TypeError, KeyError, AttributeError):
            logger.info("ignoring unreadable upload state %s", path)
            return None
        if upload.file_id is not None and not is_file_id(upload.file_id):
            return None
        return upload

    def _save_upload(self, key: str, upload: _Upload) -> None:
        document = {"format": STATE_FORMAT, "version": STATE_VERSION, "upload": asdict(upload)}
        write_atomic(self._state_path(key), json.dumps(document).encode("utf-8"), "upload state")

    def _forget(self, key: str) -> None:
        remove_quietly(self._state_path(key))
        remove_quietly(self._ciphertext_path(key))


def _source_stat(source: Path) -> os.stat_result:
    try:
        info = source.stat()
    except OSError as exc:
        raise TransferError(f"cannot read {source}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise TransferError(f"{source} is not a regular file")
    if not os.access(source, os.R_OK):
        raise TransferError(f"cannot read {source}: permission denied")
    return info


def _upload_key(recipient: str, source: Path) -> str:
    return hashlib.sha256(f"{recipient}\0{source}".encode()).hexdigest()[:32]
