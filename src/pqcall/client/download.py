"""Receiving files: the inbox, and download, decrypt, verify and save one file.

The receiving half of :class:`~pqcall.client.files.FileTransfers`::

    server                                       recipient
      GET /files                            ->   inbox, each sender's trust
      GET /files/<id>/content               ->   its headers: sender and size; the sender's
                                                 saved key (GET /users/<sender> only when
                                                 none); decrypt while downloading to
                                                 OUT/.<id>.part, finish(), rename
      DELETE /files/<id>                    <-
      (resuming: GET /files/<id> first, then the content with Range: bytes=N-)

Atomic receive: plaintext goes to a hidden file in the output folder and is
renamed to the (sanitized) name inside the encrypted file only after
:meth:`~pqcall.crypto.filecrypt.FileDecryptor.finish` verified the whole file
and the sender's signature; an existing file is never overwritten
(:func:`~pqcall.client.file_names.place_file`). A file that fails any check
leaves nothing under a final name, its partial file and state are dropped (so
a new attempt downloads it again) and the server keeps its copy. A download
that breaks off keeps its partial plaintext and a checkpoint, and continues
with a ``Range`` request (:mod:`pqcall.client.download_stream`). Memory use is
bounded: two batches of about :data:`DECRYPT_BATCH_BYTES`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pqcall.client.api import ServerApi
from pqcall.client.contacts import Contacts
from pqcall.client.download_stream import PartialDownload
from pqcall.client.file_names import CIPHERTEXT_SUFFIX, is_file_id
from pqcall.client.file_stream import Progress, no_progress
from pqcall.client.home import Home
from pqcall.client.peers import check_peer
from pqcall.client.privatefile import make_private_dir
from pqcall.crypto.fileformat import FileInfo
from pqcall.crypto.identity import IdentityPublicKey
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import ApiError, FileCryptoError, ServerUnreachable, TransferError
from pqcall.safefile import remove_quietly
from pqcall.signaling import usernames
from pqcall.signaling.messages import FILE_SENDER_HEADER, FILE_SIZE_HEADER, FileView

logger = logging.getLogger(__name__)

INCOMING_NAME = "incoming"  # the home's folder of downloads not yet complete
DECRYPT_BATCH_BYTES = 1024 * 1024  # ciphertext handed to the decrypting thread at once


@dataclass(frozen=True, slots=True)
class WaitingFile:
    """A complete file on the server for us, as far as can be known before decrypting."""

    view: FileView
    """What the server says: id, sender, ciphertext size, times."""
    sender_trust: str
    """``verified``, ``pinned``, ``new`` (never seen) or ``key changed`` (a warning)."""

    def to_json(self) -> dict[str, Any]:
        """One entry of ``pqcall inbox --json``."""
        return {
            "file_id": self.view.file_id,
            "sender": self.view.sender,
            "sender_trust": self.sender_trust,
            "ciphertext_size": self.view.size,
            "created": self.view.created,
            "expires": self.view.expires,
        }


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A file downloaded, verified, decrypted and saved."""

    file_id: str
    """The server's id of the transfer."""
    sender: str
    """Who signed it (their pinned identity)."""
    sender_verified: bool
    """Whether the user verified the sender's safety number."""
    path: Path
    """Where the plaintext was saved."""
    name: str
    """The name the sender gave (untrusted; :attr:`path` holds the sanitized one)."""
    size: int
    """Plaintext bytes."""
    content_type: str
    """The sender's media type (untrusted)."""
    created: int
    """The sender's timestamp, unix seconds (untrusted)."""
    deleted: bool
    """Whether the server confirmed it deleted its copy."""
    seconds: float
    """Wall time of this run."""

    def to_json(self) -> dict[str, Any]:
        """The object ``pqcall receive --json`` prints."""
        return {
            "file_id": self.file_id,
            "sender": self.sender,
            "sender_verified": self.sender_verified,
            "path": str(self.path),
            "name": self.name,
            "size": self.size,
            "content_type": self.content_type,
            "created": self.created,
            "deleted_on_server": self.deleted,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.size / 1e6 / self.seconds, 3) if self.seconds > 0 else None,
        }


