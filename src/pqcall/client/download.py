"""Receiving files: the inbox, and download, verify, decrypt and save one file.

The receiving half of :class:`~pqcall.client.files.FileTransfers`::

    server                                       recipient
      GET /files                            ->   inbox, each sender's trust
      GET /files/<id>/content (Range: N-)   ->   incoming/<id>.pqf
                                                 check the sender's pin,
                                                 decrypt to OUT/.<id>.part,
                                                 finish(), rename
      DELETE /files/<id>                    <-

A download appends to ``incoming/<file id>.pqf`` and continues with a
``Range`` request after a break. Atomic receive: plaintext goes to a hidden
temporary file in the output folder and is renamed to the (sanitized) name
inside the encrypted file only after
:meth:`~pqcall.crypto.filecrypt.FileDecryptor.finish` verified the whole file
and the sender's signature; an existing file is never overwritten
(:func:`~pqcall.client.file_names.place_file`). A file that fails any check
leaves nothing under a final name, its local ciphertext is dropped (so a new
attempt downloads it again) and the server keeps its copy. Memory use is
constant: pieces of at most :data:`~pqcall.client.api.DOWNLOAD_CHUNK_BYTES`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqcall.client.api import ServerApi
from pqcall.client.contacts import Contacts
from pqcall.client.file_names import CIPHERTEXT_SUFFIX, is_file_id, place_file, sanitize_name
from pqcall.client.file_stream import CountingReader, Progress, no_progress, open_private
from pqcall.client.home import Home
from pqcall.client.peers import CheckedPeer, check_peer
from pqcall.client.privatefile import make_private_dir
from pqcall.crypto.filecrypt import decrypt_stream
from pqcall.crypto.fileformat import FileInfo
from pqcall.crypto.keystore import AccountSecrets
from pqcall.exceptions import ApiError, FileCryptoError, ServerUnreachable, TransferError
from pqcall.safefile import FILE_MODE, remove_quietly
from pqcall.signaling.messages import FileView

logger = logging.getLogger(__name__)

INCOMING_NAME = "incoming"  # the home's folder of downloads not yet complete


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
        """Ciphertexts being downloaded."""
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
        peer = await check_peer(self._api, self._contacts, view.sender)
        ciphertext = await self._download(view, report)
        folder = Path(out_dir) if out_dir is not None else self.home.received_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TransferError(f"cannot create {folder}: {exc.strerror}") from None
        try:
            saved, info = await asyncio.to_thread(
                self._decrypt, ciphertext, folder, view, peer, report
            )
        except FileCryptoError as exc:
            remove_quietly(ciphertext)  # a new attempt downloads it again
            raise FileCryptoError(
                f"refused file {file_id} from {view.sender}: {exc}; nothing was saved"
                " (the server keeps its copy)"
            ) from None
        deleted = True
        try:
            await self._api.delete_file(file_id)
        except (ApiError, ServerUnreachable) as exc:
            logger.warning("saved %s, but the server did not delete its copy: %s", saved, exc)
            deleted = False
        remove_quietly(ciphertext)
        return ReceivedFile(
            file_id=file_id,
            sender=view.sender,
            sender_verified=peer.is_verified,
            path=saved,
            name=info.name,
            size=info.size,
            content_type=info.content_type,
            created=info.created,
            deleted=deleted,
            seconds=time.monotonic() - started,
        )

    async def _download(self, view: FileView, report: Progress) -> Path:
        """The complete ciphertext of ``view`` in ``incoming/``, resuming a partial one."""
        make_private_dir(self.home.path)
        make_private_dir(self.incoming_dir)
        target = self.incoming_dir / f"{view.file_id}{CIPHERTEXT_SUFFIX}"
        try:
            have = target.stat().st_size
        except FileNotFoundError:
            have = 0
        if have > view.size:
            remove_quietly(target)
            have = 0
        if have < view.size:
            if have:
                logger.info("resuming download of %s at byte %d", view.file_id, have)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
            with os.fdopen(fd, "ab") as file:
                try:
                    async for piece in self._api.download(view.file_id, have):
                        if have + len(piece) > view.size:
                            raise TransferError(f"the server sent more than {view.size} bytes")
                        file.write(piece)
                        have += len(piece)
                        report("downloading", have, view.size)
                except ApiError as exc:
                    if exc.status != 416:  # 416: its copy ends where ours does
                        raise
                except ServerUnreachable as exc:
                    raise ServerUnreachable(
                        f"{exc}; {have} of {view.size} bytes are here, run receive again to resume"
                    ) from None
                file.flush()
                os.fsync(file.fileno())
        if have != view.size:
            # the server's answer ended cleanly (a broken connection raises), yet short:
            # its copy is damaged, and asking again would only get the same bytes
            remove_quietly(target)
            raise TransferError(
                f"the server's copy of file {view.file_id} from {view.sender} ends at byte"
                f" {have} of {view.size}: it is damaged or was tampered with; nothing was"
                f" saved (ask {view.sender} to send it again)"
            )
        report("downloading", view.size, view.size)
        return target

    def _decrypt(
        self, ciphertext: Path, folder: Path, view: FileView, peer: CheckedPeer, report: Progress
    ) -> tuple[Path, FileInfo]:
        temp = folder / f".{view.file_id}.{os.urandom(4).hex()}.part"
        try:
            with open(ciphertext, "rb") as src, open_private(temp, exclusive=True) as dst:
                reader = CountingReader(src, lambda done: report("decrypting", done, view.size))
                info = decrypt_stream(
                    reader,
                    dst,
                    self._account.identity.public_key(),
                    self._account.file_keys(),
                    expected_sender=peer.identity,
                )
                if info.sender != peer.identity:  # expected_sender already enforced it
                    raise FileCryptoError("file is not from the expected sender")
                dst.flush()
                os.fsync(dst.fileno())
            saved = place_file(temp, folder, sanitize_name(info.name))
        except OSError as exc:
            remove_quietly(temp)
            raise TransferError(f"cannot write into {folder}: {exc.strerror}") from None
        except BaseException:
            remove_quietly(temp)
            raise
        return saved, info