class FileReceiver:
    """Lists and receives the files waiting for the account in ``home``.

    Args:
        home: the account's home (partial downloads live under ``incoming/``).
        api: the account's server connection.
        account: the unlocked keys (open what we receive).
        contacts: the pins every sender is checked against.
    """

    def __init__(
        self, home: Home, api: ServerApi, account: AccountSecrets, contacts: Contacts
    ) -> None:
        self.home = home  # the account's directory
        self._api = api  # the server
        self._account = account  # our private keys
        self._contacts = contacts  # pins

    @property
    def incoming_dir(self) -> Path:
        """States of downloads not yet complete."""
        return self.home.path / INCOMING_NAME

    async def inbox(self) -> list[WaitingFile]:
        """Complete files waiting for us, oldest first, with what we know of each sender."""
        waiting = []
        for view in await self._api.inbox():
            waiting.append(WaitingFile(view, self._trust(view.sender)))
        return waiting

    def _trust(self, sender: str) -> str:
        try:
            contact = self._contacts.get(sender)
        except ValueError:
            return "new"
        if contact is None:
            return "new"
        if contact.key_changed is not None:
            return "key changed"
        return "verified" if contact.verified else "pinned"

    async def receive(
        self,
        file_id: str,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        progress: Progress | None = None,
    ) -> ReceivedFile:
        """Download file ``file_id``, check it, save it in ``out_dir``, delete it on the server.

        A new download is one request before the ``DELETE``: the content's
        answer names the sender and the size (``X-Pqcall-Sender``,
        ``X-Pqcall-Size``); the file must be signed by the sender's saved key.
        A partial download to resume, an error answer or a server without
        those headers go through ``GET /files/{id}`` first, as before (its
        answer says what is wrong, and where to resume).

        Args:
            file_id: from the inbox or a ``file.waiting`` event.
            out_dir: where to save it (created if missing); the home's
                ``received/`` folder when None.
            progress: told how the download and decryption go.

        Raises:
            KeyChangedError: the sender's identity is not the one pinned.
            FileCryptoError: the file is tampered with, truncated, not signed by
                the sender, or not for us (nothing saved; the server keeps it).
            TransferError: not a file for us, still uploading, or the server's
                copy is shorter than the size it announced (nothing saved).
            ServerUnreachable: the download broke off (run it again to resume).
            ApiError: no such file (404).
        """
        started = time.monotonic()
        report = progress or no_progress
        if not is_file_id(file_id):
            raise TransferError(f"{file_id!r} is not a file id (32 hex digits, from pqcall inbox)")
        folder = Path(out_dir) if out_dir is not None else self.home.received_dir()
        target = _Target(file_id)
        try:
            if not await asyncio.to_thread(self._has_partial, file_id):
                await self._download(target, folder, report)
            if target.saved is None:  # not started: ask the file's status, resume if partial
                target = _Target(file_id)
                view = await self._status(file_id)
                target.sender, target.size = view.sender, view.size
                target.peer = await self._sender_of(view.sender)
                await self._download(target, folder, report)
        except FileCryptoError as exc:
            if target.peer is not None and target.peer.saved:
                # the server may show a changed key: say so (KeyChangedError)
                await check_peer(self._api, self._contacts, target.sender)
            raise FileCryptoError(
                f"refused file {file_id} from {target.sender}: {exc}; nothing was saved"
                " (the server keeps its copy)"
            ) from None
        assert target.saved is not None and target.peer is not None
        saved, info = target.saved
        deleted = True
        try:
            await self._api.delete_file(file_id)
        except (ApiError, ServerUnreachable) as exc:
            logger.warning("saved %s, but the server did not delete its copy: %s", saved, exc)
            deleted = False
        return ReceivedFile(
            file_id=file_id,
            sender=target.sender,
            sender_verified=target.peer.is_verified,
            path=saved,
            name=info.name,
            size=info.size,
            content_type=info.content_type,
            created=info.created,
            deleted=deleted,
            seconds=time.monotonic() - started,
        )

    def _has_partial(self, file_id: str) -> bool:
        return (self.incoming_dir / f"{file_id}.json").exists()

    async def _status(self, file_id: str) -> FileView:
        """``GET /files/{id}``: a stored file for us, or the reason it cannot be received."""
        try:
            view = await self._api.file_status(file_id)
        except ApiError as exc:
            if exc.status in (403, 404):
                raise TransferError(f"no file {file_id} waiting for you on the server") from None
            raise
        if view.recipient != self._api.username:
            raise TransferError(f"file {file_id} is for {view.recipient}, not for you")
        if view.state != "stored":
            raise TransferError(f"file {file_id} from {view.sender} is still being uploaded")
        return view

    async def _download(self, target: _Target, folder: Path, report: Progress) -> None:
        """Download, decrypt and verify the file into ``folder``; sets ``target.saved``.

        With ``target.peer`` known (from the status), a partial download is
        resumed; without, a new download starts and the answer's headers name
        the sender. An error answer before that leaves ``target.saved`` unset
        (the caller asks the status). Partial files are kept only when the
        download broke off.
        """
        opened = target.peer is not None

        async def open_download(headers: httpx.Headers) -> None:
            if target.peer is None:  # a new download: who sent it, how long it is
                sender = headers.get(FILE_SENDER_HEADER)
                length = headers.get(FILE_SIZE_HEADER)
                if sender is None or length is None or not length.isdigit():
                    raise _NoFileHeaders
                target.sender, target.size = usernames.normalize(sender), int(length)
                target.peer = await self._sender_of(target.sender)
            assert target.peer is not None
            target.download = await self._open_part(target.file_id, target.peer, folder)

        if opened:
            await open_download(httpx.Headers())  # resuming: open it before asking for the rest
        try:
            have = target.download.consumed if target.download is not None else 0
            if have > target.size and opened:
                raise TransferError(f"the server sent more than {target.size} bytes")
            if have:
                logger.info("resuming download of %s at byte %d", target.file_id, have)
            pieces = self._api.download(
                target.file_id, have, on_response=None if opened else open_download
            )
            try:
                await self._stream(target, pieces, report)
            except (ApiError, _NoFileHeaders):
                if target.download is None:  # nothing started: the status says why
                    return
                raise
            download = target.download
            assert download is not None
            have = download.consumed
            if have != target.size:
                # the server's answer ended cleanly (a broken connection raises), yet short:
                # its copy is damaged, and asking again would only get the same bytes
                raise TransferError(
                    f"the server's copy of file {target.file_id} from {target.sender} ends at"
                    f" byte {have} of {target.size}: it is damaged or was tampered with;"
                    f" nothing was saved (ask {target.sender} to send it again)"
                )
            saved, info = await asyncio.to_thread(download.finish, folder)
        except ServerUnreachable:
            if target.download is not None:
                await asyncio.to_thread(_keep, target.download)
            raise
        except OSError as exc:
            if target.download is not None:
                target.download.discard()
            raise TransferError(f"cannot write into {folder}: {exc.strerror}") from None
        except BaseException:
            if target.download is not None:
                target.download.discard()
            raise
        assert target.peer is not None
        if info.sender != target.peer.identity:  # expected_sender already enforced it
            raise FileCryptoError("file is not from the expected sender")
        report("downloading", target.size, target.size)
        target.saved = saved, info

    async def _open_part(self, file_id: str, peer: _Sender, folder: Path) -> PartialDownload:
        """The partial download into ``folder`` (resumed if recorded), ready to absorb."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransferError(f"cannot create {folder}: {exc.strerror}") from None
        make_private_dir(self.home.path)
        make_private_dir(self.incoming_dir)
        remove_quietly(self.incoming_dir / f"{file_id}{CIPHERTEXT_SUFFIX}")  # version 1's
        try:
            return await asyncio.to_thread(
                PartialDownload.open,
                folder / f".{file_id}.part",
                self.incoming_dir / f"{file_id}.json",
                self._account.identity.public_key(),
                list(self._account.file_keys()),
                peer.identity,
            )
        except OSError as exc:
            raise TransferError(f"cannot write into {folder}: {exc.strerror}") from None

    async def _sender_of(self, name: str) -> _Sender:
        """The sender's identity: the saved one, else the server's checked and saved now.

        A saved key needs no request: the file must be signed by it, so a
        server that swaps keys gets the file refused (and then
        :func:`check_peer` tells the user the key changed). A contact with a
        refused key change is checked again on the server, as before.
        """
        contact = await asyncio.to_thread(self._contacts.get, name)
        if contact is not None and contact.key_changed is None:
            return _Sender(contact.identity, contact.verified, saved=True)
        peer = await check_peer(self._api, self._contacts, name)
        return _Sender(peer.identity, peer.is_verified, saved=False)

    async def _stream(
        self, target: _Target, pieces: AsyncIterator[bytes], report: Progress
    ) -> None:
        """Feed ``pieces`` to ``target.download`` (opened by the first), decrypting in a thread."""
        batch: list[bytes] = []
        batched = 0
        pending: asyncio.Future[None] | None = None
        download: PartialDownload | None = target.download
        have = download.consumed if download is not None else 0
        try:
            try:
                async for piece in pieces:
                    if download is None:
                        download = target.download
                        assert download is not None
                    if have + len(piece) > target.size:
                        raise TransferError(f"the server sent more than {target.size} bytes")
                    batch.append(piece)
                    batched += len(piece)
                    have += len(piece)
                    if batched >= DECRYPT_BATCH_BYTES:
                        if pending is not None:
                            await pending
                        data, batch, batched = batch, [], 0
                        pending = asyncio.ensure_future(asyncio.to_thread(download.absorb, data))
                    report("downloading", have, target.size)
            except ApiError as exc:
                if exc.status != 416 or download is None:  # 416: its copy ends where ours does
                    raise
            except ServerUnreachable as exc:
                if download is None:
                    raise
                if pending is not None:
                    await pending
                    pending = None
                await asyncio.to_thread(download.absorb, batch)
                raise ServerUnreachable(
                    f"{exc}; {download.consumed} of {target.size} bytes are here, run receive"
                    " again to resume"
                ) from None
            if pending is not None:
                await pending
                pending = None
            if download is not None:
                await asyncio.to_thread(download.absorb, batch)
        finally:
            if pending is not None and not pending.done():
                await asyncio.wait([pending])
            if pending is not None and not pending.cancelled():
                pending.exception()  # retrieved: the first error is the one reported


class _NoFileHeaders(Exception):
    """The content's answer does not name the sender (an older server): ask the status."""


@dataclass
class _Target:
    """One receive as it goes: what is known of the file, the partial download, the result."""

    file_id: str
    sender: str = ""  # from the status or the content's answer
    size: int = 0  # ciphertext bytes
    peer: _Sender | None = None  # whose key it must be signed by
    download: PartialDownload | None = None  # open once the sender is known
    saved: tuple[Path, FileInfo] | None = None  # where it went, once verified


@dataclass(frozen=True, slots=True)
class _Sender:
    """Who a file must be signed by, and how far the user trusts them."""

    identity: IdentityPublicKey
    is_verified: bool
    saved: bool  # from the contacts file, not asked of the server in this run


def _keep(download: PartialDownload) -> None:
    """Record where a broken-off download stands and close it, for the next run."""
    try:
        download.record()
    finally:
        download.close()
